"""`bench bulk`: bulk jobs (`maxwhisper.transcribe_many`, Ray Data) over the test clips repeated
to at least 30 minutes of audio, for each implementation at 1 and 2 workers, without a batch size
(the sequential loop, the command's default) and at each batch size: audio hours per hour. Right
before each one-worker job, the same files through `transcribe()` in one process (a worker
subprocess: model loaded once, the files in turn, as many at once as the job's worker takes) give
the pipeline's overhead, timed back to back with it; and a job on two virtual nodes
(`ray.cluster_utils.Cluster`, each with half the cores) shows it spread. Each job runs in a fresh
Ray instance (on one node a local one, as each `transcribe-many` command starts; on two, a fresh
`Cluster`), and the implementations take turns at going first (`job_order`); Ray's start-up is timed
apart from the jobs; a job's time includes its workers' model loads."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..bulk.job import files_at_once
from .clips import audio_dir
from .records import implementation_label, ratio
from .report import _f, ratio_text, write_mode_report
from .specs import BulkRun, WorkerSpec, decode_json
from .worker import run_worker

log = logging.getLogger(__name__)
SPEED_TARGET = 1.3  # MAX fp32's audio hours per hour over faster-whisper fp32's, at least
OVERHEAD_TARGET = 0.10  # the pipeline's time over transcribe() in one process, less than


def clip_files() -> list[Path]:
    """The test clips' media files, sorted: the set a bulk benchmark repeats."""
    from ..audio import MEDIA_SUFFIXES

    return sorted(p for p in audio_dir().iterdir() if p.suffix.lower() in MEDIA_SUFFIXES)


def bulk_clips(folder: Path, minimum_s: float) -> tuple[list[Path], float, int]:
    """The test clips linked `repeats` times into `folder` (round-1/jfk.flac, ...), enough for
    `minimum_s` seconds of audio. Returns (files, seconds of audio, repeats)."""
    from ..audio import SAMPLE_RATE, load_audio

    clips = clip_files()
    seconds = sum(len(load_audio(p)) / SAMPLE_RATE for p in clips)
    repeats = max(1, math.ceil(minimum_s / seconds))
    files = []
    for r in range(1, repeats + 1):
        (folder / f"round-{r}").mkdir(parents=True)
        for clip in clips:
            (folder / f"round-{r}" / clip.name).symlink_to(clip)
            files.append(folder / f"round-{r}" / clip.name)
    return files, seconds * repeats, repeats


def bulk_reference_worker(spec: WorkerSpec) -> dict[str, Any]:
    """In a worker process: the files through `transcribe()` in turn, the model loaded once, on
    `files_at_once` threads (each takes the next file, as a bulk worker's calls do); timed from
    loading the model (as a bulk job's time includes its workers' loads)."""
    from ..audio import load_audio
    from ..registry import create_transcriber

    options, at_once = spec.options, spec.files_at_once
    start = time.perf_counter()
    t = create_transcriber(
        spec.backend,
        model=spec.model,
        device=spec.device,
        precision=spec.precision,
        threads=spec.threads,
        max_batch=at_once,
    )
    with ThreadPoolExecutor(at_once) as pool:  # each thread takes the next file as it ends one
        audio_s = sum(pool.map(lambda path: t.transcribe(load_audio(path), options).audio_s, spec.files))
    wall_s = time.perf_counter() - start
    log.info(
        f"[{spec.backend} {t.precision} one process, batch {_batch(options.batch_size)}] {audio_s / 3600:.2f} h "
        f"in {wall_s:.1f} s"
    )
    return {
        "ok": True,
        "implementation": implementation_label(spec.backend, t.precision),
        "backend": spec.backend,
        "precision": t.precision,
        "batch_size": options.batch_size,
        "files_at_once": at_once,
        "wall_s": wall_s,
        "load_s": t.load_s + t.compile_s,
        "audio_s": audio_s,
        "rate": audio_s / wall_s,
    }


