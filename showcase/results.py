"""The committed benchmark results (`benchmarks/results/*.json`, written by `maxwhisper.bench`)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from maxwhisper.bench.records import current_names

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"  # what the app shows
BENCH_COLUMNS = [
    "audio",
    "audio_s",
    "backend",
    "model",
    "device",
    "precision",
    "total_s_median",
    "rtfx",
    "load_s",
    "compile_s",
    "features_s",
    "encode_s",
    "decode_s",
    "wer",
    "agreement",
    "tokens_identical_to_openai",
]


@dataclass
class BenchmarkRun:
    name: str  # file name
    created: str  # when the benchmark ran ("YYYY-MM-DD HH:MM:SS UTC"), "" if unknown
    machine: dict
    versions: dict
    options: dict
    rows: list[dict]  # one per result, with every key of BENCH_COLUMNS (None where missing)
    failures: list[dict]  # what did not run: backend, precision, audio, error


def read_benchmark(path: Path) -> BenchmarkRun:
    """The one place that knows the schema `maxwhisper.bench` writes:
    {"machine": {...}, "versions": {...}, "options": {...}, "results": [{BENCH_COLUMNS...}, ...],
    "failures": [{"backend", "precision", "audio", "error"}, ...]}."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = [
        {c: r.get(c) for c in BENCH_COLUMNS}
        for r in map(current_names, [r for r in doc.get("results") or [] if isinstance(r, dict)])
    ]
    failures = [f for f in doc.get("failures") or [] if isinstance(f, dict) and f.get("backend")]
    return BenchmarkRun(
        Path(path).name,
        str(doc.get("created") or ""),
        doc.get("machine") or {},
        doc.get("versions") or {},
        doc.get("options") or {},
        rows,
        failures,
    )


def read_runs(directory: Path) -> tuple[list[BenchmarkRun], list[str]]:
    """The runs with per-implementation results in `directory`, and a note per unreadable file."""
    files = sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []
    runs, notes = [], []
    for path in files:
        try:
            runs.append(read_benchmark(path))
        except (OSError, ValueError, AttributeError, TypeError) as e:
            notes.append(f"- ⚠ `{path.name}` could not be read: {e}")
    return [run for run in runs if run.rows], notes  # e.g. a throughput report: no per-implementation results


def _clip_rows(run: BenchmarkRun) -> tuple[str, list[dict]] | None:
    """The run's longest clip with a MAX row on the CPU, and its CPU rows with positive medians."""
    rows = [
        r
        for r in run.rows
        if r["device"] == "cpu"
        and isinstance(r["total_s_median"], (int, float))
        and r["total_s_median"] > 0
        and isinstance(r["audio_s"], (int, float))
    ]
    clips = {r["audio"]: r["audio_s"] for r in rows if r["backend"] == "max"}
    if not clips:
        return None
    clip = max(clips, key=clips.get)
    return clip, [r for r in rows if r["audio"] == clip]


def machine_name(machine: dict, device: str) -> str:
    """'NVIDIA H100 80GB HBM3' for a GPU's rows, 'AMD EPYC · AVX-512 VNNI BF16 · 2 cores' for a CPU's."""
    if device == "gpu" and machine.get("gpu"):
        return str(machine["gpu"])
    cores = f"{machine['cores']} cores" if machine.get("cores") else None
    parts = [machine.get("cpu"), machine.get("vector_isa"), cores]
    return " · ".join(str(p) for p in parts if p) or "?"


@functools.cache
def this_machine() -> dict:
    """The machine the app runs on (`maxwhisper.bench.machine.machine_info`), read once."""
    from maxwhisper.bench.machine import machine_info

    return machine_info()


def same_kind(machine: dict, like: dict) -> bool:
    """Whether a results file's machine has `like`'s vector ISA: the CPUs whose figures apply."""
    return bool(like.get("vector_isa")) and machine.get("vector_isa") == like.get("vector_isa")


def quoted_machine(machine: dict, like: dict) -> str:
    """A quoted run's machine and what it is to this server: 'AMD EPYC · AVX2 · 2 cores, a CPU like
    this server's', or why another kind's figures are quoted (nothing where this server's vector ISA
    is unknown)."""
    name = machine_name(machine, "cpu")
    if same_kind(machine, like):
        return f"{name}, a CPU like this server's"
    isa = like.get("vector_isa")
    return f"{name} (no committed run is on this server's kind of CPU, {isa})" if isa else name


def reference_rows(runs: list[BenchmarkRun], like: dict) -> tuple[BenchmarkRun, str, list[dict]] | None:
    """What the app quotes of the committed results: the newest run with MAX on the CPU, of a machine
    of `like`'s kind where one exists, its longest such clip and the rows on it (a row whose median is
    missing or not a positive number left out)."""
    for run in sorted(runs, key=lambda r: (same_kind(r.machine, like), r.created), reverse=True):
        found = _clip_rows(run)
        if found:
            return run, *found
    return None
