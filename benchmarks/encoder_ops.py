"""Where a MAX encoder window's time goes, op by op (the CPU kernels' plan).

Each op of the encoder graph (`graph/encoder.py`) runs alone as a one-op graph over the model's own
weights and activations of a 30 s window's shapes (random values of the encoder's scale), median of
`--repeats` calls after one; an op's share counts it as often as one window runs it. The whole
encoder graph runs beside them, so the sum of the ops can be compared with the window it splits:
each repeat calls every op and the whole graph once, in turn, so that the machine's drift over
minutes falls on all of them alike.
Where the plan's attention is not float32's (int8's in bfloat16 or in 16-bit integers), the
attention and the whole graph run with float32's attention too, in turn with the plan's:

    PYTHONPATH=. .venv/bin/python benchmarks/encoder_ops.py [--model tiny.en] [--precision int8|fp32|bf16]
        [--repeats 21]

Prints a Markdown table; `benchmarks/results/encoder-gflops.md` keeps the splits.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np
from encoder_gflops import arguments
from max import driver
from max.dtype import DType
from max.graph import Graph, TensorType

from maxwhisper.audio import N_FRAMES
from maxwhisper.bench.machine import machine_info
from maxwhisper.checkpoint import load_checkpoint
from maxwhisper.graph.encoder import encoder_linear, extensions
from maxwhisper.graph.layers import WeightBank, conv_stem_kernel, cross_layout_kernel, encoder_attention
from maxwhisper.graph.model import MaxWhisper


def ops_of_a_window(model: MaxWhisper) -> tuple[list[tuple[str, int, list[TensorType], Callable]], WeightBank]:
    """(name, times per window, input types, build) for each distinct op of the encoder graph, and
    the weights they use."""
    dims, plan = model.dims, model.plan
    w = WeightBank(model.arrays, model.dtype, model.device_ref, model.copies)
    t, d, layers = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_layer
    linear = encoder_linear(plan)

    def rows(width: int) -> TensorType:
        return TensorType(DType.float32, [1, t, width], device=model.device_ref)

    p = "encoder.blocks.0"
    return [
        (
            "conv stem",
            1,
            [TensorType(DType.float32, [1, dims.n_mels, N_FRAMES], device=model.device_ref)],
            lambda mel: conv_stem_kernel(w, mel),
        ),
        ("layer norm", 2 * layers + 1, [rows(d)], lambda x: plan.layer_norm(w, f"{p}.attn_ln", x)),
        ("qkv linear", layers, [rows(d)], lambda x: linear(w, f"{p}.attn.qkv")(x)),
        (
            "attention",
            layers,
            [rows(3 * d)],
            lambda qkv: encoder_attention(
                qkv,
                dims.n_audio_head,
                bf16=plan.encoder_attention_bf16,
                amx=plan.amx_tiles,
                int16=plan.encoder_attention_int16,
            ),
        ),
        ("attention out linear + residual", layers, [rows(d), rows(d)], lambda x, r: linear(w, f"{p}.attn.out")(x, r)),
        ("MLP up linear + GELU", layers, [rows(d)], lambda x: linear(w, f"{p}.mlp.0", gelu=True)(x)),
        ("MLP down linear + residual", layers, [rows(4 * d), rows(d)], lambda x, r: linear(w, f"{p}.mlp.2")(x, r)),
        ("cross K/V linear", 1, [rows(d)], lambda x: linear(w, "decoder.cross_kv")(x)),
        (
            "cross K/V layout",
            1,
            [rows(2 * dims.n_text_state * dims.n_text_layer)],
            lambda kv: cross_layout_kernel(kv, dims.n_text_layer, dims.n_text_head, plan.cross_int8),
        ),
    ], w


def main() -> None:
    args = arguments(__doc__, "int8", 21)

    model = MaxWhisper(load_checkpoint(args.model), precision=args.precision)
    plan = model.plan
    float32 = dataclasses.replace(plan, encoder_attention_bf16=False, encoder_attention_int16=False)
    ops, w = ops_of_a_window(model)
    if float32 != plan:  # the plan's attention beside float32's
        model.plan = float32
        _, _, types, build = next(op for op in ops_of_a_window(model)[0] if op[0] == "attention")
        ops.insert(4, ("attention, float32", 0, types, build))
    rng = np.random.default_rng(0)
    calls = {}  # name -> (count, a call of it)
    for i, (name, count, types, build) in enumerate(ops):
        with Graph(f"encoder_op_{i}", input_types=types, custom_extensions=extensions(plan)) as graph:
            out = build(*(v.tensor for v in graph.inputs))
            graph.output(*(out if isinstance(out, list) else [out]))
        compiled = model.session.load(graph, weights_registry=w.registry())
        inputs = [driver.Buffer.from_numpy(rng.standard_normal(t.shape.static_dims, dtype=np.float32)) for t in types]
        calls[name] = (count, functools.partial(compiled.execute, *inputs))
    mel = driver.Buffer.from_numpy(rng.standard_normal((1, model.dims.n_mels, N_FRAMES), dtype=np.float32))
    windows = {"": plan} if float32 == plan else {"": plan, ", float32 attention": float32}
    whole = {}
    for label, p in windows.items():
        model.plan = p
        whole[f"the encoder graph, whole{label}"] = functools.partial(model.built_and_loaded("encoder")[0].execute, mel)
    model.plan = plan
    runs = {name: call for name, (_, call) in calls.items()} | whole
    seconds = {name: [] for name in runs}
    for _ in range(args.repeats + 1):  # the first call of each is not counted
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    timed = [(name, count, statistics.median(seconds[name][1:])) for name, (count, _) in calls.items()]
    window = {name: statistics.median(seconds[name][1:]) for name in whole}

    layers = model.dims.n_audio_layer
    machine = machine_info()
    total = sum(count * s for _, count, s in timed)  # the float32 attention beside the plan's counts 0 times
    print(f"{machine['cpu']}, {machine['cores']} cores, {machine['vector_isa']}; {args.model} {args.precision}\n")
    print("| op | per window | ms each | ms per window | share of the ops' sum |\n|---|---:|---:|---:|---:|")
    for name, count, s in timed:
        if count:
            print(f"| {name} | {count} | {1e3 * s:.2f} | {1e3 * count * s:.1f} | {100 * count * s / total:.0f} % |")
        else:  # beside the plan's, not in the sum
            print(f"| {name} | – | {1e3 * s:.2f} | ({1e3 * layers * s:.1f}) | – |")
    print(f"| sum of the ops | | | {1e3 * total:.1f} | |")
    for name, s in window.items():
        print(f"| {name} | 1 | | {1e3 * s:.1f} | |")


if __name__ == "__main__":
    main()
