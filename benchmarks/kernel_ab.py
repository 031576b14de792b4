"""Kernel ops from one or more compiled kernel packages, in turn in one process: a kernel
change's effect on its op, which whole transcriptions on a shared machine cannot show (their spread
is larger than a few % of the encoder), or two ways of one op.

    PYTHONPATH=. .venv/bin/python benchmarks/kernel_ab.py PACKAGE [PACKAGE ...] [--op encoder-int16[,OP ...]]
        [--rounds 9] [--calls 11]

A PACKAGE is a compiled `kernels_*.mojoc`: a revision's shipped one (`maxwhisper/graph/prebuilt/`),
or the one `kernel_package.kernel_library()` compiles into MAX's cache for a checkout. The ops, over
random activations of tiny.en's shapes (6 heads of 64 dims):
- encoder-int16, encoder-bf16, encoder-float32: `encoder_attention` of a 30 s window (1500 frames),
  int8's 16-bit integer path, its bfloat16 one (an AVX512_BF16 CPU) or the float32 one;
- prompt-int8, prompt-int8-int16: `cross_attention_int8` of a 200-token prompt over a window's int8
  keys and values, widened to float32 or through `vpmaddwd` (`int16`);
- mlp-up-int8, mlp-down-int8: `packed_linear_int8` over a window's 1500 rows, the MLP's first
  linear (384 -> 1536, GELU) or its second (1536 -> 384, the residual added);
- mlp-up-float32: `packed_linear`, float32, the MLP's first linear with its GELU.
Each round calls each package's ops `--calls` times in turn; prints each round's median per
package and op, their medians, and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from max import driver  # noqa: E402
from max.dtype import DType  # noqa: E402
from max.engine import InferenceSession  # noqa: E402
from max.graph import DeviceRef, Graph, TensorType  # noqa: E402

from maxwhisper.bench.machine import machine_info  # noqa: E402
from maxwhisper.graph.kernel_package import cpu_target  # noqa: E402
from maxwhisper.graph.layers import (  # noqa: E402
    WeightBank,
    cross_attention_int8,
    encoder_attention,
    packed_linear,
    packed_linear_int8,
)

HEADS, DH, FRAMES, PROMPT = 6, 64, 1500, 200
OPS = [
    "encoder-int16",
    "encoder-bf16",
    "encoder-float32",
    "prompt-int8",
    "prompt-int8-int16",
    "mlp-up-int8",
    "mlp-down-int8",
    "mlp-up-float32",
]


def op_inputs(op: str, rng: np.random.Generator) -> tuple[list[np.ndarray], object]:
    """The op's input arrays, and a function that gives a builder of the op from the graph's inputs
    and a function of the weights it loads with, once built (a graph's weights are its own: one call
    per graph)."""
    if op.startswith("encoder-"):
        qkv = (rng.standard_normal((1, FRAMES, 3 * HEADS * DH)) * 1.5).astype(np.float32)
        kind = {"bf16": op == "encoder-bf16", "int16": op == "encoder-int16"}
        return [qkv], lambda: (lambda x: encoder_attention(x, HEADS, **kind), dict)
    if op.startswith("mlp-"):
        d = HEADS * DH
        up = op.startswith("mlp-up-")
        k, n = (d, 4 * d) if up else (4 * d, d)
        weights = {
            "lin.weight_t": (rng.standard_normal((k, n)) * 0.05).astype(np.float32),
            "lin.bias": rng.standard_normal(n).astype(np.float32),
        }
        x = rng.standard_normal((FRAMES, k)).astype(np.float32)
        residual = [] if up else [rng.standard_normal((FRAMES, n)).astype(np.float32)]
        linear = packed_linear if op.endswith("-float32") else packed_linear_int8

        def builder():
            w = WeightBank(weights, DType.float32, DeviceRef.CPU())
            return lambda x, *r: linear(w, "lin", gelu=not r)(x, *r), w.registry

        return [x, *residual], builder
    q = rng.standard_normal((1, HEADS, PROMPT, DH)).astype(np.float32)
    k = rng.integers(-127, 128, (1, HEADS, FRAMES, DH), dtype=np.int8)
    v_t = rng.integers(-127, 128, (1, HEADS, DH, FRAMES), dtype=np.int8)
    k_scales, v_scales = (rng.uniform(0.001, 0.03, (1, HEADS, FRAMES)).astype(np.float32) for _ in range(2))
    int16 = op == "prompt-int8-int16"
    return [q, k, v_t, k_scales, v_scales], lambda: (lambda *x: cross_attention_int8(*x, int16=int16), dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--op", default="encoder-int16", help=f"one or more of {', '.join(OPS)}, comma-separated")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=11)
    args = parser.parse_args()
    names = args.op.split(",")
    if not set(names) <= set(OPS):
        parser.error(f"--op takes {', '.join(OPS)}")
    if not all(p.is_file() for p in args.packages) or len(args.packages) * len(names) < 2:
        parser.error("give compiled kernel packages (kernels_*.mojoc files): two or more, or one with two ops")
    cpu_target()  # the CPU target the packages were compiled for, as the model sets it
    made = [op_inputs(name, np.random.default_rng(0)) for name in names]
    arrays = made[0][0]
    if any([a.shape for a in other] != [a.shape for a in arrays] for other, _ in made):
        parser.error("the ops compared take different inputs")
    cpu = DeviceRef.CPU()
    types = [TensorType(DType.from_numpy(a.dtype), a.shape, device=cpu) for a in arrays]
    labels, ops = [], []
    for package in args.packages:
        for name, (_, builder) in zip(names, made):
            build, registry = builder()
            with Graph(f"kernel_ab_{len(ops)}", input_types=types, custom_extensions=[package]) as graph:
                graph.output(build(*(v.tensor for v in graph.inputs)))
            ops.append(InferenceSession(devices=[driver.CPU()]).load(graph, weights_registry=registry()))
            labels.append(f"{package.name} {name}")
    inputs = [driver.Buffer.from_numpy(a) for a in arrays]
    outputs = [op.execute(*inputs)[0].to_numpy() for op in ops]

    m = machine_info()
    print(f"{m['cpu']} ({m['vector_isa']}, {m['cores']} cores); ms per call")
    rounds: list[list[float]] = [[] for _ in ops]
    for _ in range(args.rounds):
        for op, times in zip(ops, rounds):
            calls = []
            for _ in range(args.calls):
                start = time.perf_counter()
                op.execute(*inputs)
                calls.append(time.perf_counter() - start)
            times.append(statistics.median(calls) * 1000)
    for label, times in zip(labels, rounds):
        print(f"{label}: median {statistics.median(times):.2f} of {[round(t, 1) for t in times]}")
    for label, times in zip(labels[1:], rounds[1:]):
        ratios = [round(b / a, 3) for a, b in zip(rounds[0], times)]
        print(f"{label} against {labels[0]}, round by round:", ratios)
    largest = max(float(np.abs(out - outputs[0]).max()) for out in outputs)
    print(f"largest difference from {labels[0]}'s output:", largest)


if __name__ == "__main__":
    main()
