"""The MAX encoder's throughput against the CPU's peak, and a reference implementation's beside it.

One 30 s window of the lecture through `MaxWhisper.encode` (the encoder graph, which also projects
every decoder layer's cross-attention keys and values) and through the reference's encoder (which
does not: its first decoder step does), their work counted from the model's dimensions, and the
peak measured by `benchmarks/peak.mojo` on all cores. fp32: MAX fp32 against openai-whisper's
encoder (PyTorch) and the float32 FMA peak; int8: MAX int8 against faster-whisper int8's encoder
(CTranslate2) and the int8 dot-product peak (both run their attention in float32: a third of the
window's operations); bf16 (a CPU with AVX512_BF16): MAX bf16 against openai-whisper's encoder under
PyTorch's CPU autocast to bfloat16 and the `vdpbf16ps` peak:

    .venv/bin/python benchmarks/encoder_gflops.py [--model tiny.en] [--precision fp32|int8|bf16] [--repeats 9]

Prints one Markdown table row; `benchmarks/results/encoder-gflops.md` keeps one per machine and precision.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from maxwhisper_baselines.openai_backend import OpenAITranscriber

from maxwhisper.audio import load_audio, log_mel_spectrogram
from maxwhisper.bench.clips import audio_dir
from maxwhisper.bench.machine import machine_info
from maxwhisper.checkpoint import ModelDims, load_checkpoint
from maxwhisper.graph.model import MaxWhisper

ROOT = Path(__file__).resolve().parents[1]


def encoder_gflop(dims: ModelDims, cross_kv: bool) -> float:
    """Multiply-adds x 2 of one window: the conv stem, the attention blocks, the cross K/V if asked."""
    t, d, frames = dims.n_audio_ctx, dims.n_audio_state, 2 * dims.n_audio_ctx
    stem = 2 * 3 * (frames * dims.n_mels * d + t * d * d)  # kernel-3 convolutions, the second with stride 2
    block = 2 * t * (4 * d * d + 2 * d * 4 * d) + 2 * 2 * t * t * d  # qkv + out, MLP; scores and p @ v
    kv = 2 * 2 * t * d * dims.n_text_state * dims.n_text_layer if cross_kv else 0
    return (stem + dims.n_audio_layer * block + kv) / 1e9


def median_seconds(run, repeats: int) -> float:
    """The median of `repeats` timed calls after one untimed."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gops(precision: str) -> float:
    """The best of peak.mojo's three runs for `precision`."""
    mojo = Path(sys.executable).with_name("mojo")
    out = subprocess.run(
        [str(mojo), "run", "-I", str(ROOT / "maxwhisper" / "graph"), str(ROOT / "benchmarks" / "peak.mojo")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return max(float(x) for x in re.findall(rf"^{precision}: ([\d.]+) GOP/s", out, re.MULTILINE))


def arguments(doc: str, precision: str, repeats: int) -> argparse.Namespace:
    """The encoder benchmarks' command line: --model, --precision, --repeats (their defaults given)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--precision", default=precision, choices=["fp32", "int8", "bf16"])
    parser.add_argument("--repeats", type=int, default=repeats)
    os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")
    return parser.parse_args()


def max_encoder_seconds(ckpt, precision: str, mel, repeats: int) -> float:
    net = MaxWhisper(ckpt, precision=precision)
    return median_seconds(lambda: net.features_numpy(net.encode(mel)), repeats)


def main() -> None:
    args = arguments(__doc__, "fp32", 9)

    ckpt = load_checkpoint(args.model)
    audio = load_audio(str(audio_dir() / "physicsworks.flac"))[: 30 * 16000]
    mel = log_mel_spectrogram(audio, ckpt.dims.n_mels)[None]
    max_s = max_encoder_seconds(ckpt, args.precision, mel, args.repeats)  # the model freed before the reference
    if args.precision in ("fp32", "bf16"):
        import torch

        reference = OpenAITranscriber(args.model)  # all cores, as the benchmark runs it
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            ref_s = median_seconds(lambda: reference.net.encoder(torch.from_numpy(mel)), args.repeats)
    else:
        from maxwhisper_baselines.faster_backend import FasterTranscriber

        faster = FasterTranscriber(args.model, device="cpu", precision="int8", threads=os.cpu_count())
        ref_s = median_seconds(lambda: faster.whisper.encode(mel[0]), args.repeats)
    max_gflop, ref_gflop = encoder_gflop(ckpt.dims, True), encoder_gflop(ckpt.dims, False)
    peak = peak_gops(args.precision)
    machine = machine_info()
    print(
        f"| {machine['cpu']}, {machine['cores']} cores, {machine['vector_isa']} | {args.model} | {peak:.0f} | "
        f"{max_gflop:.1f} | {max_s:.3f} | {max_gflop / max_s:.0f} ({100 * max_gflop / max_s / peak:.0f} %) | "
        f"{ref_gflop:.1f} | {ref_s:.3f} | {ref_gflop / ref_s:.0f} ({100 * ref_gflop / ref_s / peak:.0f} %) |"
    )


if __name__ == "__main__":
    main()
