"""Greedy decoding one step a graph call against runs of several steps a call (the token run
graph, docs/design.md#several-steps-a-call): the same model, the two ways interleaved. With
--drafts, fp32's runs drafted through the exact layers against drafts through their int8 copies
(`ExecutionPlan.int8_drafts`, docs/design.md#drafted-runs): two models, in turn. With
--int16-attention, int8's encoder attention in float32 against 16-bit integers
(`ExecutionPlan.encoder_attention_int16`, docs/design.md#int8-on-the-cpu): two models, in turn.

    PYTHONPATH=. .venv/bin/python benchmarks/steps_per_call.py [--precision int8] [--steps 8]
        [--device cpu] [--no-kernels] [--drafts | --int16-attention] [--rounds 3] [--clip physicsworks.flac]

One untimed transcription each way, then `--rounds` rounds of one timed transcription each way;
prints the machine, each way's seconds and median (with --drafts also its run calls' median), each
round's ratio, and whether the two give the same tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--drafts", action="store_true", help="fp32's runs: exact drafts against int8 drafts")
    parser.add_argument(
        "--int16-attention", action="store_true", help="int8's encoder attention: float32 against int16"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip", default="physicsworks.flac")
    args = parser.parse_args()
    os.environ["MAXWHISPER_STEPS_PER_CALL"] = str(args.steps)

    from maxwhisper.api import DecodeOptions
    from maxwhisper.audio import load_audio
    from maxwhisper.bench.clips import audio_dir
    from maxwhisper.bench.machine import machine_info
    from maxwhisper.graph.model import MaxChoosingInference
    from maxwhisper.max_backend import MaxTranscriber

    m = machine_info()
    print(f"{m['cpu']} ({m['vector_isa']}, {m['cores']} cores); {args.clip}, tiny.en")

    def model_for(**plan_fields: bool) -> MaxTranscriber:
        model = MaxTranscriber("tiny.en", device=args.device, precision=args.precision, kernels=not args.no_kernels)
        if plan_fields:
            model.net.plan = dataclasses.replace(model.net.plan, **plan_fields)
            model.net.graphs["encoder"] = model.net.built_and_loaded("encoder")[0]  # built with the plan's fields
        start = time.perf_counter()
        list(model.net.compile_rest())
        print(f"{model.net.plan.describe()}; its graphs compiled or loaded in {time.perf_counter() - start:.1f} s")
        return model

    if args.drafts:  # (model, runs) each way
        ways = {
            "exact drafts": (model_for(int8_drafts=False), True),
            "int8 drafts": (model_for(int8_drafts=True), True),
        }
    elif args.int16_attention:
        if args.precision != "int8":
            parser.error("--int16-attention compares int8's encoder attention: use --precision int8")
        ways = {  # bfloat16's attention off both ways, where the host would pick it
            "float32 attention": (model_for(encoder_attention_int16=False, encoder_attention_bf16=False), True),
            "int16 attention": (model_for(encoder_attention_int16=True, encoder_attention_bf16=False), True),
        }
    else:
        model = model_for()
        ways = {"one step a call": (model, False), f"{args.steps} steps a call": (model, True)}
    audio = load_audio(audio_dir() / args.clip)
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    run_calls: dict[str, list[float]] = {way: [] for way in ways}
    tokens = {}
    run = MaxChoosingInference._run

    for round_ in range(args.rounds + 1):
        for way, (model, runs) in ways.items():

            def timed_run(self, inputs, way=way):
                start = time.perf_counter()
                out = run(self, inputs)
                run_calls[way].append(time.perf_counter() - start)
                return out

            MaxChoosingInference._run = timed_run
            model.net.runs = runs
            start = time.perf_counter()
            tokens[way] = tuple(model.transcribe(audio, DecodeOptions()).tokens)
            if round_:  # the first round warms up
                seconds[way].append(time.perf_counter() - start)
            else:
                run_calls[way].clear()
    for way, times in seconds.items():
        calls = f"; run calls median {statistics.median(run_calls[way]) * 1000:.2f} ms" if run_calls[way] else ""
        print(f"{way}: median {statistics.median(times):.3f} s of {[round(t, 3) for t in times]}{calls}")
    first, second = seconds.values()
    print(f"{' against '.join(reversed(ways))}, round by round:", [round(b / a, 3) for a, b in zip(first, second)])
    print("the same tokens:", len(set(tokens.values())) == 1, f"({len(next(iter(tokens.values())))} tokens)")


if __name__ == "__main__":
    main()
