"""The Benchmarks tab: the committed results, with each file's machine, versions and settings, the
speed per clip, the time by stage and a table."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from ..charts import bench_rtfx_figure, bench_stage_figure
from ..results import RESULTS_DIR, BenchmarkRun, read_runs
from ..views import View

BENCH_TABLE = {"audio": "clip", "implementation": "implementation", "total_s_median": "median s", "rtfx": "RTFx",
               "features_s": "features s", "encode_s": "encode s", "decode_s": "decode s", "load_s": "load s",
               "compile_s": "compile s", "wer": "WER", "agreement": "= openai words"}  # column -> header



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
    """(Markdown naming each file's machine, versions and settings; table rows; RTFx chart; stage chart)."""
    runs, notes = read_runs(directory)
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
    return "\n".join(text), table, bench_rtfx_figure(rows), bench_stage_figure(rows)


def build() -> View:
    """The tab, inside the page's gr.Blocks: the page fills it when a visitor opens it."""
    with gr.Tab("Benchmarks"):
        bench_text = gr.Markdown(elem_id="benchmarks")
        bench_rtfx = gr.Plot(show_label=False)
        bench_stages = gr.Plot(show_label=False)
        bench_table = gr.Dataframe(headers=list(BENCH_TABLE.values()), interactive=False, wrap=True,
                                   elem_id="bench-table")
    return View([bench_text, bench_table, bench_rtfx, bench_stages], lambda: benchmark_view(RESULTS_DIR))
