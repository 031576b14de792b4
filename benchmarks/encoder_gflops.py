"""The MAX encoder's float32 throughput against the CPU's peak, and PyTorch's beside it.

One 30 s window of the lecture through `MaxWhisper.encode` (the encoder graph, which also projects
every decoder layer's cross-attention keys and values) and through openai-whisper's encoder (which
does not: its first decoder step does), their work counted from the model's dimensions, and the
peak measured by `benchmarks/fp32_peak.mojo` on all cores:

    .venv/bin/python benchmarks/encoder_gflops.py [--model tiny.en] [--repeats 9]

Prints one Markdown table row; `benchmarks/results/encoder-gflops.md` keeps one per machine.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baselines.openai_backend import OpenAITranscriber  # noqa: E402
from maxwhisper.audio import load_audio, log_mel_spectrogram  # noqa: E402
from maxwhisper.bench.clips import audio_dir  # noqa: E402
from maxwhisper.bench.machine import machine_info  # noqa: E402
from maxwhisper.checkpoint import ModelDims, load_checkpoint  # noqa: E402
from maxwhisper.graph.model import MaxWhisper  # noqa: E402


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


def fp32_peak_gflops() -> float:
    """The best of fp32_peak.mojo's three runs."""
    mojo = Path(sys.executable).with_name("mojo")
    out = subprocess.run([str(mojo), "run", str(ROOT / "benchmarks" / "fp32_peak.mojo")], capture_output=True,
                         text=True, check=True).stdout
    return max(float(x) for x in re.findall(r"lanes: ([\d.]+) GFLOP/s", out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")
    import torch

    ckpt = load_checkpoint(args.model)
    audio = load_audio(str(audio_dir() / "physicsworks.flac"))[: 30 * 16000]
    mel = log_mel_spectrogram(audio, ckpt.dims.n_mels)[None]
    model = MaxWhisper(ckpt)
    max_s = median_seconds(lambda: model.features_numpy(model.encode(mel)), args.repeats)
    del model
    reference = OpenAITranscriber(args.model)  # all cores, as the benchmark runs it
    with torch.inference_mode():
        torch_s = median_seconds(lambda: reference.net.encoder(torch.from_numpy(mel)), args.repeats)
    max_gflop, torch_gflop, peak = encoder_gflop(ckpt.dims, True), encoder_gflop(ckpt.dims, False), fp32_peak_gflops()
    machine = machine_info()
    print(f"| {machine['cpu']}, {machine['cores']} cores, {machine['vector_isa']} | {args.model} | {peak:.0f} | "
          f"{max_gflop:.1f} | {max_s:.3f} | {max_gflop / max_s:.0f} ({100 * max_gflop / max_s / peak:.0f} %) | "
          f"{torch_gflop:.1f} | {torch_s:.3f} | {torch_gflop / torch_s:.0f} ({100 * torch_gflop / torch_s / peak:.0f} %) |")


if __name__ == "__main__":
    main()
