"""Greedy decoding one step a graph call against runs of several steps a call (the token run
graph, docs/design.md#several-steps-a-call): the same model, the two ways interleaved.

    PYTHONPATH=. .venv/bin/python benchmarks/steps_per_call.py [--precision int8] [--steps 8]
        [--device cpu] [--no-kernels] [--rounds 3] [--clip physicsworks.flac]

One untimed transcription each way, then `--rounds` rounds of one timed transcription each way;
prints the machine, each way's seconds and median, each round's ratio, and whether the two give the
same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--steps", type=int, default=8, help="steps a call of the run graph")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-kernels", action="store_true", help="the portable plan (a GPU's graphs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip", default="physicsworks.flac")
    args = parser.parse_args()
    os.environ["MAXWHISPER_STEPS_PER_CALL"] = str(args.steps)

    from maxwhisper.api import DecodeOptions
    from maxwhisper.audio import load_audio
    from maxwhisper.bench.clips import audio_dir
    from maxwhisper.bench.machine import machine_info
    from maxwhisper.max_backend import MaxTranscriber

    m = machine_info()
    print(f"{m['cpu']} ({m['vector_isa']}, {m['cores']} cores); {args.clip}, tiny.en")
    model = MaxTranscriber("tiny.en", device=args.device, precision=args.precision, kernels=not args.no_kernels)
    start = time.perf_counter()
    model.net.lazy_graph("token_run")
    print(f"{model.net.plan.describe()}; the run graph compiled or loaded in {time.perf_counter() - start:.1f} s")
    audio = load_audio(audio_dir() / args.clip)
    ways = {"one step a call": False, f"{args.steps} steps a call": True}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    tokens = {}
    for round_ in range(args.rounds + 1):
        for way, runs in ways.items():
            model.net.runs = runs
            start = time.perf_counter()
            tokens[way] = tuple(model.transcribe(audio, DecodeOptions()).tokens)
            if round_:  # the first round warms up
                seconds[way].append(time.perf_counter() - start)
    for way, times in seconds.items():
        print(f"{way}: median {statistics.median(times):.3f} s of {[round(t, 3) for t in times]}")
    one, runs = seconds.values()
    print("runs against one step a call, round by round:", [round(r / o, 3) for o, r in zip(one, runs)])
    print("the same tokens:", len(set(tokens.values())) == 1, f"({len(next(iter(tokens.values())))} tokens)")


if __name__ == "__main__":
    main()
