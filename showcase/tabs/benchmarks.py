"""The Benchmarks tab: what the committed benchmark measured. A heading and one chart, MAX against
the others on the longest clip in fp32 and int8 (`results.reference_rows`), then every result in a
table, the CPU's first, then each file's machine, versions and settings, folded."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from ..charts import benchmark_bars, short_name
from ..results import RESULTS_DIR, read_runs, reference_rows
from ..views import View

BENCH_TABLE = {"audio": "clip", "implementation": "implementation", "machine": "machine", "total_s_median": "median s",
               "rtfx": "× real time", "features_s": "features s", "encode_s": "encode s", "decode_s": "decode s",
               "load_s": "load s", "compile_s": "compile s", "wer": "WER %",
               "agreement": "agreement %"}  # column -> header; agreement: 1 - WER against openai-whisper


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


def _cell(column: str, value):
    """A table cell: times to the millisecond, speeds whole, WER and agreement as percentages."""
    if column == "rtfx":
        return round(value) if isinstance(value, (int, float)) else value
    if column in ("wer", "agreement"):
        return _num(100 * value, 1) if isinstance(value, (int, float)) else value
    return _num(value)


def machine_name(machine: dict, device: str) -> str:
    """'NVIDIA H100 80GB HBM3' for a GPU's rows, 'AMD EPYC · AVX-512 VNNI BF16 · 2 cores' for a CPU's."""
    if device == "gpu" and machine.get("gpu"):
        return str(machine["gpu"])
    cores = f"{machine['cores']} cores" if machine.get("cores") else None
    parts = [machine.get("cpu"), machine.get("vector_isa"), cores]
    return " · ".join(str(p) for p in parts if p) or "?"


def benchmark_view(directory: Path) -> tuple[str, str, list[list], str]:
    """(HTML: the heading and the chart; table rows; Markdown: each file's machine, versions and
    settings)."""
    runs, notes = read_runs(directory)
    if not runs:
        return ("<h2>What this machine class measured</h2><p class='note'>No committed benchmark results yet "
                "(<code>python -m maxwhisper bench</code> writes them).</p>", [], "\n".join(notes))
    top = "<h2>What this machine class measured</h2>"
    found = reference_rows(runs)
    if found:
        run, clip, rows = found
        machine = run.machine
        top += (f"<p class='note'>{html.escape(rows[0]['model'] or '')} on a {rows[0]['audio_s']:.0f} s clip "
                f"({html.escape(clip)}), {html.escape(str(machine.get('cpu', 'a CPU')))}"
                f"{' (' + html.escape(machine['vector_isa']) + ')' if machine.get('vector_isa') else ''}, "
                f"{machine.get('cores', '?')} cores: each implementation in turn, medians of several runs, "
                f"the same weights and decoding.</p>{benchmark_bars(rows)}")

    def cells(run, row: dict) -> list:
        when = run.created[:10]  # two runs on one machine class differ by their day
        named = {**row, "implementation": f"{short_name(row['backend'])} {row['precision']}",
                 "machine": machine_name(run.machine, row["device"]) + (f" · {when}" if when else "")}
        return [_cell(c, named[c]) for c in BENCH_TABLE]

    # the CPU's runs first (the app's subject), the newest first within each device
    runs = sorted(sorted(runs, key=lambda r: r.created, reverse=True),
                  key=lambda r: not any(row["device"] == "cpu" for row in r.rows))
    table = [cells(run, row) for run in runs for row in run.rows]
    details = [f"- **`{r.name}`** — machine: {_inline(r.machine)}  \n  versions: {_inline(r.versions)}  \n"
               f"  settings: {_inline(r.options)}" for r in runs] + notes
    return top, table, "\n".join(details)


def build() -> View:
    """The tab, inside the page's gr.Blocks: the page fills it when a visitor opens it."""
    with gr.Tab("Benchmarks"):
        top = gr.HTML(elem_id="benchmarks", min_height=0)
        table = gr.Dataframe(headers=list(BENCH_TABLE.values()), interactive=False, wrap=True, elem_id="bench-table",
                             label="Every committed result")
        with gr.Accordion("Machines, versions and settings of each results file", open=False):
            machines = gr.Markdown(elem_id="bench-machines")
    return View([top, table, machines], lambda: benchmark_view(RESULTS_DIR))
