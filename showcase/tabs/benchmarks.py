"""The Benchmarks tab: what the committed benchmarks measured, each row naming its machine beside
the line naming this server. A tab for the CPUs: one chart, MAX against the others on the longest
clip in fp32 and int8 (`results.reference_rows`), and every CPU result in a table; a tab for the
GPU, a click away: its chart, what did not run on the GPU and why, and its rows; then each file's
machine, versions and settings, folded."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd
from pandas.io.formats.style import Styler

from maxwhisper.registry import BACKENDS, PRECISIONS

from ..charts import benchmark_bars, short_name
from ..results import RESULTS_DIR, machine_name, quoted_machine, read_runs, reference_rows, this_machine
from ..views import View

# column -> (header, width): the columns fit a 1366 px screen, each header's words whole; the stages
# and one-time costs beyond encode, decode and compile are in each results file
BENCH_TABLE = {  # what a phone shows first: the implementation and its time
    "implementation": ("implementation", "140px"),
    "total_s_median": ("median s", "90px"),
    "rtfx": ("× real time", "80px"),
    "audio": ("clip", "190px"),
    "machine": ("machine", "250px"),
    "encode_s": ("encode s", "90px"),
    "decode_s": ("decode s", "90px"),
    "compile_s": ("compile s", "90px"),
    "wer": ("WER %", "70px"),
    "agreement": ("agreement %", "110px"),
}  # agreement: 1 - WER against openai-whisper
DIGITS = {"total_s_median": 3, "encode_s": 3, "decode_s": 3, "compile_s": 3, "rtfx": 0, "wer": 1, "agreement": 1}
# under a chart, on a phone only: the table below it shows two of its columns there
SCROLL_HINT = "<p class='note phone-only'>The table below scrolls sideways to its other columns.</p>"


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


def _cell(column: str, value):
    """A table cell: WER and agreement as percentages, other numbers as they are."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return 100 * value if number and column in ("wer", "agreement") else value


def _shown(digits: int):
    """A column's display: a number to `digits` decimals, anything else as it is."""
    return lambda v: f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)


def _clip(audio: str) -> str:
    """'stereo_diarization#left' for 'stereo_diarization.wav#left': the name without its extension,
    so that it fits its column."""
    name, _, channel = audio.partition("#")
    return Path(name).stem + (f"#{channel}" if channel else "")


def _row_order(row: dict) -> tuple:
    """Within a run: the longest clip first, its fp32 rows together (MAX, openai-whisper,
    faster-whisper), then its other precisions."""
    backend, precision = row.get("backend"), row.get("precision")
    return (
        -(row.get("audio_s") or 0.0),
        str(row.get("audio")),
        PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS),
        list(BACKENDS).index(backend) if backend in BACKENDS else len(BACKENDS),
    )


def results_table(rows: list[list]) -> Styler:
    """The rows under `BENCH_TABLE`'s headers, each column to its own decimals, "–" where a file
    has no value (the sort by a header still sees the numbers)."""
    frame = pd.DataFrame(rows, columns=[header for header, _ in BENCH_TABLE.values()])
    digits = {BENCH_TABLE[c][0]: _shown(d) for c, d in DIGITS.items()}
    return frame.style.format(digits, na_rep="–")


# what a failure's error means, for the GPU results' "what did not run and why"
KNOWN_CAUSES = {
    "libcublas.so.12": "CTranslate2, on which faster-whisper runs, is built for CUDA 12 and loads its cuBLAS; the GPU "
    "machines had CUDA 13, which MAX needs, so faster-whisper has never run on CUDA beside MAX",
}


def this_server() -> str:
    """The machine the app runs on, named as the rows name theirs."""
    return machine_name(this_machine(), "cpu")


def _not_run(runs) -> str:
    """HTML: what did not run on a GPU, grouped by implementation and error, and why where known."""
    groups: dict[tuple[str, str], tuple[set[str], set[str]]] = {}  # (backend, error) -> (precisions, clips)
    for run in runs:
        for f in run.failures:
            precisions, clips = groups.setdefault((f["backend"], str(f.get("error") or "?")), (set(), set()))
            precisions.add(str(f.get("precision") or "?"))
            clips.add(str(f.get("audio") or "?"))
    items = []
    for (backend, error), (precisions, clips) in groups.items():
        why = next((cause for key, cause in KNOWN_CAUSES.items() if key in error), "")
        items.append(
            f"<li><b>{html.escape(short_name(backend))}</b> ({', '.join(sorted(precisions))}; "
            f"{len(clips)} clip{'s' if len(clips) > 1 else ''}): "
            f"{html.escape(why or error)}{f' (<code>{html.escape(error)}</code>)' if why else ''}.</li>"
        )
    return f"<p><b>What did not run on the GPU, and why</b></p><ul>{''.join(items)}</ul>" if items else ""


