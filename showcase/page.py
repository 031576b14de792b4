"""The page: a title and a status badge over the five tabs (`build_demo`), and Gradio's queue made
quiet while idle (`quiet_queue`). `app.py` serves it with models loaded in its process; the
service's `serve --ui` mounts it over `showcase.remote.ServiceTranscriptions`."""
from __future__ import annotations

import logging

import gradio as gr

from .choices import Choices
from .tabs import benchmarks, checks as checks_tab, compare, live, system
from .transcriptions import Transcriptions
from .turns import Turns

INTRO = """# MAX-Whisper
OpenAI's Whisper re-implemented on [Modular's MAX Graph](https://docs.modular.com/max/), run side by side with
[openai-whisper](https://github.com/openai/whisper) (PyTorch) and
[faster-whisper](https://github.com/SYSTRAN/faster-whisper) (CTranslate2): the same weights, the same decoding
options, the same audio."""


def build_demo(transcriptions: Transcriptions, max_seconds: float = 600.0,
               checks: checks_tab.ComponentChecks | None = None, choices: Choices | None = None) -> gr.Blocks:
    """The page: a status line over the five tabs. Its tabs transcribe only through `transcriptions`;
    `checks` (default: checks that wait for no transcription, started by their button only, as in
    the service's app) should share the turns of local transcriptions, as `app.main`'s do; `choices`
    (default: this machine's) are the models, backends and devices offered."""
    checks = checks or checks_tab.ComponentChecks(Turns(), start_after_warm_up=False)
    choices = choices or Choices.here()

    def busy() -> bool:
        return transcriptions.busy() or checks.running()

    with gr.Blocks(title="MAX-Whisper") as demo:
        gr.Markdown(INTRO)
        status_line = gr.Markdown(transcriptions.status(), elem_id="status")
        timer = gr.Timer(2.0)
        compare_tab = compare.build(transcriptions, choices, max_seconds)
        live.build(transcriptions, choices, max_seconds)
        checks_ui = checks_tab.build(checks, choices, compare_tab.model, compare_tab.device)
        views = [system.build(transcriptions), benchmarks.build(), checks_ui.view]  # filled as the page opens

        def tick():
            return transcriptions.status(), *checks_ui.view.values(), gr.Timer(active=busy())

        for button in (compare_tab.run, checks_ui.again):  # the status line follows loads, runs and checks
            button.click(lambda: gr.Timer(active=True), outputs=timer, concurrency_limit=None, show_progress="hidden")
        timer.tick(tick, outputs=[status_line, *checks_ui.view.outputs, timer], concurrency_limit=None,
                   show_progress="hidden")
        demo.load(lambda: (transcriptions.status(), *(value for view in views for value in view.values())),
                  outputs=[status_line, *(output for view in views for output in view.outputs)],
                  concurrency_limit=None)
    return demo


def quiet_queue(demo: gr.Blocks) -> None:
    """Gradio's queue polls every 1 ms while free: ~1,000 wake-ups a second in an idle app. 50 ms
    (its own setting on Windows) costs a request at most that much delay. Gradio's private settings:
    where this Gradio lacks them, a warning, and the queue keeps its own."""
    queue = getattr(demo, "_queue", None)
    if not all(hasattr(queue, name) for name in ("sleep_when_free", "progress_update_sleep_when_free")):
        logging.getLogger(__name__).warning("this Gradio's queue has no sleep_when_free: it polls at its own rate")
        return
    queue.sleep_when_free = 0.05
    queue.progress_update_sleep_when_free = 0.1
