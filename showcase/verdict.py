"""The Compare tab's verdict: how MAX compared with the other implementations on the visitor's
audio, and what the numbers are (`verdict_html`); before any run, a line on what the committed
benchmark measured (`benchmark_note`)."""
from __future__ import annotations

import html
from pathlib import Path

from maxwhisper.scoring import word_errors

from .charts import short_name
from .comparison import Comparison, Panel
from .cpu_load import BUSY_CORES
from .results import read_runs, reference_rows


def ratio(x: float) -> str:
    """'1.05×' near 1, else one decimal: '1.8×', '2.1×'."""
    return f"{x:.2f}×" if x < 1.195 else f"{x:.1f}×"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _times(faster: float, other: str) -> str:
    """How MAX's time compares with `other`'s, `faster` being the other's time over MAX's: a ratio
    that rounds to 1.00 either way is a tie."""
    if round(faster, 2) == 1 or round(1 / faster, 2) == 1:
        return f"as fast as {other}"
    if faster > 1:
        return f"<b>{ratio(faster)} faster</b> than {other}"
    return f"<b>slower</b> than {other} ({ratio(1 / faster)} its time)"


def _tokens(mx: Panel, others: list[Panel], mixed: bool) -> str:
    """Whether MAX's tokens are those of each other implementation, and where not, how many words differ."""
    same = [short_name(p.backend, p.precision, mixed) for p in others if p.result.tokens == mx.result.tokens]
    parts = [f"identical tokens to {' and '.join(same)}"] if same else []
    for p in others:
        if p.result.tokens != mx.result.tokens:
            errors = word_errors(p.result.text, mx.result.text)
            words = "the same words" if not errors or not errors[0] else \
                f"{errors[0]} word{'s differ' if errors[0] > 1 else ' differs'}"
            parts.append(f"other tokens than {short_name(p.backend, p.precision, mixed)} ({words})")
    return "; ".join(parts)


def _cpu(panels: list[Panel], cores: int | None) -> str:
    """What else used the CPU during the runs whose times count (each one's best), if anything."""
    app = {p.best.shared_cpu for p in panels if p.best.shared_cpu}
    busy = [p for p in panels if p.best.other_cores is not None and p.best.other_cores >= BUSY_CORES]
    shared = [f"{' and '.join(sorted(app))} ran meanwhile"] if app else []
    if busy:
        most = max(p.best.other_cores for p in busy)
        runs = "every run" if len(busy) == len(panels) else \
            " and ".join(f"{short_name(p.backend)}'s" for p in busy) + " runs"
        shared.append(f"other programs used {'up to ' if len(busy) > 1 else ''}{most:.1f} of {cores} cores "
                      f"during {runs}")
    if shared:
        return f"⚠ {_sentence('; '.join(shared))}: run again for a fair ratio."
    if all(p.best.other_cores is not None for p in panels):
        return "No other work held the CPU meanwhile."
    return ""


def verdict_html(comparison: Comparison, cores: int | None = None) -> str:
    """HTML: how many times faster MAX was than each other implementation, then in one line whether
    their tokens are the same and what the numbers are; "" before the end or without MAX and
    another. `cores`: the cores the machine gives the app (in the line on other work)."""
    done = [p for p in comparison.panels.values() if p.runs]
    mx = comparison.panels.get("max")
    others = [p for p in done if p.backend != "max"]
    if not comparison.finished or comparison.message:
        return ""
    if mx is None or not mx.runs or not others:
        return "<p class='note'>The verdict needs MAX and one other implementation at least.</p>"
    mixed = any(p.precision != "fp32" for p in done)
    speed = [_times(p.best.seconds / mx.best.seconds, short_name(p.backend, p.precision, mixed)) for p in others]
    runs = max(len(p.runs) for p in done)
    what = f"best of {runs} runs of each, taken in turns" if runs > 1 else "one run of each"
    return (f"<div class='verdict'>{short_name('max', mx.precision, mixed)} was {', '.join(speed[:-1])}"
            f"{' and ' if len(speed) > 1 else ''}{speed[-1]} on this {comparison.audio_s:.1f} s clip.</div>"
            f"<p class='note'>{_sentence(_tokens(mx, others, mixed))}. Times: {what}, models already loaded. "
            f"{_cpu(done, cores)}</p>")


def benchmark_note(directory: Path) -> str:
    """One line: the fp32 medians of the committed benchmark's clip that the app quotes
    (`results.reference_rows`), fastest first, with its machine; "" without one."""
    found = reference_rows(read_runs(directory)[0])
    rows = sorted((r for r in found[2] if r["precision"] == "fp32"), key=lambda r: r["total_s_median"]) if found else []
    if len(rows) < 2 or not any(r["backend"] == "max" for r in rows):
        return ""
    run, clip = found[0], found[1]
    times = ", ".join(f"{short_name(r['backend'])} {r['total_s_median']:.2f} s" for r in rows)
    return (f"For reference, the committed benchmark on a {rows[0]['audio_s']:.0f} s clip ({html.escape(clip)}) took "
            f"{times} (fp32 medians on {html.escape(str(run.machine.get('cpu', 'a CPU')))}, "
            f"{run.machine.get('cores', '?')} cores; the Benchmarks tab has them all).")
