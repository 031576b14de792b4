"""The lecture with the step graph (prompts) or the token run graph built by another checkout's
`graph/decoder.py` against this one's, in one process, in turn:

    PYTHONPATH=. .venv/bin/python benchmarks/step_graph_ab.py --before /tmp/before [--graph step|run]
        [--precision int8] [--rounds 8] [--clip physicsworks.flac]

Two transcribers of tiny.en on the CPU; the "before" one builds that graph with the other
checkout's `build_decoder_graph` or `build_token_run_graph` (its other graphs, and the kernels, are
this checkout's). Each round transcribes the
clip once with each, the order alternating, after one untimed transcription each. Separate
processes drift apart by more than a prompt's share of a decode; one process's rounds in turn do
not. Prints the medians, the decodes' ratio round by round, and whether the tokens are the same.
Set `MAXWHISPER_CPU_LEVEL` for another level's code.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import load_audio  # noqa: E402
from maxwhisper.bench.clips import audio_dir  # noqa: E402
from maxwhisper.bench.machine import machine_info  # noqa: E402
from maxwhisper.graph import model  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402

BUILDERS = {"step": "build_decoder_graph", "run": "build_token_run_graph"}


def builder_from(checkout: Path, name: str):
    """`name` of another checkout's decoder.py, its relative imports from this package."""
    spec = importlib.util.spec_from_file_location(
        "maxwhisper.graph.decoder_before", checkout / "maxwhisper" / "graph" / "decoder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--graph", default="step", choices=list(BUILDERS), help="the graph built by either checkout")
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clip", default="physicsworks.flac")
    args = parser.parse_args()

    builder = BUILDERS[args.graph]
    after_build = getattr(model, builder)
    sides = {}
    for name, build in (("after", after_build), ("before", builder_from(args.before, builder))):
        setattr(model, builder, build)
        try:
            sides[name] = create_transcriber("max", "tiny.en", "cpu", args.precision)
            list(sides[name].compile_rest())
        finally:
            setattr(model, builder, after_build)
    audio = load_audio(str(audio_dir() / args.clip))
    for transcriber in sides.values():
        transcriber.transcribe(audio, DecodeOptions())
    runs = {name: [] for name in sides}
    tokens = {}
    for r in range(args.rounds):
        for name in sides if r % 2 == 0 else reversed(sides):
            start = time.perf_counter()
            result = sides[name].transcribe(audio, DecodeOptions())
            runs[name].append((time.perf_counter() - start, result.timings.encode_s, result.timings.decode_s))
            tokens[name] = [t for segment in result.segments for t in segment.tokens]

    machine = machine_info()
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['vector_isa']}; {args.clip}, tiny.en {args.precision}, "
        f"the {args.graph} graph"
    )
    for name, rows in runs.items():
        total, encode, decode = (statistics.median(row[i] for row in rows) for i in range(3))
        decodes = ", ".join(f"{row[2]:.3f}" for row in rows)
        print(f"{name}: median {total:.3f} s (encode {encode:.3f}, decode {decode:.3f}); decodes {decodes}")
    ratios = [a[2] / b[2] for a, b in zip(runs["after"], runs["before"], strict=True)]
    print(f"decode after / before, round by round: {', '.join(f'{x:.3f}' for x in ratios)}")
    same = tokens["after"] == tokens["before"]
    counts = f"{len(tokens['after'])} and {len(tokens['before'])} tokens"
    print(f"median {statistics.median(ratios):.3f}; the same tokens: {same} ({counts})")


if __name__ == "__main__":
    main()
