"""Where a GPU's time goes, kernel by kernel: two jfk transcriptions under Nsight Compute, summed.

On the GPU machine (the graphs loaded or compiled first, as `gpu_check.py` leaves them):

    ncu --clock-control none --metrics gpu__time_duration.sum --launch-count 2500 --csv \\
        --log-file ncu.csv python3 benchmarks/gpu_kernels.py run
    python3 benchmarks/gpu_kernels.py summary ncu.csv --about "GPU, driver, MAX" \\
        > benchmarks/results/gpu-<gpu>-kernels.md
    gzip -c ncu.csv > benchmarks/results/gpu-<gpu>-kernels.csv.gz

`summary` splits the kernels into those up to the first step's output projection (jfk's one
encoder window, the prompt, the first step) and the decoder steps (from one launch of the output
projection, the widest matrix-vector product, to the next, leaving out the spans that hold an
encoder call or a prompt), and lists the kernels that take the most time in each, with their launch
grids. Each kernel is timed alone by ncu, so the gaps between launches are not in the sums.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import statistics
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
    """The `top` kernels by time, by name and grid: microseconds and launches per `per` (a step, a window)."""
    spent, count = defaultdict(float), Counter()
    for name, grid, us in launches:
        spent[name, grid] += us
        count[name, grid] += 1
    total = sum(spent.values())
    lines = ["| kernel | grid | launches | µs | share |", "|---|---|---:|---:|---:|"]
    for (name, grid), us in sorted(spent.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(
            f"| `{name[:72]}` | {grid} | {count[name, grid] / per:g} | {us / per:.1f} | {100 * us / total:.0f} % |"
        )
    return lines


def summary(path: Path, about: str = "") -> str:
    launches = kernels(path)

    def width(grid: str) -> int:
        return int(grid.strip("()").split(",")[0])

    # the output projection: the widest matrix-vector product, once a step
    widest = max((grid for name, grid, _ in launches if "gemv" in name), key=width)
    marks = [i for i, (name, grid, _) in enumerate(launches) if "gemv" in name and grid == widest]
    spans = list(zip(marks, marks[1:]))
    usual = statistics.median(b - a for a, b in spans)
    spans = [(a, b) for a, b in spans if b - a <= 1.5 * usual]  # not those with an encoder call or a prompt
    steps = [launch for a, b in spans for launch in launches[a:b]]
    n_steps = len(spans)
    first_step = marks[0]
    encoder = launches[:first_step]
    out = [
        "# Kernels of the GPU's graphs (tiny.en, fp32, portable plan)",
        "",
        *([about, ""] if about else []),
        f"From `{path.name}`: {len(launches)} launches, each timed alone by ncu (`gpu__time_duration.sum`).",
        "",
        "## Up to the first step's output projection: the encoder, the prompt, a step (one window)",
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
    summed = sub.add_parser("summary", help="an ncu --csv log summed")
    summed.add_argument("csv", type=Path)
    summed.add_argument("--about", default="", help="a line under the title: the GPU, its driver, the code")
    args = parser.parse_args()
    if args.command == "run":
        run(args.precision)
    else:
        print(summary(args.csv, args.about), end="")


if __name__ == "__main__":
    main()
