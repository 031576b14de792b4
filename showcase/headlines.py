"""The Transcribe & compare tab's headline: how MAX compared on this run's audio (`run_headline`),
or before any run, on the committed benchmark's longest clip (`benchmark_headline`)."""
from __future__ import annotations

import logging
from pathlib import Path

from maxwhisper.api import TranscriptionResult

from .formatting import label
from .results import BenchmarkRun, read_runs

log = logging.getLogger(__name__)


def _times(faster: float) -> str:
    """How MAX's time compares, `faster` being the other's time over MAX's: a ratio that rounds to
    1.00 either way is a tie, not "slower (1.00× the time)"."""
    if round(faster, 2) == 1 or round(1 / faster, 2) == 1:
        return "as fast as"
    return f"{faster:.2f}× faster than" if faster > 1 else f"slower ({1 / faster:.2f}× the time) than"


def run_headline(results: dict[str, TranscriptionResult], shared_cpu: str = "") -> str:
    """Markdown: how many times faster MAX was than each other implementation on this audio, and
    whether their tokens were identical; "" when MAX or every other implementation is missing.
    `shared_cpu`: the background work some of the runs shared the CPU with, if any."""
    mx = results.get("max")
    others = {b: r for b, r in results.items() if b != "max"}
    if mx is None or not others:
        return ""
    shared_cpu = (f" ⚠ Some runs shared the CPU with {shared_cpu}: compare again for a fair ratio." if shared_cpu
                  else "")
    # all in fp32 unless said: a run in int8 names each implementation's precision
    mixed = any(r.precision != "fp32" for r in results.values())
    speed = "; ".join(f"{_times(r.timings.total_s / mx.timings.total_s)} {label(b)}"
                      f"{' ' + r.precision if mixed else ''} ({r.timings.total_s:.2f} s)" for b, r in others.items())
    same = [label(b) for b, r in others.items() if r.tokens == mx.tokens]
    tokens = ("identical tokens to " + " and ".join(same) if same else "tokens differ from every other implementation")
    if same and len(same) < len(others):
        tokens += f", not to {' and '.join(label(b) for b in others if label(b) not in same)}"
    return (f"### On this {mx.audio_s:.1f} s of audio, MAX Graph{' ' + mx.precision if mixed else ''} "
            f"took {mx.timings.total_s:.2f} s: {speed}.\n"
            f"MAX's transcript has {tokens}. One run each, model already loaded.{shared_cpu}")



def benchmark_headline(directory: Path) -> str:
    """Markdown: the newest committed benchmark's result on its longest clip, with its machine; ""
    without one (a run whose numbers are missing or not numbers is passed over)."""
    runs, _ = read_runs(directory)
    for run in sorted(runs, key=lambda r: r.created, reverse=True):
        try:
            headline = _run_headline(run)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
            log.warning("no headline from %s: %s", run.name, e)
            continue
        if headline:
            return headline
    return ""


def _run_headline(run: BenchmarkRun) -> str:
    """Like with like: each of MAX's precisions against the other implementations' rows in the same
    precision (MAX int8 against faster-whisper int8, MAX fp32 against the fp32 rows)."""
    clips = {r["audio"]: r["audio_s"] or 0 for r in run.rows if r["backend"] == "max"}
    if not clips:
        return ""
    clip = max(clips, key=clips.get)
    on_clip = [r for r in run.rows if r["audio"] == clip]
    mine = [r for r in on_clip if r["backend"] == "max"]
    lines = []
    for mx in mine:
        others = [r for r in on_clip if r["backend"] != "max" and r["precision"] == mx["precision"]]
        if not others:
            continue
        speed = "; ".join(f"{_times(r['total_s_median'] / mx['total_s_median'])} {label(r['backend'])} "
                          f"{r['precision']} ({r['total_s_median']:.2f} s)" for r in others)
        same = {True: "its tokens are identical to openai-whisper's", False: "its tokens differ from openai-whisper's"}
        tokens = same.get(mx["tokens_identical_to_openai"])
        lines.append(f"MAX Graph {mx['precision']} took {mx['total_s_median']:.2f} s: {speed}"
                     + (f"; {tokens}." if tokens else "."))
    if not lines:
        return ""
    machine = run.machine
    return (f"### Committed benchmark on {clip} ({clips[clip]:.0f} s, {mine[0]['model']})\n"
            + "\n".join(f"- {line}" for line in lines)
            + f"\n\nMedians on {machine.get('cpu', 'a CPU')}, {machine.get('cores', '?')} cores"
            f"{', ' + machine['vector_isa'] if machine.get('vector_isa') else ''} (`{run.name}`). "
            f"Run a clip to measure on this machine.")
