"""One request of the Transcribe & compare tab, without Gradio: the same audio through each chosen
implementation, one failing without hiding the others; transcripts, word diffs, WER, charts, files
and a headline (`run_comparison`); `watch` runs it in a thread and reports its progress as it goes.
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

import plotly.graph_objects as go

from maxwhisper.api import DecodeOptions, MaxWhisperError, TranscriptionResult
from maxwhisper.audio import SAMPLE_RATE
from maxwhisper.formats import format_timestamp, to_srt, to_txt, to_vtt
from maxwhisper.registry import BACKENDS
from maxwhisper.scoring import word_diff

from .audio_checks import check_audio
from .charts import rtfx_figure, timing_figure
from .formatting import error_message, label, load_text
from .headlines import run_headline
from .transcriptions import Cancelled, Transcriptions

log = logging.getLogger(__name__)

REFERENCE_BACKEND = "openai"  # the implementation the others are compared with

Progress = Callable[..., None]  # progress(fraction, description), as gr.Progress


def _segment_line(s) -> str:
    """[start --> end] text, then each word with its time and probability when there are word timestamps."""
    line = f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}] {s.text.strip()}"
    if s.words:
        line += "\n" + " ".join(f"{w.word.strip()}@{w.start:.2f}s({w.probability:.2f})" for w in s.words)
    return line


def comparison_html(title: str, reference: str, hypothesis: str, same_tokens: bool | None = None) -> str:
    wer, diff = word_diff(reference, hypothesis)
    score = "WER n/a (the reference has no words)" if wer is None else f"WER {100 * wer:.1f} %"
    if same_tokens is not None:
        score += ", identical tokens" if same_tokens else ", different tokens"
    if wer == 0:
        return f"<p><b>{title}</b>: {score}, same words.</p>"
    return f"<p><b>{title}</b>: {score}<br><span style='line-height:1.6'>{diff}</span></p>"


# --- one request: the same audio through each chosen implementation ---------------------------

@dataclass
class Panel:
    """What one implementation's column shows."""

    backend: str
    result: TranscriptionResult | None = None
    error: str | None = None
    summary: str = ""  # Markdown: time, times real time (RTFx), stages, device
    text: str = ""  # the transcript
    segments: str = ""  # one "[start --> end] text" line per segment
    diff_html: str = ""  # against the reference implementation and the user's reference text
    files: list[str] = field(default_factory=list)  # TXT, SRT, VTT downloads
    shared_cpu: str = ""  # background work that ran during the transcription, slowing it


@dataclass
class Comparison:
    message: str  # Markdown status: the input error, or what was run
    panels: dict[str, Panel] = field(default_factory=dict)  # backend -> panel, in the registry's order
    timing_figure: go.Figure | None = None
    rtfx_figure: go.Figure | None = None
    headline: str = ""  # Markdown: how MAX compared on this audio


def backend_precision(backend: str, device: str, precision: str) -> str:
    """`precision` where `backend` has it on `device`, else fp32 (openai-whisper has no int8)."""
    return precision if precision in BACKENDS[backend].precisions.get(device, ()) else "fp32"


def run_comparison(audio, backends: list[str], model: str, device: str, options: DecodeOptions,
                   transcriptions: Transcriptions, *, precision: str = "fp32", max_seconds: float | None = None,
                   reference_text: str = "",
                   progress: Progress | None = None, out_dir: str | Path | None = None,
                   on_partial: Callable[[Comparison], None] | None = None) -> Comparison:
    """Transcribe `audio` (a path, bytes or `(rate, samples)`) with each backend in `backends`,
    through `transcriptions` (shared by all visitors: there each transcription waits for its turn),
    each in `precision` where it has it on `device` (`backend_precision`).

    Implementations already loaded run first, so they answer while another still loads or
    compiles.
    `on_partial` receives the comparison so far after each implementation but the last.
    Never raises for bad input or a failing backend: an input problem is the returned message, a
    backend's failure is its panel's error while the other panels show their results.
    """
    progress = progress or (lambda fraction, desc=None: None)
    backends = [b for b in BACKENDS if b in backends]
    if not backends:
        return Comparison("⚠ Choose at least one implementation to run.")
    try:
        samples = check_audio(audio, max_seconds)
    except MaxWhisperError as e:
        return Comparison(f"⚠ Cannot use this audio: {error_message(e)}")

    stem = Path(audio).stem if isinstance(audio, (str, os.PathLike)) else "audio"
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="maxwhisper-"))
    precisions = {b: backend_precision(b, device, precision) for b in backends}
    order = sorted(backends, key=lambda b: not transcriptions.loaded(b, model, device, precisions[b]))  # loaded first
    panels = {b: Panel(b, summary="*Waiting to run…*") for b in backends}
    for i, backend in enumerate(order):
        def say(fraction: float, what: str, i=i, backend=backend) -> None:
            progress((i + fraction) / len(order), f"{label(backend)}: {what}")
        try:
            done = transcriptions.transcribe(samples, backend, model, device, options, precision=precisions[backend],
                                             progress=say)
            panels[backend].result, panels[backend].shared_cpu = done.result, done.shared_cpu
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - one implementation failing must not hide the others
            if not isinstance(e, MaxWhisperError):
                log.exception("%s failed", backend)
            panels[backend].error = error_message(e)
        if on_partial is not None and i < len(order) - 1:
            on_partial(_assemble(panels, len(samples), model, device, reference_text, out_dir, stem))
    progress(1.0, "done")
    return _assemble(panels, len(samples), model, device, reference_text, out_dir, stem)


