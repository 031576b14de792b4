"""MAX's start on a new machine: `python -m maxwhisper transcribe CLIP` timed whole, as a new user
runs it, first with an empty compile cache (a new `MODULAR_CACHE_DIR`: MAX's compile cache, the
Mojo kernel package and the exported graphs all live there), then again with the cache that run
left (the warm start). With `--prebuilt LEVEL`, a third start: on a cache that `maxwhisper warm
--cpu-level LEVEL` built (as an image's build step would, on whatever machine), its build timed too.
Beside them, MAX's floor: a process that compiles a graph of one reshape on an empty cache, the least
any first compile costs on this machine (docs/design.md#start-up).

    .venv/bin/python benchmarks/cold_start.py [--checkout LABEL=PATH ...] [--precisions fp32]
        [--prebuilt x86-64-v3] [--rounds 1] [--audio tests/audio/jfk.flac] [--out benchmarks/results]

Each checkout (default: this one, labelled "this") runs with its own code from its folder, so a
change can be compared with the code before it. Per run: wall seconds, CPU seconds (the child's
user + system) and the transcript. Writes benchmarks/results/cold-start-<device tag>-tiny.en.json
and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maxwhisper.bench.machine import device_tag, machine_info, versions  # noqa: E402


def timed_transcribe(checkout: Path, audio: Path, precision: str, cache: Path) -> dict:
    """One `transcribe` process in `checkout` with `cache` as its compile cache."""
    return timed_maxwhisper(checkout, cache, "transcribe", str(audio), "--backend", "max", "--precision", precision)


def timed_maxwhisper(checkout: Path, cache: Path, *args: str) -> dict:
    """One `python -m maxwhisper ARGS` process in `checkout` with `cache` as its compile cache."""
    return timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "maxwhisper", *args],
            cwd=checkout,
            env=cache_env(cache),
            capture_output=True,
            text=True,
            check=False,
        ),
        f"{args[0]} in {checkout}",
    )


def cache_env(cache: Path) -> dict:
    """This process's environment with `cache` as MAX's compile cache."""
    return {**os.environ, "MODULAR_CACHE_DIR": str(cache), "MODULAR_TELEMETRY_ENABLED": "0"}


@contextlib.contextmanager
def empty_cache() -> Iterator[Path]:
    """A new empty folder for a compile cache, removed afterwards."""
    cache = Path(tempfile.mkdtemp(prefix="cold-start-"))
    try:
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# a graph of one reshape compiled on an empty cache: what MAX's compile costs whatever the graph
FLOOR = """
from max import driver
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, ops
with Graph("floor", input_types=[TensorType(DType.float32, [4], DeviceRef.CPU())]) as graph:
    graph.output(ops.reshape(graph.inputs[0], [2, 2]))
InferenceSession(devices=[driver.CPU()]).load(graph)
"""


def timed_floor() -> dict:
    """One process compiling `FLOOR` with a new empty cache."""
    with empty_cache() as cache:
        return timed(
            lambda: subprocess.run(
                [sys.executable, "-c", FLOOR], env=cache_env(cache), capture_output=True, text=True, check=False
            ),
            "MAX's floor",
        )


def timed(run, what: str) -> dict:
    """Wall and CPU seconds of `run` (a child process), its standard output as text."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = run()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "text": done.stdout.strip()}


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {value!r}")
    return int(value)


def starts(checkout: Path, audio: Path, precision: str, prebuilt: str | None) -> dict:
    """A cold start and a warm one of `checkout`'s code; with `prebuilt`, a cache built for that level
    and a start on it."""
    times = {}
    with empty_cache() as cache:
        times["cold"] = timed_transcribe(checkout, audio, precision, cache)
        times["warm"] = timed_transcribe(checkout, audio, precision, cache)
    if prebuilt:
        with empty_cache() as cache:
            times["build"] = timed_maxwhisper(
                checkout, cache, "warm", "--cpu-level", prebuilt, "--device", "cpu", "--precision", precision
            )
            times["prebuilt"] = timed_transcribe(checkout, audio, precision, cache)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a checkout whose code runs, labelled (default: this=this checkout)",
    )
    parser.add_argument("--precisions", default="fp32", help="comma-separated (default: fp32)")
    parser.add_argument("--prebuilt", metavar="LEVEL", help="also start on a cache `warm --cpu-level LEVEL` built")
    parser.add_argument(
        "--rounds",
        type=positive,
        default=1,
        help="every checkout and precision in turn, this many times (a machine's speed drifts)",
    )
    parser.add_argument("--audio", type=Path, default=ROOT / "tests" / "audio" / "jfk.flac")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    checkouts = dict(c.split("=", 1) for c in args.checkout) or {"this": str(ROOT)}
    machine = machine_info()
    floor = timed_floor()
    print(f"MAX's floor: {floor['wall_s']} s ({floor['cpu_s']} CPU s)", flush=True)
    runs = []
    for round_ in range(1, args.rounds + 1):
        for label, path in checkouts.items():
            for precision in args.precisions.split(","):
                runs.append(
                    {
                        "round": round_,
                        "checkout": label,
                        "precision": precision,
                        **starts(Path(path).resolve(), args.audio.resolve(), precision, args.prebuilt),
                    }
                )
                print(
                    f"round {round_}, {label} {precision}: "
                    + ", ".join(
                        f"{kind} {t['wall_s']} s ({t['cpu_s']} CPU s)"
                        for kind, t in runs[-1].items()
                        if isinstance(t, dict)
                    ),
                    flush=True,
                )
    command = "python benchmarks/cold_start.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "audio": args.audio.name,
        "machine": machine,
        "versions": versions(),
        "floor": {"wall_s": floor["wall_s"], "cpu_s": floor["cpu_s"]},
        "runs": runs,
    }
    name = f"cold-start-{device_tag('cpu', machine)}-tiny.en"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    title = (
        f"empty compile cache, warm and prebuilt for {args.prebuilt}"
        if args.prebuilt
        else "empty compile cache and warm"
    )
    lines = [
        f"# MAX's first transcript of {args.audio.name}: {title}",
        "",
        f"`{result['command']}`",
        "",
        f"CPU: {machine['cpu']} ({machine['cpu_family_model']}), {machine['vector_isa']}, "
        f"{machine['cores']} cores; MAX {result['versions'].get('max')}; load average at the start "
        f"{machine['load_average']}. MAX's floor (a graph of one reshape compiled on an empty cache): "
        f"{floor['wall_s']} s ({floor['cpu_s']} CPU s).",
        "",
        "| round | checkout | precision | cold s | cold CPU s | warm s | warm CPU s |"
        + (f" {args.prebuilt} build s | on it s | on it CPU s | same transcript |" if args.prebuilt else "")
        + " transcript |",
        "|---" * (8 + 4 * bool(args.prebuilt)) + "|",
    ]
    for r in runs:
        prebuilt = (
            (
                f" {r['build']['wall_s']} | {r['prebuilt']['wall_s']} | {r['prebuilt']['cpu_s']} | "
                f"{'yes' if r['prebuilt']['text'] == r['cold']['text'] else 'NO'} |"
            )
            if args.prebuilt
            else ""
        )
        lines.append(
            f"| {r['round']} | {r['checkout']} | {r['precision']} | {r['cold']['wall_s']} | "
            f"{r['cold']['cpu_s']} | {r['warm']['wall_s']} | {r['warm']['cpu_s']} |{prebuilt} "
            f"{r['warm']['text'][:60]}... |"
        )
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