def _job(
    folder: Path, out: Path, backend: str, precision: str, model: str, workers: int, options, address: str | None = None
) -> dict[str, Any]:
    from ..bulk import transcribe_many

    summary = transcribe_many(
        folder,
        out,
        backend=backend,
        model=model,
        device="cpu",
        precision=precision,
        workers=workers,
        options=options,
        address=address,
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    timings = [r["timings"] for r in rows]
    run = {
        "implementation": implementation_label(backend, precision),
        "backend": backend,
        "precision": precision,
        "workers": workers,
        "batch_size": options.batch_size,
        "nodes": 2 if address else 1,
        "files_at_once": files_at_once(backend, options.batch_size),
        "files": summary.files,
        "failed": summary.failed,
        "audio_s": summary.audio_s,
        "wall_s": summary.wall_s,
        "rate": summary.audio_s / summary.wall_s,
        "transcribe_s": sum(t["transcribe_s"] or 0 for t in timings),
        "read_s": sum(t["read_s"] for t in timings),
        "write_s": sum(t["write_s"] or 0 for t in timings),
        "node_files": sorted(sum(r["node"] == n for r in rows) for n in {r["node"] for r in rows}),
    }
    log.info(
        f"[{run['implementation']} {workers} worker(s), batch {_batch(options.batch_size)}, "
        f"{run['nodes']} node(s)] "
        f"{summary.audio_s / 3600:.2f} h in {summary.wall_s:.1f} s: {run['rate']:.1f} audio h/h, "
        f"{summary.failed} failed"
    )
    return run


def _start_ray_data() -> None:
    """Ray Data starts actors of its own (statistics, autoscaling, actor locations) for the first
    dataset on a Ray instance (~4 s more than a later dataset's start): started here, in Ray's
    start-up time, which the benchmark states apart (a `transcribe-many` command pays them in its
    job's time, once per command)."""
    import ray

    class Same:
        def __call__(self, batch):
            return batch

    ray.data.range(1).map_batches(Same, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1).take_all()


def job_order(
    impls: list[tuple[str, str]],
    workers: list[int],
    batches: list[int | None],
    two_nodes: list[tuple[str, str]],
    two_nodes_batch: int | None,
) -> list[tuple]:
    """(backend, precision, workers, batch, nodes) of every job, configuration after configuration
    (on one node: workers, then batch size; then `two_nodes`' implementations on two nodes, 2 workers
    at `two_nodes_batch`), each configuration's implementations rotated one further than the last's:
    each goes first in turn, and none always runs first, or always after the others, in a run whose
    machine drifts."""
    configurations = [(impls, w, b, 1) for w in workers for b in batches]
    if two_nodes:
        configurations.append((two_nodes, 2, two_nodes_batch, 2))
    return [
        (backend, precision, w, b, nodes)
        for i, (these, w, b, nodes) in enumerate(configurations)
        for backend, precision in these[i % len(these) :] + these[: i % len(these)]
    ]


def _start_local_ray(cores: int) -> float:
    """A fresh local Ray instance of `cores` CPUs with Ray Data's own actors started: the seconds
    that took. A `transcribe-many` command starts its own instance, and a job in a long-lived
    instance, after other jobs, measured slower than in a fresh one (benchmarks/README.md)."""
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)  # a new one (bulk.job)
    try:
        _start_ray_data()
    except BaseException:
        ray.shutdown()
        raise
    return time.perf_counter() - start


