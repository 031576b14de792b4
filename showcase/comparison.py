"""One request of the Compare tab, without Gradio (`run_comparison`): the same audio through each
chosen implementation, taken in turns, one failing without hiding the others. A short clip is run
in MAX_ROUNDS rounds and each implementation's best time counts, so that a burst of other work on
the machine does not decide the verdict; each run also records how much of the CPU other work took
meanwhile (`cpu_load`), which the verdict reports. `watch` runs a comparison in a thread and
yields what it shows as it goes: each implementation waiting, running (what it does, how far) or done.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from maxwhisper.api import DecodeOptions, MaxWhisperError, TranscriptionResult
from maxwhisper.audio import SAMPLE_RATE
from maxwhisper.formats import format_timestamp, to_srt, to_txt, to_vtt
from maxwhisper.registry import BACKENDS
from maxwhisper.scoring import word_diff

from .audio_checks import cannot_use, check_audio
from .formatting import error_message, label
from .language_check import CHECK_S, HeardLanguages, needs_check, other_language, spoken_language
from .models import backend_precision
from .transcriptions import Cancelled, Transcription, Transcriptions

log = logging.getLogger(__name__)

REFERENCE_BACKEND = "openai"  # the implementation the others are compared with
SHORT_CLIP_S = 30.0  # a clip of one window at most is timed in MAX_ROUNDS rounds, a longer one in one
MAX_ROUNDS = 3
ROUND_LIMIT_S = 10.0  # a first round that took longer (base, beam search, a slow machine) is not repeated
DIFF_CONTEXT = 4  # words of context on each side of a difference


def _segment_line(s) -> str:
    """[start --> end] text, then each word with its time and probability when there are word timestamps."""
    line = f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}] {s.text.strip()}"
    if s.words:
        line += "\n" + " ".join(f"{w.word.strip()}@{w.start:.2f}s({w.probability:.2f})" for w in s.words)
    return line


def comparison_html(title: str, reference: str, hypothesis: str, same_tokens: bool | None = None) -> str:
    """One line: the WER of `hypothesis` against `reference`, then only the words that differ, with a
    few words of context, or that they are the same."""
    wer, diff = word_diff(reference, hypothesis, context=DIFF_CONTEXT)
    score = "WER n/a (the reference has no words)" if wer is None else f"WER {100 * wer:.1f} %"
    if same_tokens:
        return f"<p><b>{title}</b>: identical tokens.</p>"
    if same_tokens is not None:
        score += ", different tokens"
    if wer == 0:
        return f"<p><b>{title}</b>: {score}, identical words.</p>"
    return f"<p><b>{title}</b>: {score}<br><span class='diff'>{diff}</span></p>"


def english_only_problem(model: str, options: DecodeOptions) -> str:
    """Why an English-only model (`*.en`) cannot run `options`, or "": MAX refuses translation and
    other languages, where the other implementations would quietly transcribe English."""
    if not model.endswith(".en"):
        return ""
    if options.task == "translate":
        return f"{model} is English-only: it transcribes English and cannot translate. Choose base to translate."
    if options.language not in (None, "en"):
        return f"{model} is English-only: it cannot transcribe {options.language!r}. Choose base, or language auto."
    return ""


# --- one request: the same audio through each chosen implementation ---------------------------


@dataclass
class Panel:
    """One implementation in the comparison: its state, its runs, and what its column shows."""

    backend: str
    precision: str = "fp32"
    state: str = "waiting"  # waiting, running, done, failed
    doing: str = ""  # while running: what it does now ("transcribing, window 2 of ~7 (…)")
    fraction: float = 0.0  # of the run under way
    runs: list[Transcription] = field(default_factory=list)  # its timed transcriptions of the audio
    error: str | None = None
    text: str = ""  # the transcript
    segments: str = ""  # one "[start --> end] text" line per segment
    diff_html: str = ""  # against the reference implementation and the visitor's reference text
    files: list[str] = field(default_factory=list)  # TXT, SRT, VTT downloads

    @property
    def result(self) -> TranscriptionResult | None:
        """The first run's (every run decodes the same tokens)."""
        return self.runs[0].result if self.runs else None

    @property
    def best(self) -> Transcription | None:
        """The fastest run: the one least slowed by other work."""
        return min(self.runs, key=lambda r: r.seconds) if self.runs else None

    @property
    def cheapest(self) -> Transcription | None:
        """The run that took the fewest CPU seconds; None where a run's were not measured."""
        if not self.runs or any(r.cpu_s is None for r in self.runs):
            return None
        return min(self.runs, key=lambda r: r.cpu_s)