def _assemble(panels: dict[str, Panel], n_samples: int, model: str, device: str, reference_text: str,
              out_dir: Path, stem: str) -> Comparison:
    """The comparison of the panels so far: each filled against the reference, charts, headline, message."""
    results = {b: p.result for b, p in panels.items() if p.result is not None}
    reference = REFERENCE_BACKEND if REFERENCE_BACKEND in results else next(iter(results), None)
    for panel in panels.values():
        if panel.result is not None or panel.error is not None:
            _fill_panel(panel, results.get(reference), reference, reference_text, out_dir, stem)
    pending = [label(b) for b, p in panels.items() if p.result is None and p.error is None]
    message = f"{n_samples / SAMPLE_RATE:.1f} s of audio, model {model}, device {device}. " + (
        f"Done so far: {', '.join(label(b) for b in results) or 'none'}; still to run: {', '.join(pending)}."
        if pending else f"Finished: {', '.join(label(b) for b in results) or 'none'}.")
    failed = [label(b) for b, p in panels.items() if p.error]
    if failed:
        message += f" ⚠ Failed: {', '.join(failed)} (the error is in the panel)."
    if results and not any(r.text.strip() for r in results.values()):
        message += " No speech was found in this audio: there was nothing to transcribe."
    panels = {b: dataclasses.replace(p, files=list(p.files)) for b, p in panels.items()}  # a snapshot
    return Comparison(message, panels, timing_figure(results) if results else None,
                      rtfx_figure(results) if results else None,
                      "" if pending else run_headline(results, next((p.shared_cpu for p in panels.values()
                                                                      if p.shared_cpu), "")))


def watch(run: Callable[[Progress, Callable[[Comparison], None]], Comparison],
          poll_s: float = 1.0) -> Iterator[tuple[str, Comparison | None]]:
    """Call `run(progress, on_partial)` in a thread; yield (progress line, comparison or None) at each
    progress step and partial comparison, and every `poll_s` s in between, until the final
    comparison (with an empty line). Closing the generator (the visitor left) makes the run's next
    progress report raise Cancelled, so that it leaves its place in the turns and stops."""
    events: queue.Queue = queue.Queue()
    left = threading.Event()

    def report(kind: str, value) -> None:
        if left.is_set():
            raise Cancelled
        events.put((kind, value))

    def target():
        result = None
        try:
            result = run(lambda fraction, desc=None: report("progress", desc),
                         lambda comparison: report("partial", comparison))
        except Cancelled:
            log.info("a visitor left: their run stopped")
        except Exception as e:  # noqa: BLE001 - shown as the message
            log.exception("run failed")
            result = Comparison(f"⚠ The run failed: {error_message(e)}")
        finally:
            events.put(("done", result))

    threading.Thread(target=target, name="maxwhisper-run", daemon=True).start()
    start, desc = time.monotonic(), "starting…"
    try:
        while True:
            try:
                kind, value = events.get(timeout=poll_s)
            except queue.Empty:
                kind, value = "tick", None
            if kind == "done":
                yield "", value
                return
            if kind == "progress" and value:
                desc = value
            yield f"**Running, {time.monotonic() - start:.0f} s:** {desc}", value if kind == "partial" else None
    finally:
        left.set()


def _fill_panel(panel: Panel, ref: TranscriptionResult | None, ref_backend: str | None, reference_text: str,
                out_dir: Path, stem: str) -> None:
    r = panel.result
    if r is None:
        panel.summary = f"**Failed:** {panel.error}"
        return
    tm = r.timings
    stages = " · ".join(f"{name} {value:.2f} s" for name, value in
                        (("features", tm.features_s), ("encode", tm.encode_s), ("decode", tm.decode_s))
                        if value is not None)
    once = load_text(tm.load_s, tm.compile_s)
    language = r.language + (f" ({100 * r.language_probability:.1f} %)" if r.language_probability is not None else "")
    panel.summary = (f"**{tm.total_s:.2f} s — {r.rtfx:.1f}× real time**  \n{stages}  \n"
                     f"{r.device} · {r.precision} · language {language} · model {once} (once)")
    if panel.shared_cpu:
        panel.summary += f"  \n⚠ measured while {panel.shared_cpu} ran in the background: slower than usual"
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
        parts.append(f"<p><b>Threshold decisions too close to call</b> (another implementation may decide "
                     f"them the other way):</p><ul>{items}</ul>")
    panel.diff_html = "".join(parts)
    panel.files = []
    for ext, writer in (("txt", to_txt), ("srt", to_srt), ("vtt", to_vtt)):
        path = out_dir / f"{stem}.{panel.backend}.{ext}"
        path.write_text(writer(r), encoding="utf-8")
        panel.files.append(str(path))
