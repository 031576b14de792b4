"""`transcribe_many`: a bulk job on Ray Data, top to bottom: the input files (minus those already
done), read by tasks, transcribed by an actor pool, their rows appended to the results table by
this process as they come."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..api import DecodeOptions, MaxWhisperError
from ..checkpoint import check_model_name
from ..extras import require
from ..formats import FORMATS
from .inputs import InputFile, collect_inputs
from .progress import Progress
from .table import RESULTS, ResultsTable, is_done, remove_partial_files
from .worker import JobSettings, Transcribe, read_audio

READ_CPUS = 0.25  # a read task's CPU request: decoding a file is short beside transcribing it
SETTLE_S = 3.0  # how long a job waits for CPUs that a job just ended still holds
# MAX's sequential loop (no batch size) on the CPU: a worker transcribes this many files at once, their
# encoder calls and greedy decoder steps run together (`graph.shared_steps`), each file's tokens those
# it gets alone. Batched long-form (which fills its steps with one file's windows), a GPU worker and
# one without the CPU kernels take one file at a time (docs/bulk.md).
FILES_AT_ONCE = 4
WORKER_START_S = 1800  # placing and starting the workers (a cluster may add nodes); their models load after


@dataclass
class BulkSummary:
    files: int  # the job's input files
    transcribed: int  # done now, status ok
    failed: int  # done now, status error (the rows say why)
    skipped: int  # already done by an earlier run with the same settings
    audio_s: float  # audio transcribed now, seconds
    wall_s: float  # the job, Ray's start-up excluded
    ray_start_s: float  # starting or joining Ray
    workers: int
    results: Path  # results.jsonl
    failures: list[dict]  # the rows with status error

    @property
    def ok(self) -> bool:
        return self.failed == 0


def transcribe_many(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    backend: str = "max",
    model: str = "tiny.en",
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    kernels: bool = True,
    workers: int = 1,
    formats: Sequence[str] = ("txt",),
    parquet: bool = False,
    address: str | None = None,
    max_seconds: float | None = None,
    options: DecodeOptions | None = None,
    progress: bool = False,
    **changes,
) -> BulkSummary:
    """Transcribe every file of `inputs` (files, folders searched recursively for audio and video,
    manifests: .txt one path per line, .csv or .jsonl with a `path` column) into `output`: each
    file's outputs in `formats` mirroring the input tree (`talks/a.mp3` -> `talks/a.mp3.txt`), and
    one row per file in `output/results.jsonl` (and results.parquet with `parquet=True`).

    Runs on a local Ray instance started for the job (or the one this process already has), or on
    the cluster at `address` (default: $RAY_ADDRESS, as Ray's own; every node must see `output` and
    the inputs at the same paths, and have this package installed). `workers` actors each load the
    model once; `threads` per worker (default: a node's cores shared by the workers it holds).
    `options` and keyword `changes` are DecodeOptions' fields (`batch_size=8`: batched long-form). A
    file that fails is a row with status "error"; a rerun into the same `output` skips the files
    done with the same settings. `progress=True` reports on stderr. Raises MaxWhisperError for bad
    arguments (a local job: an unknown model before Ray starts), and for a model that the workers
    cannot load (unknown backend, device, precision or model, one not installed or not a Whisper
    model)."""
    require("bulk", "maxwhisper.transcribe_many")
    options = dataclasses.replace(options or DecodeOptions(), **changes)
    if options.batch_size is not None:
        require("batched", "a bulk job with a batch size")
    address = address or os.environ.get("RAY_ADDRESS") or None
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise MaxWhisperError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid formats: {', '.join(FORMATS)}")
    if workers < 1:
        raise MaxWhisperError("workers must be at least 1")
    if address is None:  # the workers see this machine's files: an unknown model is refused before Ray starts
        check_model_name(model)
    output = Path(output)
    files = collect_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs), output)
    if output.exists() and not output.is_dir():
        raise MaxWhisperError(f"the output {output} is a file, not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaxWhisperError(f"cannot make the output folder {output}: {e.strerror}") from None
    with _only_job(output):
        return _run(
            files,
            output,
            JobSettings(
                backend,
                model,
                device,
                precision,
                threads,
                kernels,
                options,
                str(output.resolve()),
                formats,
                max_seconds,
            ),
            workers,
            parquet,
            address,
            progress,
        )


def _only_job(output: Path):
    """A lock on the output folder: two jobs appending to one results table would mix it up."""
    lock = open(output / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise MaxWhisperError(
            f"another job is writing to {output}; wait for it or choose another output folder"
        ) from None
    return lock


def _run(
    files: list[InputFile],
    output: Path,
    settings: JobSettings,
    workers: int,
    parquet: bool,
    address: str | None,
    progress: bool,
) -> BulkSummary:
    table = ResultsTable(output)
    remove_partial_files(output)
    wanted = settings.row_settings()
    previous = table.read()
    done = {r["output"] for r in previous if is_done(r, wanted, output, list(settings.formats))}
    todo = [f for f in files if f.relative not in done]
    redo = {f.relative for f in todo}
    table.rewrite([r for r in previous if r["output"] not in redo])  # each file once: its new row replaces the old

    start = time.perf_counter()
    started_ray = _start_ray(address) if todo else False
    ray_start_s = time.perf_counter() - start
    start = time.perf_counter()
    failures, sizes, audio_s = [], {f.relative: f.size for f in todo}, 0.0
    bar = Progress(len(todo), sum(sizes.values())) if progress and todo else None
    try:
        for row in _rows(_pipeline(todo, settings, workers), workers) if todo else ():
            record = json.loads(row["row"])
            if record.pop("fatal", False):
                raise MaxWhisperError(record["error"])
            table.append(record)
            audio_s += record["duration"] or 0.0
            if record["status"] != "ok":
                failures.append(record)
            if bar:
                bar.done(record, sizes[record["output"]])
    finally:
        if bar:
            bar.close()
        if started_ray:
            import ray

            ray.shutdown()
    if parquet:
        table.write_parquet()
    return BulkSummary(
        files=len(files),
        transcribed=len(todo) - len(failures),
        failed=len(failures),
        skipped=len(files) - len(todo),
        audio_s=audio_s,
        wall_s=time.perf_counter() - start,
        ray_start_s=ray_start_s,
        workers=workers,
        results=table.path,
        failures=failures,
    )


def _rows(dataset, workers: int):
    """The dataset's rows as they come; workers that could not start are a MaxWhisperError."""
    import ray

    try:
        yield from dataset.iter_rows()
    except ray.exceptions.GetTimeoutError:
        raise MaxWhisperError(
            f"{workers} worker(s) did not start within {WORKER_START_S} s: the Ray cluster has "
            "not the CPUs (or GPUs) free to hold them"
        ) from None


def _start_ray(address: str | None) -> bool:
    """Join `address`, or start a local instance of this machine's CPUs; True when started here.
    The local instance is always a new one ("local"): without an address Ray would join the cluster
    the last `ray start` on this machine recorded, whoever started it, and fail on `num_cpus`."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    return True


def _pipeline(files: list[InputFile], settings: JobSettings, workers: int):
    """read -> transcribe, in that order: the dataset of result rows, one per file."""
    import ray

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices (progress bars off, execution done)
    cpus, gpus = _worker_resources(settings.device, workers)
    threads = settings.threads or max(1, math.floor(cpus + READ_CPUS))
    # every backend's threads per worker: two workers on a node, each on every core, would fight over them
    at_once = files_at_once(settings.backend, settings.options.batch_size)
    settings = dataclasses.replace(settings, threads=threads, files_at_once=at_once)
    items = [{"path": f.path, "name": f.name, "output": f.relative} for f in handed_out(files, at_once)]
    dataset = (
        ray.data.from_items(items, override_num_blocks=len(items))  # a block per file: a task each
        .map(
            read_audio,
            fn_kwargs={"max_seconds": settings.max_seconds, "below_workers": threads > 1},
            num_cpus=READ_CPUS,
        )
        .map_batches(
            Transcribe,
            fn_constructor_args=(settings,),
            batch_size=1,
            num_cpus=cpus,
            num_gpus=gpus,
            runtime_env={"env_vars": _worker_env(threads)},
            # the files in progress and one more read: no worker idles, none hoards files
            compute=ray.data.ActorPoolStrategy(
                size=workers,
                max_tasks_in_flight_per_actor=at_once + 1,
                max_concurrent_calls_per_actor=at_once,
                enable_true_multi_threading=at_once > 1,
            ),
        )
    )
    context = dataset.context  # this job's copy of Ray Data's settings
    context.enable_progress_bars = False  # ours show files and audio hours
    context.print_on_execution_start = False
    # every worker starts before files are handed out (a slow start does not leave one doing all
    # the work), and a cluster that cannot hold them fails the job instead of waiting forever
    context.wait_for_min_actors_s = WORKER_START_S
    return dataset


def handed_out(files: list[InputFile], at_once: int) -> list[InputFile]:
    """The order a job hands out its files. To workers taking one file at a time: largest first
    (ties in the given order), so that the job's last files are its smallest and the workers end
    together, instead of one transcribing a long recording while the others wait; the size stands
    for the length (within one format, as in most archives, it does). To workers taking several at
    once (MAX's sequential loop): the given order; largest first measured much slower there with
    one worker of two threads (`benchmarks/results/bulk-fp32-int8/README.md`)."""
    return sorted(files, key=lambda f: f.size, reverse=True) if at_once == 1 else list(files)


def _worker_env(threads: int) -> dict[str, str]:
    """A worker's environment. Ray sets OMP_NUM_THREADS to the whole CPUs asked for (here 1), which
    leaves numpy's BLAS (the log-Mel, the decoding's numpy) one thread and slows a job. A MAX pool of
    one thread spins 200 us for the next call after each one by default, on a core that another
    worker or a read wants: single-threaded workers sleep at once instead (MAX reads the setting
    under both names and aborts unless they agree; `docs/design.md`)."""
    env = {"OMP_NUM_THREADS": str(threads)}
    if threads == 1:
        env |= dict.fromkeys(("MODULAR_THREAD_BUSY_WAIT_US", "MODULAR_RUNTIME_THREAD_BUSY_WAIT_TIME_US"), "0")
    return env


def files_at_once(backend: str, batch_size: int | None) -> int:
    """How many files a worker transcribes at once: FILES_AT_ONCE for the sequential loop (`batch_size`
    None) of a backend that decodes them together (MAX, on either plan), else 1."""
    from ..registry import BACKENDS

    shares_steps = backend in BACKENDS and BACKENDS[backend].decodes_together
    return FILES_AT_ONCE if shares_steps and batch_size is None else 1


def _settled_free_cpus(total: float) -> float:
    """The cluster's free CPUs once the actors of a job that just ended have let theirs go (Ray
    frees them a moment after the job; sized on that moment, a job's workers got a third of the
    machine and their BLAS one thread). Waits up to SETTLE_S for all of `total`, then takes what is
    free: on a busy cluster, the CPUs that others hold stay theirs."""
    import ray

    deadline = time.perf_counter() + SETTLE_S
    while (free := ray.available_resources().get("CPU", 0)) < total and time.perf_counter() < deadline:
        time.sleep(0.1)
    return free


def _worker_resources(device: str, workers: int) -> tuple[float, float]:
    """CPUs and GPUs each worker asks Ray for: a node's free CPUs, less a read task's, shared by the
    workers it will hold (so a node keeps room for reading: Ray Data deadlocks otherwise), and a GPU
    each on `device` gpu (or auto when the cluster has GPUs)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise MaxWhisperError("the Ray cluster has no node with CPUs")
    free = min(min(n["CPU"] for n in nodes), _settled_free_cpus(sum(n["CPU"] for n in nodes)) / len(nodes))
    cpus = max((free - READ_CPUS) / math.ceil(workers / len(nodes)), 0.1)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if device == "gpu" and not has_gpus:
        raise MaxWhisperError("--device gpu: the Ray cluster has no GPU")
    return cpus, 1.0 if device == "gpu" or (device == "auto" and has_gpus) else 0.0


__all__ = ["transcribe_many", "BulkSummary", "RESULTS"]
