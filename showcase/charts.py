"""The app's charts, horizontal bars in HTML that read at any width: this comparison's times, which
grow as the implementations finish, and its time by stage (the Compare tab); the committed
benchmark's lecture, MAX against the others in fp32 and in int8 (the Benchmarks tab). Each
implementation keeps its colour in every chart."""

from __future__ import annotations

import html
from dataclasses import dataclass

from maxwhisper.api import TranscriptionResult
from maxwhisper.registry import BACKENDS, color

from .comparison import Comparison
from .formatting import load_text

STAGE_COLORS = {"features": "#cbd5e1", "encode": "#64748b", "decode": "#f59e0b", "other": "#e5e7eb"}


@dataclass(frozen=True)
class Bar:
    backend: str
    name: str  # as the row says it: "MAX", "faster-whisper int8"
    parts: tuple[tuple[str, float], ...] = ()  # (colour, seconds) from the left; none: a failed row
    value: str = "failed"  # the text after the bar
    detail: str = ""  # a line under the bar: its parts' seconds


def short_name(backend: str, precision: str = "fp32", mixed: bool = False) -> str:
    """'MAX', 'faster-whisper int8' (the precision named where precisions mix)."""
    name = BACKENDS[backend].label if backend in BACKENDS else backend
    return f"{name} {precision}" if mixed else name


def bars_html(title: str, bars: list[Bar], elem_id: str = "", legend: str = "") -> str:
    """A chart: a row per bar, its name (in the text's colour, which reads on any background), its
    parts on one scale (the longest bar fills the row), its value after it."""
    longest = max((sum(s for _, s in b.parts) for b in bars), default=0.0) or 1.0
    rows = []
    for b in bars:
        name = f"<span class='bar-name'>{html.escape(b.name)}</span>"
        fills = "".join(
            f"<span class='bar-fill' style='width:{100 * s / longest:.1f}%;background:{c}'></span>" for c, s in b.parts
        )
        bar = f"<span class='bar'>{fills}</span>" if b.parts else ""
        rows.append(f"<div class='bar-row'>{name}{bar}<span class='bar-value'>{b.value}</span></div>")
        if b.detail:
            rows.append(f"<div class='bar-detail'>{html.escape(b.detail)}</div>")
    ident = f" id='{elem_id}'" if elem_id else ""
    return f"<div class='bars'{ident}><div class='bars-title'>{title}</div>{''.join(rows)}{legend}</div>"


def speed_value(seconds: float, audio_s: float) -> str:
    return f"{seconds:.2f} s · {audio_s / seconds:.0f}× real time"


def time_bars(comparison: Comparison, cpu: bool = False) -> str:
    """A bar per implementation done (or failed): its best wall-clock time, or with `cpu` its fewest
    CPU seconds (the verdict's measure where other programs held the CPU); "" before the first."""
    done = [p for p in comparison.panels.values() if p.runs or p.error]
    if not done:
        return ""
    mixed = any(p.precision != "fp32" for p in comparison.panels.values())

    def bar(p) -> Bar:
        name = short_name(p.backend, p.precision, mixed)
        if p.error is not None:
            return Bar(p.backend, name)
        if cpu:
            return Bar(p.backend, name, ((color(p.backend), p.cheapest.cpu_s),), f"{p.cheapest.cpu_s:.2f} CPU s")
        return Bar(
            p.backend, name, ((color(p.backend), p.best.seconds),), speed_value(p.best.seconds, comparison.audio_s)
        )

    runs = max((len(p.runs) for p in done), default=1)
    title = (
        "CPU seconds to transcribe" + (f", fewest of {runs} runs" if runs > 1 else "")
        if cpu
        else "Seconds to transcribe" + (f", best of {runs} runs" if runs > 1 else "")
    ) + " (shorter is faster)"
    return bars_html(title, [bar(p) for p in done], "speed-chart")


def _stage_seconds(r: TranscriptionResult) -> dict[str, float]:
    """features/encode/decode as measured (a stage not measured apart counts as 0), and other: the rest of total."""
    tm = r.timings
    stages = {"features": tm.features_s or 0.0, "encode": tm.encode_s or 0.0, "decode": tm.decode_s or 0.0}
    stages["other"] = max(tm.total_s - sum(stages.values()), 0.0)
    return stages


def stage_bars(comparison: Comparison) -> str:
    """Each implementation's best run split by stage, and its one-time load and compile apart; "" before
    the first is done."""
    done = [p for p in comparison.panels.values() if p.runs]
    if not done:
        return ""
    mixed = any(p.precision != "fp32" for p in comparison.panels.values())
    bars, shown = [], set()  # shown: the stages of a hundredth of a second or more, in some bar
    for p in done:
        stages = {stage: s for stage, s in _stage_seconds(p.best.result).items() if round(s, 2)}
        shown |= set(stages)
        bars.append(
            Bar(
                p.backend,
                short_name(p.backend, p.precision, mixed),
                tuple((STAGE_COLORS[stage], s) for stage, s in stages.items()),
                f"{load_text(p.best.result.timings.load_s, p.best.result.timings.compile_s)} (once)",
                " · ".join(f"{stage} {s:.2f} s" for stage, s in stages.items()),
            )
        )
    legend = (
        "<div class='legend'>"
        + " ".join(
            f"<span class='swatch' style='background:{c}'></span>{stage}"
            for stage, c in STAGE_COLORS.items()
            if stage in shown
        )
        + "</div>"
    )
    title = "Wall-clock seconds by stage, best run (the model's load and compile, once, apart)"
    return bars_html(title, bars, legend=legend)


def benchmark_bars(
    rows: list[dict], precisions: tuple[str, ...] = ("fp32", "int8"), elem_id: str = "bench-chart"
) -> str:
    """The committed rows of one clip (`results.BENCH_COLUMNS`), a group of bars per precision, fastest
    first: MAX against the others, like with like; "" without rows of MAX in those precisions."""
    bars = []
    for precision in precisions:
        mine = sorted((r for r in rows if r["precision"] == precision), key=lambda r: r["total_s_median"])
        if any(r["backend"] == "max" for r in mine):
            bars += [
                Bar(
                    r["backend"],
                    short_name(r["backend"], precision, True),
                    ((color(r["backend"]), r["total_s_median"]),),
                    speed_value(r["total_s_median"], r["audio_s"]),
                )
                for r in mine
            ]
    return bars_html("Median seconds to transcribe (shorter is faster)", bars, elem_id) if bars else ""
