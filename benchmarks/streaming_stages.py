"""Where a MAX stream's time goes: a clip streamed as `bench --streaming` streams it (1 s chunks,
`maxwhisper.streaming.stream_audio`), after one untimed transcription, with each update's seconds
split into its stages, and each committed word's latency split into its parts:

    .venv/bin/python benchmarks/streaming_stages.py [--precision fp32] [--clip physicsworks.flac] [--chunk 1.0]

Update stages (medians over the updates): the log-Mel, the encoder, the decoding (of it the draft's
check: one decoder call over the prompt and the last hypothesis's tokens, and the choices made from
it), the word timestamps (of them the alignment graph, the median filter and DTW; the rest is host
work: the token probabilities, the attention weights' normalisation, the words), and what is left.
Latency parts (means and medians over the committed words): from the word's end to the arrival of
the chunk that takes the first hypothesis SETTLE_S past it; from that arrival to the start of that
hypothesis (the model busy with the update before, or with the chunk's first step); from there to the
start of the hypothesis that commits the word (the next at the earliest, as each of the two that
agree must have heard SETTLE_S past it; later where they did not agree); the committing
hypothesis's own computing. Then the words by the step that committed them (the first of
a chunk's two steps, the second, or a chunk's one step).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from maxwhisper import decoding, max_backend, timing, transcribe  # noqa: E402
from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import load_audio  # noqa: E402
from maxwhisper.bench.clips import REFERENCES, audio_dir, pseudo_reference  # noqa: E402
from maxwhisper.graph.model import MaxWhisper  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402
from maxwhisper.scoring import wer  # noqa: E402
from maxwhisper.streaming import SETTLE_S, stream_audio  # noqa: E402

STAGES = {  # name: (owner, attribute) timed on each call
    "log-Mel": (max_backend, "log_mel_spectrogram"),
    "encoder": (MaxWhisper, "encode"),
    "decoding": (decoding.DecodingTask, "run"),
    "  draft check": (decoding.DecodingTask, "_check_draft"),
    "word timestamps": (transcribe, "add_word_timestamps"),
    "  alignment graph": (MaxWhisper, "alignment"),
    "  median filter": (timing, "median_filter"),
    "  DTW": (timing, "dtw"),
}
TOP = ("log-Mel", "encoder", "decoding", "word timestamps")


def timed(seconds: dict[str, float], name: str, owner, attribute: str) -> None:
    function = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start

    setattr(owner, attribute, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="fp32")
    p.add_argument("--clip", default="physicsworks.flac")
    p.add_argument("--chunk", type=float, default=1.0)
    args = p.parse_args()
    t = create_transcriber("max", model="tiny.en", device="cpu", precision=args.precision)
    audio = load_audio(audio_dir() / args.clip)
    t.transcribe(audio[:80_000], DecodeOptions(word_timestamps=True))  # first-call costs, as the benchmark
    seconds: dict[str, float] = defaultdict(float)
    for name, (owner, attribute) in STAGES.items():
        timed(seconds, name, owner, attribute)
    updates, stages = [], []

    def on_update(update, now, behind):
        if not update.final:
            updates.append((now - update.compute_s, update.compute_s, update.heard_until, update.committed, now))
            stages.append(dict(seconds))
        elif update.committed:  # `Streamer.finish`, which may hear the buffer once more
            updates.append((now - update.compute_s, update.compute_s, math.inf, update.committed, now))
        seconds.clear()

    report = stream_audio(t, audio, args.chunk, DecodeOptions(), on_update=on_update)
    computes = [u[1] for u in updates if u[1]]
    reference = REFERENCES.get(args.clip) or pseudo_reference(args.clip)
    streamed_wer = f", streamed WER {100 * wer(reference, report.text):.2f} %" if reference else ""
    print(
        f"MAX {args.precision}, {args.clip}, {args.chunk:g} s chunks: {report.updates} updates, latency median "
        f"{statistics.median(report.latencies):.3f} s, p90 {report.latency_quantile(0.9):.3f} s, computing "
        f"{report.compute_share:.2f} s per audio s{streamed_wer}\n\nupdate median "
        f"{1000 * statistics.median(computes):.1f} ms:"
    )
    for name in STAGES:
        print(f"  {name:20s} {1000 * statistics.median(s.get(name, 0.0) for s in stages):6.1f} ms")
    rest = [c - sum(s.get(name, 0.0) for name in TOP) for c, s in zip(computes, stages)]
    print(f"  {'the rest':20s} {1000 * statistics.median(rest):6.1f} ms")

    def arrival(heard: float) -> float:
        return min(math.ceil(heard / args.chunk - 1e-9) * args.chunk, report.audio_s)

    def step(i: int) -> str:
        start, _, heard, _, _ = updates[i]
        if heard == math.inf:
            return "the stream's end"
        if heard < arrival(heard) - 1e-9:
            return "first of two"
        previous = updates[i - 1] if i else None
        return (
            "second of two"
            if previous
            and previous[2] < heard
            and abs(previous[4] - start) < 1e-9
            and arrival(previous[2]) == arrival(heard)
            else "one step"
        )

    parts, by_step = defaultdict(list), defaultdict(list)
    for i, (start, compute, heard, committed, now) in enumerate(updates):
        for word in committed:
            first = next(j for j, u in enumerate(updates) if u[2] >= word.end + SETTLE_S - 1e-9)
            first_start, first_heard = updates[first][0], updates[first][2]
            came = arrival(first_heard) if first_heard != math.inf else first_start
            parts["to the settling chunk"].append(came - word.end)
            parts["model busy"].append(first_start - came)
            parts["agreement"].append(start - first_start)
            parts["committing compute"].append(compute)
            by_step[step(i)].append(now - word.end)
    print(f"\nlatency parts over {len(report.words)} words (mean / median):")
    for name, values in parts.items():
        print(f"  {name:22s} {statistics.mean(values):.3f} / {statistics.median(values):.3f} s")
    print("committed by (words, latency median):")
    for name, values in by_step.items():
        print(f"  {name:16s} {len(values):4d} words  {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