@dataclass
class Comparison:
    message: str  # the request's problem ("⚠ …"), or "" while it runs
    suggestion: str = ""  # with a message: the model that can run this audio (the language check's)
    checking: str = ""  # before the panels run: what is checked first ("Checking the spoken language…")
    panels: dict[str, Panel] = field(default_factory=dict)  # backend -> panel, in the registry's order
    audio_s: float = 0.0
    model: str = ""
    device: str = ""
    rounds: int = 1  # the rounds planned (known once the first is done)
    round: int = 0  # the round under way
    finished: bool = False

    @property
    def results(self) -> dict[str, TranscriptionResult]:
        return {b: p.result for b, p in self.panels.items() if p.result is not None}


UNHEARD_TAIL_S = 10.0  # audio after every transcript's last words that the status line points out


def unheard_tail(comparison: Comparison) -> str:
    """Where every transcript ends UNHEARD_TAIL_S or more before the audio does, what was left
    unheard and why it may be, else "": a clip whose second half is in another language than an
    English-only model's loses it without a word from any implementation."""
    ends = [s.end for r in comparison.results.values() for s in r.segments if s.text.strip()]
    if not ends or comparison.audio_s - max(ends) < UNHEARD_TAIL_S:
        return ""
    last = round(max(ends))
    gap = comparison.audio_s - last
    text = (
        f" Nothing was transcribed after {last // 60}:{last % 60:02d} (the last {gap:.0f} s):"
        " silence, music or speech the model did not recognise."
    )
    if comparison.model.endswith(".en"):
        text += f" {comparison.model} hears English only: for speech in another language, choose base."
    return text


def rounds_for(audio_s: float, first_round_s: float) -> int:
    """The rounds of a comparison of `audio_s` seconds of audio whose first round took `first_round_s`
    seconds of transcribing: several for a short clip, whose runs take a second or so and a burst of
    other work could decide; one for a long clip, whose run outlasts such a burst, or where the first
    round was long (the verdict says when other work held the CPU)."""
    return MAX_ROUNDS if audio_s <= SHORT_CLIP_S and first_round_s <= ROUND_LIMIT_S else 1


