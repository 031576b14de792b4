"""Where a GPU's time goes, kernel by kernel: two jfk transcriptions under Nsight Compute, summed.

On the GPU machine (the graphs loaded or compiled first, as `gpu_check.py` leaves them):

    ncu --clock-control none --metrics gpu__time_duration.sum --launch-count 2500 --csv \\
        --log-file ncu.csv python3 benchmarks/gpu_kernels.py run
    python3 benchmarks/gpu_kernels.py summary ncu.csv > benchmarks/results/gpu-<gpu>-kernels.md
    gzip -c ncu.csv > benchmarks/results/gpu-<gpu>-kernels.csv.gz

`summary` splits the kernels into the encoder (those before the first decoder step) and the decoder
steps (the launches from the first of the step's most frequent attention kernel, four a step:
one per layer), and lists the
kernels that take the most time in each, with their launch grids. Each kernel is timed alone by
ncu, so the gaps between launches are not in the sums.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(precision: str) -> None:
    from maxwhisper.api import DecodeOptions
    from maxwhisper.audio import load_audio
    from maxwhisper.max_backend import MaxTranscriber

    mx = MaxTranscriber("tiny.en", device="gpu", precision=precision, kernels=False)
    audio = load_audio(ROOT / "tests" / "audio" / "jfk.flac")
    for _ in range(2):
        print(mx.transcribe(audio, DecodeOptions()).text)


def kernels(path: Path) -> list[tuple[str, str, float]]:
    """(name, grid, microseconds) of each launch in an ncu --csv log (gzipped or not), in launch order."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = [line for line in text.splitlines() if line.startswith('"')]
    return [
        (r["Kernel Name"], r["Grid Size"], float(r["Metric Value"].replace(",", "")) / 1e3)
        for r in csv.DictReader(lines)
        if r["Metric Name"] == "gpu__time_duration.sum"
    ]


def table(launches: list[tuple[str, str, float]], per: int, top: int = 12) -> list[str]:
    """The `top` kernels by time, each one's microseconds per `per` (a step, a window) and launches."""
    spent, count, grids = defaultdict(float), Counter(), {}
    for name, grid, us in launches:
        spent[name] += us
        count[name] += 1
        grids[name] = grid
    total = sum(spent.values())
    lines = ["| kernel | grid | launches | µs | share |", "|---|---|---:|---:|---:|"]
    for name, us in sorted(spent.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(
            f"| `{name[:72]}` | {grids[name]} | {count[name] / per:g} | {us / per:.1f} | {100 * us / total:.0f} % |"
        )
    return lines


def summary(path: Path) -> str:
    launches = kernels(path)
    names = [name for name, _, _ in launches]
    matmuls = Counter(n for n in names if "batched_matmul" in n)
    marker = matmuls.most_common(1)[0][0]  # once per decoder layer per step
    marks = [i for i, n in enumerate(names) if n == marker]
    layers = 4  # tiny.en's decoder layers: the marker runs once per layer of a step
    n_steps = (len(marks) - 1) // layers
    first_step = marks[0]
    steps = launches[first_step : marks[n_steps * layers]]
    encoder = launches[:first_step]
    windows = max(sum(1 for n in names[:first_step] if n.startswith("conv2d")) // 2, 1)  # two convolutions a window
    out = [
        "# Kernels of the GPU's graphs (tiny.en, fp32, portable plan)",
        "",
        f"From `{path.name}`: {len(launches)} launches, each timed alone by ncu (`gpu__time_duration.sum`).",
        "",
        f"## Before the first decoder step: the encoder and the first prompt (windows: {windows})",
        "",
        f"{sum(us for *_, us in encoder) / 1e3:.2f} ms in {len(encoder)} launches.",
        "",
        *table(encoder, 1),
        "",
        f"## A decoder step ({n_steps} steps averaged)",
        "",
        f"{sum(us for *_, us in steps) / n_steps:.0f} µs in {len(steps) / n_steps:.0f} launches a step.",
        "",
        *table(steps, n_steps),
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="two jfk transcriptions, what ncu profiles").add_argument("--precision", default="fp32")
    sub.add_parser("summary", help="an ncu --csv log summed").add_argument("csv", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.precision)
    else:
        print(summary(args.csv), end="")


if __name__ == "__main__":
    main()
