"""The Component tests tab: each MAX component against openai-whisper's PyTorch module built from
the same weights (`maxwhisper.selfcheck`), run in the background on models of their own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from maxwhisper.registry import create_transcriber

from ..choices import Choices
from ..formatting import error_message
from ..models import ModelCache
from ..turns import Turns
from ..views import View

log = logging.getLogger(__name__)

REFERENCE_BACKEND = "openai"  # the PyTorch reference the MAX components are checked against

CHECK_HEADERS = ["component", "result", "max |MAX - reference|", "relative error", "MAX ms, one call", "detail"]
CHECK_WIDTHS = ["150px", "90px", "170px", "110px", "110px", "580px"]  # a 1366 px screen shows the detail whole


def run_component_checks(
    cache: ModelCache,
    model: str,
    device: str,
    components: tuple[str, ...] | None = None,
    before_each: Callable[[], None] = lambda: None,
) -> Iterator[tuple[list[list], str]]:
    """Yield (table rows so far, status Markdown) as each of selfcheck's checks finishes.

    Uses the cache's MAX transcriber and openai-whisper on the CPU as the reference.
    `components`: a subset of selfcheck.COMPONENTS (default: all). `before_each` is called before each check.
    """
    from maxwhisper.selfcheck import COMPONENTS, run_checks

    components = components or COMPONENTS

    rows: list[list] = []
    yield [], f"Loading {model}: MAX on {device}, the PyTorch reference on cpu…"
    start = time.perf_counter()
    try:
        mx = cache.get("max", model, device)
        ref = cache.get(REFERENCE_BACKEND, model, "cpu")
        yield [], f"Running {len(components)} checks (each component graph compiles on first use)…"
        checks = run_checks(mx, ref, components=components)
        while True:
            before_each()
            check = next(checks, None)
            if check is None:
                break
            error = (
                f"{int(check.max_abs_err)} tokens differ" if check.name == "transcript" else f"{check.max_abs_err:.2e}"
            )
            rows.append(
                [
                    check.name,
                    "✓ pass" if check.passed else "✗ FAIL",
                    error,
                    f"{check.rel_err:.2e}",
                    round(1000 * check.seconds, 2),
                    check.detail,
                ]
            )
            yield list(rows), f"{len(rows)}/{len(components)} checks done…"
    except Exception as e:  # noqa: BLE001 - shown in the tab
        log.exception("component checks failed")
        yield rows, f"⚠ The checks stopped: {error_message(e)}"
        return
    passed = sum(r[1] == "✓ pass" for r in rows)
    yield (
        rows,
        (
            f"**{passed}/{len(rows)} passed** ({model}, MAX on {device} against openai-whisper on cpu, "
            f"same weights, float32) in {time.perf_counter() - start:.1f} s. MAX's times are one call each, "
            "on these checks' own models: not the Compare tab's best of 3."
        ),
    )


class ComponentChecks:
    """The Component tests tab's table, computed in the background on transcribers of its own (so that
    no transcription waits for it), pausing before each check while transcriptions run; started when
    a visitor first opens the tab (not at start-up, where a first visitor's race would share the CPU
    with them) or presses its button. The last table is kept and shown to every visitor at once."""

    def __init__(self, turns: Turns, create: Callable = create_transcriber):
        self._cache = ModelCache(create)
        self._turns = turns
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.rows: list[list] = []
        self.message = "The checks start when this tab is first opened."

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_once(self, model: str, device: str, components: tuple[str, ...] | None = None) -> None:
        """`start`, unless the checks ran or run already (a visitor opened the tab)."""
        if self._thread is None:
            self.start(model, device, components)

    def start(self, model: str, device: str, components: tuple[str, ...] | None = None) -> threading.Thread | None:
        """Start the checks of `model` on `device` in a thread, and return it; None when checks already run."""
        with self._starting:
            if self.running():
                log.info("component checks already running: %s on %s not started", model, device)
                return None
            self._thread = threading.Thread(
                target=self._run, args=(model, device, components), name="maxwhisper-checks", daemon=True
            )
            self.message = f"The checks of {model} start once no comparison runs or waits…"  # until their turn
            self._thread.start()
            return self._thread

    def _run(self, model: str, device: str, components: tuple[str, ...] | None) -> None:
        self._turns.claim_background("the component checks")
        try:
            for self.rows, self.message in run_component_checks(
                self._cache, model, device, components, self._between_checks
            ):
                pass
        finally:
            self._turns.release_background()

    def _between_checks(self) -> None:
        """Out of the way while transcriptions run or wait."""
        self._turns.release_background()
        self._turns.claim_background("the component checks")


@dataclass(frozen=True)
class ChecksTab:
    tab: gr.Tab  # its first opening starts the checks
    again: gr.Button  # starts the checks again
    view: View  # the table and its message, which the page refreshes while the checks run


def build(checks: ComponentChecks, choices: Choices, model: gr.Dropdown, device: gr.Radio) -> ChecksTab:
    """The tab and its handlers, inside the page's gr.Blocks; its button checks the `model` and
    `device` chosen on the Transcribe & compare tab."""
    with gr.Tab("Component tests") as tab:
        gr.Markdown(
            "Each part of MAX's network, checked against openai-whisper's PyTorch module built from the "
            "same weights: the same inputs must give the same numbers, to float32 rounding."
        )
        checks_message = gr.Markdown(checks.message, elem_id="checks-message")
        checks_table = gr.Dataframe(
            checks.rows or None,
            headers=CHECK_HEADERS,
            column_widths=CHECK_WIDTHS,
            interactive=False,
            wrap=True,
            elem_id="checks-table",
        )
        checks_again = gr.Button("Run the checks again")
        with gr.Accordion("About the checks", open=False):
            gr.Markdown(
                "The checks run in the background on models of their own (`maxwhisper.selfcheck`), started "
                "when a visitor first opens this tab; before each one they wait while a comparison runs or "
                "waits, and a comparison that ran beside them says so. The button runs them again with the "
                "model and device chosen in the Compare tab's options. The *transcript* row compares whole "
                "transcripts token by token."
            )

    def check_again(model, device):
        if checks.start(model, choices.device(device)) is None:
            gr.Info("The checks are running already: this click started nothing. Click again once they finish.")

    checks_again.click(check_again, [model, device], concurrency_limit=None, show_progress="hidden")
    tab.select(
        lambda model, device: checks.start_once(model, choices.device(device)),
        [model, device],
        concurrency_limit=None,
        show_progress="hidden",
    )
    return ChecksTab(
        tab, checks_again, View([checks_table, checks_message], lambda: (checks.rows or None, checks.message))
    )
