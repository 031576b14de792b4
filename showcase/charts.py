"""The app's charts: this comparison's times, as bars in HTML that grow as the implementations
finish and read at any width (the Compare tab), and the committed results' speed in Plotly (the
Benchmarks tab). Each implementation keeps its colour in every chart."""
from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maxwhisper.api import TranscriptionResult
from maxwhisper.registry import BACKENDS, color

from .comparison import Comparison, Panel
from .formatting import colored, load_text

STAGE_COLORS = {"features": "#cbd5e1", "encode": "#64748b", "decode": "#f59e0b", "other": "#e5e7eb"}


def _stage_seconds(r: TranscriptionResult) -> dict[str, float]:
    """features/encode/decode as measured (a stage not measured apart counts as 0), and other: the rest of total."""
    tm = r.timings
    stages = {"features": tm.features_s or 0.0, "encode": tm.encode_s or 0.0, "decode": tm.decode_s or 0.0}
    stages["other"] = max(tm.total_s - sum(stages.values()), 0.0)
    return stages


def _name(panel: Panel, mixed: bool) -> str:
    name = BACKENDS[panel.backend].label + (f" {panel.precision}" if mixed else "")
    return f"<span class='bar-name' style='color:{color(panel.backend)}'>{html.escape(name)}</span>"


def time_bars(comparison: Comparison) -> str:
    """HTML: a bar per implementation done, its (best) time, the longest bar the slowest; the chart
    grows as the implementations finish; "" before the first."""
    done = [p for p in comparison.panels.values() if p.runs or p.error]
    if not done:
        return ""
    mixed = any(p.precision != "fp32" for p in comparison.panels.values())
    slowest = max((p.best.seconds for p in done if p.runs), default=1.0) or 1.0
    rows = []
    for p in done:
        if p.error is not None:
            rows.append(f"<div class='bar-row'>{_name(p, mixed)}<span class='bar-failed'>failed</span></div>")
            continue
        best = p.best.seconds
        rows.append(f"<div class='bar-row'>{_name(p, mixed)}<span class='bar'><span class='bar-fill' style='width:"
                    f"{100 * best / slowest:.1f}%;background:{color(p.backend)}'></span></span>"
                    f"<span class='bar-value'>{best:.2f} s · {comparison.audio_s / best:.0f}×<span class='rt'> real time"
                    f"</span></span></div>")
    runs = max((len(p.runs) for p in done), default=1)
    title = "Seconds to transcribe" + (f", best of {runs} runs" if runs > 1 else "") + " (shorter is faster)"
    return f"<div class='bars' id='speed-chart'><div class='bars-title'>{title}</div>{''.join(rows)}</div>"


def stage_bars(comparison: Comparison) -> str:
    """HTML: each implementation's (best) time split by stage, on one scale, and the one-time load
    and compile apart; "" before the first is done."""
    done = [p for p in comparison.panels.values() if p.runs]
    if not done:
        return ""
    slowest = max(p.best.seconds for p in done) or 1.0
    mixed = any(p.precision != "fp32" for p in comparison.panels.values())
    rows = []
    for p in done:
        r = p.best.result
        parts = "".join(f"<span class='bar-fill' title='{stage} {seconds:.3f} s' style='width:{100 * seconds / slowest:.1f}%;"
                        f"background:{STAGE_COLORS[stage]}'></span>" for stage, seconds in _stage_seconds(r).items())
        rows.append(f"<div class='bar-row'>{_name(p, mixed)}<span class='bar'>{parts}</span>"
                    f"<span class='bar-value'>{load_text(r.timings.load_s, r.timings.compile_s)} (once)</span></div>")
    legend = " ".join(f"<span class='swatch' style='background:{c}'></span>{stage}" for stage, c in STAGE_COLORS.items())
    return (f"<div class='bars'><div class='bars-title'>Time by stage (the model's load and compile, once, "
            f"apart)</div>{''.join(rows)}<div class='legend'>{legend}</div></div>")


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