def _start_two_nodes(cores: int):
    """A fresh `Cluster` of two virtual nodes, each with half the cores, joined, with Ray Data's own
    actors started: (the cluster, the seconds that took)."""
    import ray
    from ray.cluster_utils import Cluster

    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": max(cores // 2, 1), "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=max(cores // 2, 1))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        _start_ray_data()
    except BaseException:
        ray.shutdown()
        cluster.shutdown()
        raise
    return cluster, time.perf_counter() - start


def main_bulk(
    run: BulkRun, impls: list[tuple[str, str]], model: str, machine: dict, vers: dict, out_dir: Path, stem: str
) -> int:
    """Every job of `job_order` for one model, each with its reference; writes `stem`.{json,md}."""
    import ray

    batches = [None, *run.batch_sizes]  # None: the sequential loop, transcribe-many's default
    cores = os.cpu_count() or 1
    runs, references, starts = [], [], {"local": [], "two_nodes": []}
    with tempfile.TemporaryDirectory(prefix="maxwhisper-bulk-") as tmp:
        files, audio_s, repeats = bulk_clips(Path(tmp) / "clips", run.minutes * 60)
        log.info(f"--- bulk: {len(files)} files, {audio_s / 60:.1f} min of audio ({repeats} x the test clips) ---")
        jobs = Path(tmp) / "jobs"
        two_nodes = [(b, p) for b, p in impls if p == "fp32"]
        for backend, precision, workers, batch, nodes in job_order(
            impls, run.workers, batches, two_nodes, max(run.batch_sizes)
        ):
            options = dataclasses.replace(run.decode, batch_size=batch)
            if nodes == 2:  # a fresh Cluster per job, as a one-node job gets a fresh local instance
                cluster, seconds = _start_two_nodes(cores)
                starts["two_nodes"].append(seconds)
                try:
                    runs.append(
                        _job(
                            Path(tmp) / "clips",
                            jobs / f"{backend}-{precision}-two-nodes",
                            backend,
                            precision,
                            model,
                            workers,
                            options,
                            cluster.address,
                        )
                    )
                finally:
                    ray.shutdown()
                    cluster.shutdown()
                continue
            starts["local"].append(_start_local_ray(cores))  # a fresh instance per job, as each command has
            try:
                if workers == 1:  # its reference right before it, on the same machine state
                    spec = WorkerSpec(
                        kind="bulk_reference",
                        backend=backend,
                        model=model,
                        device="cpu",
                        precision=precision,
                        threads=cores,
                        files=tuple(str(f) for f in files),
                        files_at_once=files_at_once(backend, batch),
                        options=options,
                    )
                    reference = run_worker(spec, run.timeout)
                    if reference.get("ok"):
                        references.append(reference)
                out = jobs / f"{backend}-{precision}-{workers}-{batch or 'sequential'}"
                runs.append(_job(Path(tmp) / "clips", out, backend, precision, model, workers, options))
            finally:
                ray.shutdown()
    # the report's order: by implementation, then workers, then batch size; the two-node jobs last
    place = {implementation_label(b, p): i for i, (b, p) in enumerate(impls)}
    runs.sort(key=lambda r: (r["nodes"], place[r["implementation"]], r["workers"], batches.index(r["batch_size"])))
    references.sort(key=lambda r: (place[r["implementation"]], batches.index(r["batch_size"])))
    command = (
        f"python -m maxwhisper bench bulk --backends {','.join(dict.fromkeys(b for b, _ in impls))} "
        f"--precisions {','.join(dict.fromkeys(p for _, p in impls))} --models {model} "
        f"--minutes {run.minutes:g} --workers {','.join(map(str, run.workers))} "
        f"--batch-sizes {','.join(map(str, run.batch_sizes))}"
    )
    doc = {
        "schema_version": 1,
        "device": "cpu",
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "machine": machine,
        "versions": vers,
        "options": {"batch_sizes": run.batch_sizes, "workers": run.workers, "decode": decode_json(run.decode)},
        "bulk": {
            "model": model,
            "files": len(files),
            "audio_s": audio_s,
            "repeats": repeats,
            "ray_start_s": starts,
            "runs": runs,
            "references": references,
        },
    }
    write_mode_report(doc, bulk_markdown(doc), out_dir, stem)
    return int(any(r["failed"] for r in runs) or len(references) < len(impls) * len(batches) * (1 in run.workers))


def _batch(batch: int | None) -> str:
    return "none" if batch is None else str(batch)


def _run(runs: list[dict], implementation: str, workers: int, batch: int | None, nodes: int = 1) -> dict | None:
    return next(
        (
            r
            for r in runs
            if (r["implementation"], r["workers"], r["batch_size"], r["nodes"])
            == (implementation, workers, batch, nodes)
        ),
        None,
    )


def _best(runs: list[dict], implementation: str) -> dict | None:
    mine = [r for r in runs if r["implementation"] == implementation and r["nodes"] == 1]
    return max(mine, key=lambda r: r["rate"]) if mine else None


def _verdict(x: float | None, target: float) -> str:
    """A speed ratio's target and whether it is met: at least `target` above 1, else above it."""
    met = x is not None and (x >= target if target > 1 else x > target)
    return f"({'at least' if target > 1 else 'above'} {target:g}x): {'met' if met else 'NOT MET'}"


def bulk_targets(doc: dict) -> list[str]:
    b = doc["bulk"]
    runs, lines = b["runs"], []
    for r in runs:
        if r["backend"] != "max" or r["nodes"] != 1:
            continue
        # like with like: faster-whisper in MAX's precision where it ran in it (int8: ahead of it), else fp32
        f = _run(runs, implementation_label("faster", r["precision"]), r["workers"], r["batch_size"])
        target = 1.0 if f and r["precision"] != "fp32" else SPEED_TARGET
        f = f or _run(runs, implementation_label("faster", "fp32"), r["workers"], r["batch_size"])
        if f:
            x = ratio(r["rate"], f["rate"])
            lines.append(
                f"- {r['workers']} worker(s), batch {_batch(r['batch_size'])}: {r['implementation']} "
                f"{r['rate']:.1f} vs {f['implementation']} {f['rate']:.1f} audio h/h = "
                f"{ratio_text(x, target)}x " + _verdict(x, target)
            )
    for versus, target in (("fp32", SPEED_TARGET), ("int8", 1.0)):
        # like with like: MAX in faster-whisper's precision where it ran in it, else MAX fp32
        mine = _best(runs, implementation_label("max", versus)) or _best(runs, implementation_label("max", "fp32"))
        other = _best(runs, implementation_label("faster", versus))
        if mine and other:
            x = ratio(mine["rate"], other["rate"])
            lines.append(
                f"- best against best: {mine['implementation']} {mine['rate']:.1f} "
                f"({mine['workers']} worker(s), batch {_batch(mine['batch_size'])}) "
                f"vs faster-whisper {versus} {other['rate']:.1f} ({other['workers']} worker(s), "
                f"batch {_batch(other['batch_size'])}) = {ratio_text(x, target)}x " + _verdict(x, target)
            )
    for ref in b["references"]:
        r = _run(runs, ref["implementation"], 1, ref["batch_size"])
        # like with like: the reference takes as many files at once as the job's worker (older results
        # recorded neither: there MAX's sequential job took `files_at_once`'s, its reference one)
        old_default = files_at_once(ref["backend"], ref["batch_size"])
        if r and ref.get("files_at_once", 1) == r.get("files_at_once", old_default):
            overhead = r["wall_s"] / ref["wall_s"] - 1
            lines.append(
                f"- pipeline overhead, {ref['implementation']} batch {_batch(ref['batch_size'])}: 1 worker "
                f"{r['wall_s']:.1f} s vs transcribe() in one process {ref['wall_s']:.1f} s = "
                f"{100 * overhead:+.1f} % (under {100 * OVERHEAD_TARGET:g} %): "
                f"{'met' if overhead < OVERHEAD_TARGET else 'NOT MET'}"
            )
    return lines


def _start_text(local: float | list[float], two_nodes: float | list[float]) -> str:
    """Ray's start-up: one local instance for every job and one `Cluster` for the two-node jobs
    (older results), or a fresh one per job, the implementations rotated by configuration."""
    if isinstance(local, list):
        text = (
            f"{min(local, default=0):.1f}-{max(local, default=0):.1f} s for a fresh local instance per job "
            "(each job's one-process reference timed in it right before the job)"
        )
    else:
        text = f"{local:.1f} s for the local instance"
    if isinstance(two_nodes, list):
        text += (
            f", {min(two_nodes, default=0):.1f}-{max(two_nodes, default=0):.1f} s for a fresh pair of "
            "virtual nodes (each with half the cores) per two-node job"
        )
    else:
        text += f", {two_nodes:.1f} s for two virtual nodes (each with half the cores), shared by the two-node jobs"
    if isinstance(local, list):
        text += (
            ", configuration after configuration, each one's implementations rotated one further than the last's"
            if isinstance(two_nodes, list)
            else ", the jobs' implementations in the given order and the reverse by turns, configuration after "
            "configuration"
        )
    return text


def bulk_markdown(doc: dict) -> str:
    m, b = doc["machine"], doc["bulk"]
    starts = b["ray_start_s"]
    lines = [
        f"# Bulk jobs on Ray Data: {b['model']}, cpu",
        "",
        f"{m.get('cpu')} ({m.get('vector_isa')}), {m.get('cores')} cores; {doc['created']}. "
        f"`{doc['command']}`: {b['files']} files, {b['audio_s'] / 60:.1f} min of audio "
        f"(the test clips {b['repeats']} times), each job `transcribe_many` into a fresh folder (txt). "
        f"A job's time includes its workers' start and model load; Ray's start-up is apart: "
        f"{_start_text(starts.get('local', 0), starts.get('two_nodes', 0))}. "
        "Batch none: the sequential loop (the command's default; "
        "a MAX worker on the CPU transcribes four files at once, sharing their encoder calls and decoder "
        "steps). Audio h/h: hours of audio per hour.",
        "",
        "| implementation | nodes | workers | batch | job s | audio h/h | x faster-whisper fp32 | "
        "transcribing s (sum) | reading s (sum) | files per node | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in b["runs"]:
        f = _run(b["runs"], implementation_label("faster", "fp32"), r["workers"], r["batch_size"], r["nodes"])
        lines.append(
            f"| {r['implementation']} | {r['nodes']} | {r['workers']} | {_batch(r['batch_size'])} | "
            f"{r['wall_s']:.1f} | {r['rate']:.1f} | {_f(ratio(r['rate'], f['rate']) if f else None)} | "
            f"{r['transcribe_s']:.1f} | {r['read_s']:.1f} | {', '.join(map(str, r['node_files']))} | "
            f"{r['failed']} |"
        )
    lines += [
        "",
        "The same files through `transcribe()` in one process (model loaded once, the files in turn, as many "
        "at once as the one-worker job's worker takes; each timed right before that job, Ray up and idle):",
        "",
        "| implementation | batch | files at once | s | audio h/h |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['implementation']} | {_batch(r['batch_size'])} | {r.get('files_at_once', 1)} | "
        f"{r['wall_s']:.1f} | {r['rate']:.1f} |"
        for r in b["references"]
    ]
    lines += ["", "Targets:", "", *bulk_targets(doc)]
    return "\n".join(lines) + "\n"
