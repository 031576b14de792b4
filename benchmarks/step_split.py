"""Where a MAX decode's time goes, down to the parts of one one-token step (tiny.en, the CPU):

    PYTHONPATH=. .venv/bin/python benchmarks/step_split.py [--precisions fp32,int8] [--clip physicsworks.flac] [--runs]

(PYTHONPATH=.: this checkout's maxwhisper, not the one installed in the venv.)

1. The decode: one timed transcription of the clip after an untimed one, each graph call timed
   from Python. Prompts (the generic step graph, and a short prompt's token steps), token
   steps, and the host between calls (the decode's seconds less its graph calls). With --runs the
   model readies every graph first (`compile_rest`), so greedy decoding takes runs of steps (the
   token run graph, docs/design.md#several-steps-a-call): their calls are counted apart.
2. Inside a step: graphs that stop part way through the token step graph, compiled together with it
   and called in turn at one position of the clip's first window (its real cross K/V): the token
   embedding alone (with the call itself), then one and four layers, then the final layer norm and
   the vocabulary projection, then the whole step with the greedy choice. Each part is the
   difference of two medians.
3. The bytes a step reads (layer weights, cross K/V, the self-attention cache, the projection's
   rows), each part's GB/s, and through fp32's and int8's steps (bytes, time) the rate and the
   time that does not scale with the bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections import defaultdict

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from max.graph import Graph, Module  # noqa: E402

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import N_SAMPLES, load_audio, log_mel_spectrogram  # noqa: E402
from maxwhisper.bench.clips import audio_dir  # noqa: E402
from maxwhisper.bench.machine import machine_info  # noqa: E402
from maxwhisper.graph import decoder, model  # noqa: E402
from maxwhisper.graph.compiled import artifact_paths, compile_graph  # noqa: E402
from maxwhisper.graph.inputs import TokenStepInputs  # noqa: E402
from maxwhisper.graph.kernel_package import kernel_library  # noqa: E402
from maxwhisper.graph.layers import (
    WeightBank,
    layer_norm_gather,  # noqa: E402
)
from maxwhisper.registry import create_transcriber  # noqa: E402

POSITION = 150  # the position of the timed steps (tokens already in the cache)
CALLS = 200  # calls of each graph, in turn
PARTS = ("embed", "layer1", "layers", "projection", "step")  # how far each graph goes


def decode_split(net: model.MaxWhisper, transcriber, audio: np.ndarray) -> dict:
    """One transcription's decode seconds split by graph call (see the module's docstring)."""
    calls = defaultdict(list)
    prompt = threading.local()
    run, by_steps = net.run, model.MaxInference._prompt_by_token_steps

    def timed_run(graph, *inputs):
        start = time.perf_counter()
        try:
            return run(graph, *inputs)
        finally:
            kind = (
                "encoder"
                if graph is net.encoder
                else "run"
                if graph is net.graphs.get("token_run")
                else "prompt"
                if graph is not net.token_step or getattr(prompt, "on", False)
                else "step"
            )
            calls[kind].append(time.perf_counter() - start)

    def timed_by_steps(self, *args):
        prompt.on = True
        try:
            return by_steps(self, *args)
        finally:
            prompt.on = False

    transcriber.transcribe(audio, DecodeOptions())  # untimed: lazy graphs compiled, caches warm
    net.run, model.MaxInference._prompt_by_token_steps = timed_run, timed_by_steps
    try:
        result = transcriber.transcribe(audio, DecodeOptions())
    finally:
        del net.run
        model.MaxInference._prompt_by_token_steps = by_steps
    decode_s = result.timings.decode_s
    graph_s = sum(sum(calls[k]) for k in ("prompt", "step", "run"))
    return {
        "decode_s": decode_s,
        "encode_s": result.timings.encode_s,
        "steps": len(calls["step"]),
        "step_s": sum(calls["step"]),
        "step_median_ms": 1e3 * statistics.median(calls["step"] or [0.0]),
        "runs": len(calls["run"]),
        "run_s": sum(calls["run"]),
        "run_median_ms": 1e3 * statistics.median(calls["run"] or [0.0]),
        "calls": len(calls["step"]) + len(calls["run"]),
        "prompts": len(calls["prompt"]),
        "prompt_s": sum(calls["prompt"]),
        "prompt_median_ms": 1e3 * statistics.median(calls["prompt"]),
        "host_s": decode_s - graph_s,
    }


def part_graph(net: model.MaxWhisper, part: str, module: Module, registry: dict) -> Graph:
    """The token step graph (`decoder.build_token_step_graph`, same inputs) up to `part`; its
    weights added to `registry`."""
    w, dims, plan = WeightBank(net.arrays, net.plan.dtype, net.plan.device, net.copies), net.dims, net.plan
    graph = _part_graph(w, dims, plan, part, module)
    registry.update(w.registry())
    return graph


def _part_graph(w: WeightBank, dims, plan, part: str, module: Module) -> Graph:
    if part == "step":
        return decoder.build_token_step_graph(w, dims, plan, module)
    types = TokenStepInputs.types(dims, w.dtype, w.device, plan.cross_int8)
    with Graph(
        f"step_to_{part}", input_types=types.flat(), custom_extensions=[kernel_library()], module=module
    ) as graph:
        inputs = types.like(graph.inputs)
        tokens, positions, cross_keys, rows = (
            v.tensor for v in (inputs.tokens, inputs.positions, inputs.cross_keys, inputs.rows)
        )
        cross = [v.tensor for v in inputs.cross]
        caches = [v.buffer for v in inputs.caches]
        layers = {"embed": 0, "layer1": 1}.get(part)  # None: all of them
        x = decoder.kernel_token_layers(w, dims, plan, tokens, positions, cross_keys, cross, caches, layers=layers)
        if part == "projection":
            x = decoder.projection_linear(plan)(w, "decoder.token_embedding")(
                layer_norm_gather(w, "decoder.ln", x, rows)
            )
        graph.output(x)
    return graph


def step_parts(net: model.MaxWhisper, audio: np.ndarray) -> dict[str, float]:
    """Median ms of each part graph at POSITION of the first window (see the module's docstring)."""
    module, registry = Module(), {}
    graphs = [part_graph(net, part, module, registry) for part in PARTS]
    compiled = compile_graph(net.session, module, artifact_paths(graphs))
    loaded = net.session.init_all(compiled, weights_registry=registry)
    mel = log_mel_spectrogram(audio[:N_SAMPLES], net.dims.n_mels, padding=N_SAMPLES)[:, :3000]
    features = net.encode(mel[None])
    inference = net.inference()
    inference._setup(1, features)
    suppress = np.zeros((1, net.dims.n_vocab), np.float32)
    inputs = [
        np.array([[440]], np.int64),
        np.array([POSITION], np.int64),
        inference._cross_keys(1),
        np.array([0], np.int64),
        suppress,
        np.array([net.dims.n_vocab - 1501], np.int64),
    ]
    args = [*(net.to_device(a) for a in inputs), *inference.cross, *inference.cache]
    times = defaultdict(list)
    for call in range(CALLS + 1):
        for graph in graphs:
            start = time.perf_counter()
            loaded[graph.name].execute(*args)
            if call:
                times[graph.name].append(time.perf_counter() - start)
    return {part: 1e3 * statistics.median(times[graph.name]) for part, graph in zip(PARTS, graphs)}


def step_bytes(net: model.MaxWhisper) -> dict[str, float]:
    """MB one step reads at POSITION: per layer op its weights and vectors, its cross K/V (and
    scales) and its self-attention cache's filled part; the projection's rows (int8: the 4-bit copy
    and its scales; the few int8 rows of the second pass left out)."""
    d, L, v = net.dims.n_text_state, net.dims.n_text_layer, net.dims.n_vocab
    t, int8, cross_int8 = net.dims.n_audio_ctx, net.plan.int8, net.plan.cross_int8
    layer = 14 * d * d * (1 if int8 else 2) + (28 if int8 else 17) * d * 4
    layer += 2 * t * d * (1 if cross_int8 else 4) + (2 * net.dims.n_text_head * t * 4 if cross_int8 else 0)
    layer += 2 * POSITION * d * 4
    projection = v * d // 2 + v * d // 64 * 4 if int8 else v * d * 2
    return {"layer": layer / 1e6, "projection": projection / 1e6, "step": (L * layer + projection) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--clip", default="physicsworks.flac")
    parser.add_argument("--runs", action="store_true", help="ready the token run graph first: greedy runs")
    args = parser.parse_args()
    audio = load_audio(str(audio_dir() / args.clip))
    info = machine_info()
    print(
        f"CPU: {info.get('cpu')} ({info.get('cpu_family_model')}), {info.get('vector_isa')}, {info.get('cores')} "
        f"cores; {args.clip}, tiny.en, steps at position {POSITION}, {CALLS} calls of each graph"
    )
    steps = {}
    for precision in args.precisions.split(","):
        transcriber = create_transcriber("max", "tiny.en", "cpu", precision)
        net = transcriber.net
        if args.runs:
            list(transcriber.compile_rest())
        split = decode_split(net, transcriber, audio)
        parts = step_parts(net, audio)
        mb = step_bytes(net)
        print(f"\n## {precision}\n")
        print(
            f"decode {split['decode_s']:.3f} s (encode {split['encode_s']:.3f} s apart): "
            f"{split['steps']} token steps {split['step_s']:.3f} s (median {split['step_median_ms']:.3f} ms), "
            + (
                f"{split['runs']} runs {split['run_s']:.3f} s (median {split['run_median_ms']:.2f} ms), "
                if split["runs"]
                else ""
            )
            + f"{split['prompts']} prompt calls {split['prompt_s']:.3f} s (median {split['prompt_median_ms']:.2f} ms), "
            f"host between calls {split['host_s']:.3f} s ({1e3 * split['host_s'] / max(split['calls'], 1):.3f} ms "
            "per step or run call)"
        )
        step = parts["step"]
        layer = (parts["layers"] - parts["layer1"]) / (net.dims.n_text_layer - 1)
        rows = [
            ("call + token embedding", parts["embed"], None),
            ("one layer op (each)", layer, mb["layer"]),
            (f"{net.dims.n_text_layer} layer ops", parts["layers"] - parts["embed"], None),
            ("final LN + vocab projection", parts["projection"] - parts["layers"], mb["projection"]),
            ("greedy choice", step - parts["projection"], None),
        ]
        print(f"\none step {step:.3f} ms, {mb['step']:.1f} MB read ({mb['step'] / step:.1f} GB/s):")
        for name, ms, read in rows:
            rate = f"  {read:5.1f} MB, {read / ms:5.1f} GB/s" if read else ""
            print(f"  {name:28s} {ms:7.3f} ms  {100 * ms / step:5.1f} %{rate}")
        steps[precision] = (mb["step"], step, 1e3 * split["host_s"] / max(split["calls"], 1))
    if len(steps) == 2 and not args.runs:  # a step's ms = fixed + MB / rate through both precisions' points
        (mb_a, ms_a, host_a), (mb_b, ms_b, host_b) = steps.values()
        per_mb = (ms_a - ms_b) / (mb_a - mb_b)
        fixed = ms_a - mb_a * per_mb
        print(
            f"\nthrough both precisions' steps: {1 / per_mb:.1f} GB/s and {fixed:.3f} ms that does not scale "
            f"with the bytes; with the host between calls {fixed + host_a:.3f} ({', '.join(steps)}: host "
            f"{host_a:.3f}, {host_b:.3f} ms)"
        )


if __name__ == "__main__":
    main()
