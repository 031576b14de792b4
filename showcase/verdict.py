"""The Compare tab's verdict: how MAX compared with the other implementations on the visitor's
audio, and what the numbers are (`verdict_html`); before any run, a line on what the committed
benchmark measured (`benchmark_note`).

The verdict rests on the measure the conditions make fair (`fair_measure`): wall-clock time where
nothing else held the CPU during the runs that count; CPU time (the processor seconds each run's own
work took, `cpu_load`) where other programs kept cores busy, as they stretch wall-clock times by
chance; none where the app's own work (a compile, the component checks) ran beside them, which
inflates both. Implementations whose transcripts are not the same words get no speed verdict.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from maxwhisper.scoring import normalize, word_errors

from .charts import short_name
from .comparison import Comparison, Panel
from .cpu_load import BUSY_CORES
from .results import quoted_machine, read_runs, reference_rows, this_machine

SAME_WORDS = 0.1  # transcripts differing in more than this share of their words did not do the same work


def ratio(x: float) -> str:
    """'1.05×' near 1, else one decimal: '1.8×', '2.1×'."""
    return f"{x:.2f}×" if x < 1.195 else f"{x:.1f}×"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Measure:
    """What the verdict's times are: `kind` "wall" (wall-clock seconds, each one's fastest run), "cpu"
    (CPU seconds, each one's cheapest run) or "" (no fair measure this time); `why` in plain words."""

    kind: str
    why: str

    def seconds(self, panel: Panel) -> float:
        return panel.cheapest.cpu_s if self.kind == "cpu" else panel.best.seconds


def _app_work(runs) -> str:
    return " and ".join(sorted({r.shared_cpu for r in runs if r.shared_cpu}))


def fair_measure(panels: list[Panel], cores: int | None = None) -> Measure:
    """The measure the conditions of these panels' runs make fair (see the module's docstring)."""
    fastest = [p.best for p in panels]
    busy = [r.other_cores for r in fastest if r.other_cores is not None and r.other_cores >= BUSY_CORES]
    if not busy and not _app_work(fastest):
        quiet = all(r.other_cores is not None for r in fastest)
        return Measure("wall", "No other work held the CPU meanwhile." if quiet else "")
    cheapest = [p.cheapest for p in panels]
    if busy and all(cheapest) and not _app_work(cheapest):
        return Measure(
            "cpu",
            f"Other programs kept up to {max(busy):.1f} of {cores or '?'} cores busy during the "
            f"runs, which stretches wall-clock times by chance, so this verdict counts CPU time: "
            f"the processor seconds each run's own work took.",
        )
    app = _app_work(cheapest if all(cheapest) else fastest)
    if app:
        return Measure("", f"{app} ran in this app meanwhile and slowed the runs")
    return Measure("", f"other programs kept up to {max(busy):.1f} of {cores or '?'} cores busy during the runs")


def _same_words(mx: Panel, other: Panel) -> tuple[bool, str]:
    """Whether two transcripts are the same words (within SAME_WORDS), and where not, how many differ."""
    errors = word_errors(other.result.text, mx.result.text)
    words = max(errors[1], len(normalize(mx.result.text).split())) if errors else 0
    if errors is None or errors[0] <= SAME_WORDS * words:
        return True, ""
    return False, f"{errors[0]} of {words} words differ"


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
            words = (
                "the same words"
                if not errors or not errors[0]
                else f"{errors[0]} word{'s differ' if errors[0] > 1 else ' differs'}"
            )
            parts.append(f"different tokens from {short_name(p.backend, p.precision, mixed)} ({words})")
    return "; ".join(parts)


def _listed(panels: list[Panel], mixed: bool) -> str:
    """'MAX 0.39 s (0.9 CPU s), openai-whisper ...': each one's fastest wall-clock time and cheapest CPU time."""

    def one(p: Panel) -> str:
        cpu = f" ({p.cheapest.cpu_s:.2f} CPU s)" if p.cheapest else ""
        return f"{short_name(p.backend, p.precision, mixed)} {p.best.seconds:.2f} s{cpu}"

    return ", ".join(one(p) for p in panels)


def _heard_speech(panels: list[Panel]) -> bool:
    """Whether any transcript has a word: where none has, no one is faster at transcribing it."""
    return any(normalize(p.result.text).split() for p in panels)


def winner(comparison: Comparison, cores: int | None = None) -> str | None:
    """The implementation the verdict finds fastest by its measure; None without a fair verdict."""
    done = [p for p in comparison.panels.values() if p.runs]
    if not comparison.finished or comparison.message or len(done) < 2 or not _heard_speech(done):
        return None
    measure = fair_measure(done, cores)
    return min(done, key=measure.seconds).backend if measure.kind else None


def verdict_html(comparison: Comparison, cores: int | None = None) -> str:
    """HTML: how many times faster MAX was than each other implementation, by the fair measure,
    then in one line whether their tokens are the same and what the numbers are; "" before the end
    or without MAX and another. `cores`: the cores the machine gives the app."""
    done = [p for p in comparison.panels.values() if p.runs]
    mx = comparison.panels.get("max")
    others = [p for p in done if p.backend != "max"]
    if not comparison.finished or comparison.message:
        return ""
    if mx is None or not mx.runs or not others:
        return "<p class='note'>The verdict needs MAX and one other implementation at least.</p>"
    mixed = any(p.precision != "fp32" for p in done)
    runs = max(len(p.runs) for p in done)
    what = f"best of {runs} runs of each, taken in turns" if runs > 1 else "one run of each"
    tokens = f"{_sentence(_tokens(mx, others, mixed))}."
    measure = fair_measure(done, cores)
    clip = f"on this {comparison.audio_s:.1f} s clip"
    if not measure.kind:
        return (
            f"<div class='verdict'>No fair verdict this time: {measure.why}.</div>"
            f"<p class='note'>Run again for a fair ratio. {tokens} Times ({what}): {_listed(done, mixed)}.</p>"
        )
    if not _heard_speech(done):
        return (
            f"<div class='verdict'>No speed verdict {clip}: none of them heard speech in it.</div>"
            f"<p class='note'>Times ({what}): {_listed(done, mixed)}.</p>"
        )
    compared, apart = [], []
    for p in others:
        same, differ = _same_words(mx, p)
        name = short_name(p.backend, p.precision, mixed)
        if same:
            compared.append(_times(measure.seconds(p) / measure.seconds(mx), name))
        else:
            apart.append(f"{name} ({differ})")
    lead = "Counting CPU time, " if measure.kind == "cpu" else ""
    mx_name = short_name("max", mx.precision, mixed)
    if compared:
        speed = f"{', '.join(compared[:-1])}{' and ' if len(compared) > 1 else ''}{compared[-1]}"
        headline = f"{lead}{mx_name} was {speed} {clip}."
    else:
        headline = f"No speed verdict {clip}: the transcripts are not the same words."
    if apart:
        headline += f" No speed verdict against {' and '.join(apart)}: they did not transcribe the same words."
    times = f"Times: {what}, their load and compile not counted: {_listed(done, mixed)}."
    if measure.kind == "cpu":  # the panels' big figures are wall-clock seconds, which may rank them otherwise
        cpu = ", ".join(f"{short_name(p.backend, p.precision, mixed)} {p.cheapest.cpu_s:.2f}" for p in done)
        tokens = (
            f"<b>In CPU seconds: {cpu}</b>; the wall-clock seconds shown were stretched by other programs. {tokens}"
        )
    return f"<div class='verdict'>{_sentence(headline)}</div><p class='note'>{tokens} {measure.why} {times}</p>"


def benchmark_note(directory: Path) -> str:
    """One line: the fp32 medians of the committed benchmark's clip that the app quotes
    (`results.reference_rows`), fastest first, with its machine; "" without one."""
    found = reference_rows(read_runs(directory)[0], this_machine())
    rows = sorted((r for r in found[2] if r["precision"] == "fp32"), key=lambda r: r["total_s_median"]) if found else []
    if len(rows) < 2 or not any(r["backend"] == "max" for r in rows):
        return ""
    run, clip = found[0], found[1]
    times = ", ".join(f"{short_name(r['backend'])} {r['total_s_median']:.2f} s" for r in rows)
    return (
        f"For reference, the committed benchmark on a {rows[0]['audio_s']:.0f} s clip ({html.escape(clip)}) took "
        f"{times} (fp32 medians on {html.escape(quoted_machine(run.machine, this_machine()))}"
        "; the Benchmarks tab has them all)."
    )