def benchmark_view(directory: Path) -> tuple[str, str, Styler, str, Styler, str]:
    """(HTML: the heading and this server; HTML: the CPU chart; the CPUs' rows (`results_table`);
    HTML: the GPU chart and what did not run on the GPU; the GPUs' rows; Markdown: each file's
    machine, versions and settings)."""
    runs, notes = read_runs(directory)
    top = (
        "<h2>What the committed benchmarks measured</h2><p class='note'>This server: "
        f"{html.escape(this_server())}. Every row names the machine it ran on.</p>"
    )
    if not runs:
        return (
            top + "<p class='note'>No committed benchmark results yet (<code>python -m maxwhisper bench</code> "
            "writes them).</p>",
            "",
            results_table([]),
            "",
            results_table([]),
            "\n".join(notes),
        )
    cpu_top = ""
    found = reference_rows(runs, this_machine())
    if found:
        run, clip, rows = found
        cpu_top = (
            f"<p class='note'>{html.escape(rows[0]['model'] or '')} on a {rows[0]['audio_s']:.0f} s clip "
            f"({html.escape(clip)}) on {html.escape(quoted_machine(run.machine, this_machine()))}"
            f": each implementation in turn, medians of several runs, the same weights and decoding.</p>"
            f"{benchmark_bars(rows)}{SCROLL_HINT}"
        )

    def cells(run, row: dict) -> list:
        when = run.created[:10]  # two runs on one machine class differ by their day
        named = {
            **row,
            "audio": _clip(row["audio"]) if row.get("audio") else None,
            "implementation": f"{short_name(row['backend'])} {row['precision']}",
            "machine": machine_name(run.machine, row["device"]) + (f" · {when}" if when else ""),
        }
        return [_cell(c, named[c]) for c in BENCH_TABLE]

    runs = sorted(runs, key=lambda r: r.created, reverse=True)  # the newest first
    cpu = [cells(run, row) for run in runs for row in sorted(run.rows, key=_row_order) if row["device"] != "gpu"]
    gpu_runs = [run for run in runs if any(row["device"] == "gpu" for row in run.rows)]
    gpu = [cells(run, row) for run in gpu_runs for row in sorted(run.rows, key=_row_order) if row["device"] == "gpu"]
    gpu_top = ""
    if gpu_runs:
        newest = gpu_runs[0]
        longest = max((r for r in newest.rows if r["device"] == "gpu"), key=lambda r: r["audio_s"] or 0)
        bars = benchmark_bars(
            [r for r in newest.rows if r["device"] == "gpu" and r["audio"] == longest["audio"]],
            ("fp32", "fp16"),
            "bench-gpu-chart",
        )
        gpu_top = (
            f"<p class='note'>On {html.escape(machine_name(newest.machine, 'gpu'))} (its host: "
            f"{html.escape(machine_name(newest.machine, 'cpu'))}), {html.escape(longest['audio'] or '')}, "
            f"{longest['audio_s'] or 0:.0f} s:</p>{bars}{_not_run(gpu_runs)}{SCROLL_HINT}"
        )
    details = [
        f"- **`{r.name}`** — machine: {_inline(r.machine)}  \n  versions: {_inline(r.versions)}  \n"
        f"  settings: {_inline(r.options)}"
        for r in runs
    ] + notes
    return top, cpu_top, results_table(cpu), gpu_top, results_table(gpu), "\n".join(details)


def gpu_name(directory: Path) -> str:
    """'NVIDIA H100 80GB HBM3': the GPU of the newest committed GPU run, the one the GPU tab charts,
    for the tab's label (one name, so that the label fits a phone's row of tabs)."""
    runs = [r for r in read_runs(directory)[0] if any(row["device"] == "gpu" for row in r.rows)]
    return machine_name(max(runs, key=lambda r: r.created).machine, "gpu") if runs else ""


def _results_table(elem_id: str, label: str) -> gr.Dataframe:
    """A table of `BENCH_TABLE`'s columns at their widths."""
    return gr.Dataframe(
        headers=[header for header, _ in BENCH_TABLE.values()],
        column_widths=[width for _, width in BENCH_TABLE.values()],
        interactive=False,
        wrap=True,
        elem_id=elem_id,
        label=label,
    )


def build() -> View:
    """The tab, inside the page's gr.Blocks: the page fills it when a visitor opens it. The CPUs'
    results and the GPUs' are a tab each, the GPUs' a click away."""
    gpu_label = gpu_name(RESULTS_DIR)
    with gr.Tab("Benchmarks"):
        top = gr.HTML(elem_id="benchmarks", min_height=0)
        with gr.Tabs():
            with gr.Tab("On CPUs", elem_id="bench-cpu-tab"):
                cpu_top = gr.HTML(elem_id="bench-cpu", min_height=0)
                cpu = _results_table("bench-table", "Every committed result on a CPU")
            with gr.Tab(f"On a GPU ({gpu_label})" if gpu_label else "On a GPU", elem_id="bench-gpu-tab"):
                gpu_top = gr.HTML(elem_id="bench-gpu", min_height=0)
                gpu = _results_table("bench-gpu-table", "Every committed result on a GPU")
        with gr.Accordion("Machines, versions and settings of each results file", open=False):
            machines = gr.Markdown(elem_id="bench-machines")
    return View([top, cpu_top, cpu, gpu_top, gpu, machines], lambda: benchmark_view(RESULTS_DIR))