def run_comparison(
    audio,
    backends: list[str],
    model: str,
    device: str,
    options: DecodeOptions,
    transcriptions: Transcriptions,
    *,
    precision: str = "fp32",
    max_seconds: float | None = None,
    reference_text: str = "",
    out_dir: str | Path | None = None,
    detector: tuple[str, str] | None = None,
    heard: HeardLanguages | None = None,
    on_change: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Transcribe `audio` (a path, bytes or `(rate, samples)`) with each backend in `backends`,
    through `transcriptions` (shared by all visitors: there each transcription waits for its turn),
    each in `precision` where it has it on `device` (`backend_precision`); in rounds, each
    implementation once per round, the implementations already loaded first in the first, so that
    they answer while another still loads or compiles (`rounds_for`: several rounds for a short clip).
    With `detector` (backend, multilingual model), an English-only model given another language is
    refused first (`language_check`), the message suggesting the detector's model; `heard` keeps what
    the detector heard, so that a clip checked once is not checked again.

    `on_change` receives a snapshot of the comparison whenever a panel changes (a run starts, reports
    progress, ends); it may raise `Cancelled` (the visitor left), which stops the comparison.
    Never raises otherwise: an input problem is the returned message, a backend's failure is its
    panel's error while the other panels show their results.
    """
    notify = on_change or (lambda comparison: None)
    backends = [b for b in BACKENDS if b in backends]
    if not backends:
        return Comparison("⚠ Choose at least one implementation to run.")
    problem = english_only_problem(model, options)
    if problem:
        return Comparison(f"⚠ {problem}")
    try:
        samples = check_audio(audio, max_seconds)
    except MaxWhisperError as e:
        return Comparison(cannot_use(e))

    reference_text = reference_text or ""  # (a textbox not yet shown gives None)
    stem = Path(audio).stem if isinstance(audio, (str, os.PathLike)) else "audio"
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="maxwhisper-"))
    panels = {b: Panel(b, backend_precision(b, device, precision)) for b in backends}
    comparison = Comparison("", panels=panels, audio_s=len(samples) / SAMPLE_RATE, model=model, device=device)
    if detector and needs_check(model, options):
        refused = _other_language(comparison, samples, detector, transcriptions, notify, heard)
        if refused:
            return Comparison(refused, suggestion=detector[1])
    order = sorted(backends, key=lambda b: not transcriptions.loaded(b, model, device, panels[b].precision))
    while comparison.round < comparison.rounds:
        comparison.round += 1
        for backend in order:
            panel = panels[backend]
            if panel.error is not None:
                continue
            _run_once(panel, samples, model, device, options, transcriptions, lambda: notify(_snapshot(comparison)))
            if panel.runs and len(panel.runs) == 1 or panel.error is not None:
                _fill_panels(comparison, reference_text, out_dir, stem)
            notify(_snapshot(comparison))
        if comparison.round == 1:  # each first run's wall-clock or CPU seconds, whichever other programs inflated less
            first = sum(min(p.runs[0].seconds, p.runs[0].cpu_s or p.runs[0].seconds) for p in panels.values() if p.runs)
            comparison.rounds = rounds_for(comparison.audio_s, first)
    comparison.finished = True
    return comparison


def _other_language(
    comparison: Comparison,
    samples,
    detector: tuple[str, str],
    transcriptions: Transcriptions,
    notify: Callable[[Comparison], None],
    heard: HeardLanguages | None,
) -> str:
    """The refusal where the detector hears another language than English (`language_check`), else
    "", also where the check fails (the run goes on, as it would without a multilingual model). A
    clip in `heard` is not heard again."""
    key = HeardLanguages.key(samples, detector, comparison.device) if heard is not None else None
    known = heard.get(key) if heard is not None else None
    if known is not None:
        return other_language(comparison.model, known)

    def say(fraction: float, what: str) -> None:
        # the detector's own transcription is not the clip's: its progress reads as listening
        listening = what.startswith(("transcribing", "transcribed"))
        doing = f"listening to the first {CHECK_S:.0f} s" if listening else what
        comparison.checking = f"Checking the spoken language with {detector[1]} first: {doing}"
        notify(_snapshot(comparison))

    say(0.0, "starting")
    try:
        language = spoken_language(samples, detector, comparison.device, transcriptions, say)
    except Cancelled:
        raise
    except Exception:  # noqa: BLE001 - without the check the run goes on, as where base is not installed
        log.exception("the language check failed")
        return ""
    finally:
        comparison.checking = ""
    if heard is not None:
        heard.add(key, language)
    return other_language(comparison.model, language)


def _run_once(
    panel: Panel,
    samples,
    model: str,
    device: str,
    options: DecodeOptions,
    transcriptions: Transcriptions,
    changed: Callable[[], None],
) -> None:
    """One timed run of the panel's implementation, its state and progress kept in the panel."""

    def say(fraction: float, what: str) -> None:
        panel.fraction, panel.doing = fraction, what
        changed()

    panel.state, panel.fraction, panel.doing = "running", 0.0, "starting"
    changed()
    try:
        done: Transcription = transcriptions.transcribe(
            samples, panel.backend, model, device, options, precision=panel.precision, progress=say
        )
        panel.runs.append(done)
        panel.state = "done"
    except Cancelled:
        raise
    except Exception as e:  # noqa: BLE001 - one implementation failing must not hide the others
        if not isinstance(e, MaxWhisperError):
            log.exception("%s failed", panel.backend)
        panel.error, panel.state = error_message(e), "failed"
    panel.doing, panel.fraction = "", 0.0


def _snapshot(comparison: Comparison) -> Comparison:
    """A copy that the run thread's later changes do not reach."""
    panels = {b: dataclasses.replace(p, runs=list(p.runs), files=list(p.files)) for b, p in comparison.panels.items()}
    return dataclasses.replace(comparison, panels=panels)


def _fill_panels(comparison: Comparison, reference_text: str, out_dir: Path, stem: str) -> None:
    """Each panel with a result: its transcript, segments, files and comparisons, against the
    reference implementation where it has run, else the first that has."""
    results = comparison.results
    reference = REFERENCE_BACKEND if REFERENCE_BACKEND in results else next(iter(results), None)
    for panel in comparison.panels.values():
        if panel.result is not None:
            _fill_panel(panel, results.get(reference), reference, reference_text, out_dir, stem)


def _fill_panel(
    panel: Panel,
    ref: TranscriptionResult | None,
    ref_backend: str | None,
    reference_text: str,
    out_dir: Path,
    stem: str,
) -> None:
    r = panel.result
    panel.text = r.text.strip() or "(no speech detected)"
    panel.segments = "\n".join(_segment_line(s) for s in r.segments)
    parts = []
    if panel.backend == ref_backend:
        parts.append(f"<p><b>Reference implementation</b>: the others are compared with {label(ref_backend)}.</p>")
    elif ref is not None:
        parts.append(comparison_html(f"vs {label(ref_backend)}", ref.text, r.text, r.tokens == ref.tokens))
    if reference_text.strip():
        parts.append(comparison_html("vs your reference text", reference_text, r.text))
    if r.close_calls:
        items = "".join(f"<li>{html.escape(str(call))}</li>" for call in r.close_calls)
        parts.append(
            f"<p><b>Threshold decisions too close to call</b> (another implementation may decide "
            f"them the other way):</p><ul>{items}</ul>"
        )
    panel.diff_html = "".join(parts)
    if not panel.files:
        for ext, writer in (("txt", to_txt), ("srt", to_srt), ("vtt", to_vtt)):
            path = out_dir / f"{stem}.{panel.backend}.{ext}"
            path.write_text(writer(r), encoding="utf-8")
            panel.files.append(str(path))


def watch(
    run: Callable[[Callable[[Comparison], None]], Comparison], poll_s: float = 0.5
) -> Iterator[tuple[Comparison | None, float]]:
    """Call `run(on_change)` in a thread; yield (the latest comparison or None before the first,
    seconds since the start) at each change, at most every `poll_s` s, and every `poll_s` s in
    between, until the final comparison (whose `finished` is set, or which has a message). Closing
    the generator (the visitor left) makes the run's next report raise Cancelled, so that it leaves
    its place in the turns and stops."""
    changes: queue.Queue = queue.Queue()
    left = threading.Event()

    def report(comparison: Comparison) -> None:
        if left.is_set():
            raise Cancelled
        changes.put(("change", comparison))

    def target():
        result = None
        try:
            result = run(report)
        except Cancelled:
            log.info("a visitor left: their run stopped")
        except Exception as e:  # noqa: BLE001 - shown as the message
            log.exception("run failed")
            result = Comparison(f"⚠ The run failed: {error_message(e)}")
        finally:
            changes.put(("done", result))

    threading.Thread(target=target, name="maxwhisper-run", daemon=True).start()
    start, latest, shown = time.monotonic(), None, 0.0
    try:
        while True:
            try:
                kind, value = changes.get(timeout=poll_s)
            except queue.Empty:
                kind, value = "tick", None
            if kind == "done":
                yield value, time.monotonic() - start
                return
            latest = value if kind == "change" else latest
            if kind == "tick" or time.monotonic() - shown >= poll_s:  # a burst of progress: the latest of it
                shown = time.monotonic()
                yield latest, shown - start
    finally:
        left.set()
