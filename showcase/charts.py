"""The app's Plotly charts: this run's time by stage and RTFx (audio seconds per processing second)
per implementation (the Transcribe & compare tab), the committed results' speed and stages (the
Benchmarks tab). Each implementation keeps its colour in every chart."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maxwhisper.api import TranscriptionResult
from maxwhisper.registry import color

from .formatting import colored, label, load_text

STAGE_COLORS = {"features": "#cbd5e1", "encode": "#64748b", "decode": "#f59e0b", "other": "#e5e7eb"}


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


def rtfx_figure(results: dict[str, TranscriptionResult]) -> go.Figure:
    backends = list(results)
    rtfx = [r.rtfx for r in results.values()]
    fig = go.Figure(go.Bar(y=[label(b) for b in backends], x=rtfx, orientation="h",
                           text=[f"{x:.1f}×" for x in rtfx], textposition="auto",
                           marker_color=[color(b) for b in backends]))
    fig.update_layout(title="RTFx: audio seconds per processing second (higher is faster)",
                      height=170 + 45 * len(backends), margin=dict(l=10, r=10, t=70, b=10))
    fig.update_yaxes(autorange="reversed")
    _backend_axis(fig, backends)
    return fig


def bench_rtfx_figure(rows: list[tuple[str, dict]]) -> go.Figure:
    """RTFx (audio s per processing s) per clip, a bar per implementation in its colour (hatched: not fp32)."""
    fig = go.Figure()
    for name in dict.fromkeys(name for name, _ in rows):
        mine = [r for n, r in rows if n == name]
        fig.add_bar(name=name, x=[r["audio"] for r in mine], y=[r["rtfx"] for r in mine],
                    marker_color=color(mine[0]["backend"]),
                    marker_pattern_shape="" if mine[0]["precision"] == "fp32" else "/",
                    text=[f"{r['rtfx']:.1f}×" if isinstance(r["rtfx"], (int, float)) else "" for r in mine])
    fig.update_layout(title="RTFx: audio seconds per processing second (higher is faster)", barmode="group", height=420,
                      yaxis_title="audio seconds per second", margin=dict(l=10, r=10, t=60, b=10))
    return fig


BAR_PX = 24  # the height of one bar in the benchmark's stage chart


def bench_stage_figure(rows: list[tuple[str, dict]]) -> go.Figure:
    """Median time by stage, a panel per clip with its own scale (a 5 s clip is not a sliver next to a
    lecture), one above the other, a horizontal bar per implementation named on its row: side by side
    with one vertical bar each, ten implementations' names could only stand on end and overlap."""
    clips = list(dict.fromkeys(r["audio"] for _, r in rows))
    bars = [sum(r["audio"] == clip for _, r in rows) for clip in clips]
    fig = make_subplots(rows=len(clips), cols=1, subplot_titles=clips, row_heights=bars,
                        vertical_spacing=0.25 / len(clips))
    stages = ("features_s", "encode_s", "decode_s")
    for row, clip in enumerate(clips, 1):
        mine = [(n, r) for n, r in rows if r["audio"] == clip]
        y = [n for n, _ in mine]
        for key in stages:
            fig.add_bar(name=key[:-2], y=y, x=[r[key] or 0.0 for _, r in mine], orientation="h",
                        marker_color=STAGE_COLORS[key[:-2]], legendgroup=key, showlegend=row == 1, row=row, col=1)
        fig.add_bar(name="other", y=y, orientation="h", marker_color=STAGE_COLORS["other"], legendgroup="other",
                    x=[max((r["total_s_median"] or 0.0) - sum(r[k] or 0.0 for k in stages), 0.0) for _, r in mine],
                    showlegend=row == 1, row=row, col=1)
        fig.update_yaxes(tickvals=y, ticktext=[colored(r["backend"], n) for n, r in mine], autorange="reversed",
                         row=row, col=1)
    fig.update_layout(title="Median time per transcription, by stage (s)", barmode="stack",
                      height=120 + sum(BAR_PX * n + 60 for n in bars), margin=dict(l=10, r=10, t=100, b=10),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1, yanchor="bottom"))
    return fig
