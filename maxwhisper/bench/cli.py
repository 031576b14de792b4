"""The benchmark's command, `maxwhisper bench MODE [options]` (`python -m maxwhisper.bench MODE ...`
too): one subcommand per mode (`MODES`), each with its own options (`add_arguments`), parsed into
the mode's spec (`specs`, by `spec_of`) and run by `main`. The modes: `clips` (the default: each
implementation on each clip; here), `batched` (batched long-form; here), `streaming` (streaming.py),
`bulk` (bulk.py), `serve` (serve.py) and `realtime` (realtime.py). Before the modes were
subcommands they were flags (`bench --streaming`, `bench --realtime --realtime-p90 3.5`):
`with_mode` reads that spelling too. `cli` also runs a worker's `--worker SPEC.json`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..__main__ import finite_float, positive_seconds, show_messages, temperatures
from ..api import BackendError, DecodeOptions, MaxWhisperError
from ..checkpoint import check_model_name
from ..cpu_features import CPU_LEVELS, cpu_level
from ..extras import require
from ..registry import BACKENDS, PRECISIONS
from .clips import DEFAULT_CLIPS, LONG_FORM, Clip, audio_dir, parse_clip, resolve_clips
from .machine import device_tag, gpus, keep_to_cpu_level, machine_info, versions
from .records import (
    IMPLEMENTATIONS,
    ClipResult,
    add_accuracy,
    add_batched_accuracy,
    compute_targets,
    implementation_label,
    make_records,
    merge_round,
)
from .report import markdown_table, targets_text, throughput_markdown, write_outputs, write_throughput_html
from .specs import (
    BatchedRun,
    BulkRun,
    ClipsRun,
    Measured,
    RealtimeRun,
    Run,
    ServeRun,
    StreamingRun,
    WorkerSpec,
    decode_json,
)
from .worker import WORKERS, run_worker, worker_main

log = logging.getLogger(__name__)
DEFAULT_OUT = Path("benchmarks") / "results"  # under the current folder: a checkout's root holds the committed results
QUICK_OUT = Path(tempfile.gettempdir()) / "maxwhisper-bench"  # --quick without --output: never the committed results
SCHEMA_VERSION = 2  # the per-clip results' JSON; 1: `rtfx` was named `rtf` (the same value)


# --- argument types ------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    return _positive_ints(text)[0]


def _positive_minutes(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value


# --- each mode's options -------------------------------------------------------------------------


def _run_options(p: argparse.ArgumentParser, html: bool = False) -> None:
    """Every mode's: the output folder and the background load (and the chart, where a mode draws one)."""
    g = p.add_argument_group("output")
    g.add_argument(
        "--output", "--out", dest="out", type=Path, default=None, help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    g.add_argument(
        "--background-load",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="keep N cores busy with spinning processes while measuring (a shared machine); the "
        "output names get -loadN (default 0)",
    )
    g.add_argument(
        "--cpu-level",
        choices=list(CPU_LEVELS),
        default=None,
        help="every implementation runs code of this x86-64 level only (an AVX2 machine measured on a newer "
        "CPU); the output names get the level in place of the CPU's ISA",
    )
    if html:
        g.add_argument("--no-html", dest="html", action="store_false", help="skip the Plotly chart")


def _selection(p: argparse.ArgumentParser, models: bool = True) -> argparse._ArgumentGroup:
    g = p.add_argument_group("implementations")
    g.add_argument("--backends", type=_csv, default=None, help=f"comma-separated: {','.join(BACKENDS)} (default: all)")
    g.add_argument(
        "--precisions",
        type=_csv,
        default=None,
        help="only these precisions (default: "
        + "; ".join(f"{device} " + " ".join(f"{b}/{p}" for b, p in impls) for device, impls in IMPLEMENTATIONS.items())
        + ")",
    )
    if models:
        g.add_argument(
            "--models", type=_csv, default=["tiny.en"], help="comma-separated model names (default: tiny.en)"
        )
    return g


def _measured_options(p: argparse.ArgumentParser, devices: bool = True, quick: str | None = None) -> None:
    """A mode that runs implementations in workers: which, how they decode, how long one may take."""
    g = _selection(p)
    if devices:
        g.add_argument(
            "--devices",
            type=_csv,
            default=None,
            help="comma-separated: cpu, gpu (default: cpu, plus gpu when nvidia-smi lists one)",
        )
    if quick:
        g.add_argument("--quick", action="store_true", help=quick)
    g.add_argument(
        "--timeout", type=positive_seconds, default=3600.0, help="seconds one implementation may take (default 3600)"
    )
    d = p.add_argument_group("decoding (the same for every implementation)")
    d.add_argument("--beam-size", type=_positive_int, default=1, help="1 = greedy (default)")
    d.add_argument(
        "--temperature",
        type=temperatures,
        action="append",
        default=None,
        metavar="T",
        help="fallback schedule: repeat the flag or give a comma list (default 0,0.2,0.4,0.6,0.8,1.0 "
        "as openai-whisper)",
    )
    d.add_argument("--language", default=None, help="language code (default: English for .en models, else detect)")


def _clips_arguments(p: argparse.ArgumentParser) -> None:
    _measured_options(
        p,
        quick="CI smoke run: jfk.flac, 1 repeat, tiny.en, cpu, all backends; files are named "
        f"quick-* and go to {QUICK_OUT} unless --output is given",
    )
    p.add_argument(
        "--audio",
        nargs="+",
        default=None,
        metavar="FILE|FOLDER",
        help="audio files or folders; FILE#left / FILE#right / FILE#N takes one channel (default: "
        + ", ".join(DEFAULT_CLIPS)
        + " from the test audio, tests/audio)",
    )
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per clip after 1 warm-up (default 5)")
    p.add_argument(
        "--rounds",
        type=_positive_int,
        default=1,
        help="run the implementations in turn this many times and pool their timed runs (default 1)",
    )
    _run_options(p, html=True)


def _batched_arguments(p: argparse.ArgumentParser) -> None:
    _measured_options(
        p, quick=f"1 repeat, tiny.en, cpu; files named quick-* go to {QUICK_OUT} unless --output is given"
    )
    p.add_argument("--audio", default=None, metavar="FILE", help=f"the long clip (default {LONG_FORM})")
    p.add_argument(
        "--repeats", type=_positive_int, default=5, help="timed runs per batch size after 1 warm-up (default 5)"
    )
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1, 8], help="default 1,8")
    _run_options(p, html=True)


def _streaming_arguments(p: argparse.ArgumentParser) -> None:
    from .streaming import STREAMING_CLIPS

    _measured_options(
        p, quick=f"jfk.flac, tiny.en, cpu; files named quick-* go to {QUICK_OUT} unless --output is given"
    )
    p.add_argument(
        "--audio",
        nargs="+",
        default=None,
        metavar="FILE|FOLDER",
        help="audio files or folders (default: " + ", ".join(STREAMING_CLIPS) + ")",
    )
    p.add_argument(
        "--chunk", type=positive_seconds, default=1.0, metavar="S", help="seconds of audio per chunk (default 1.0)"
    )
    p.add_argument(
        "--streams",
        type=_positive_int,
        default=1,
        metavar="N",
        help="streams of each clip per implementation, the k-th with its chunk boundaries shifted by "
        "k x chunk / N, to the millisecond (at most the chunk's milliseconds); the aims are judged "
        "over all of them (default 1)",
    )
    _run_options(p)


def _bulk_arguments(p: argparse.ArgumentParser) -> None:
    _measured_options(p, devices=False)
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1, 8], help="default 1,8")
    p.add_argument("--workers", type=_positive_ints, default=[1, 2], metavar="N,N", help="default 1,2")
    p.add_argument(
        "--minutes", type=_positive_minutes, default=30.0, metavar="M", help="at least this much audio (default 30)"
    )
    _run_options(p)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=20.0,
        metavar="S",
        help="seconds of load per clip and concurrency (default 20)",
    )
    p.add_argument("--concurrency", type=_positive_ints, default=[1, 4, 16], help="clients (default 1,4,16)")
    _run_options(p)


def _realtime_arguments(p: argparse.ArgumentParser) -> None:
    from .realtime import P90_BOUND_S

    _selection(p, models=False)
    p.add_argument(
        "--sessions",
        type=_positive_ints,
        default=list(range(1, 17)),
        metavar="N,N",
        help="the session counts to try, in order, until one does not keep up (default 1,2,...,16)",
    )
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=None,
        metavar="S",
        help="stream the lecture's first S seconds (default: all 203 s)",
    )
    p.add_argument(
        "--cpus", type=positive_seconds, default=2.0, metavar="N", help="CPUs of the one model replica (default 2)"
    )
    p.add_argument(
        "--p90",
        type=positive_seconds,
        default=P90_BOUND_S,
        metavar="S",
        help=f"the p90 commit latency that N sessions must keep to count as keeping up (default "
        f"{P90_BOUND_S:g}; results with another bound go to files named -p90-S)",
    )
    _run_options(p)


@dataclass(frozen=True)
class Mode:
    """A subcommand: its help, its options, the spec they make, what runs it, the extras it needs
    beyond 'bench' (said before anything starts)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    spec: type[Run]
    run: Callable[[Any], int]
    extras: tuple[str, ...] = ()


def _run_streaming(run: StreamingRun) -> int:
    from .streaming import STREAMING_CLIPS, main_streaming, stream_offsets

    impls = _implementations(run, run.devices)
    stream_offsets(run.chunk, run.streams)  # refuses more streams than it can shift apart
    if run.audio or run.quick:
        clips = resolve_clips(run.audio, quick=run.quick)
    else:
        clips = [parse_clip(name, audio_dir()) for name in STREAMING_CLIPS]
    out_dir = run.out or (QUICK_OUT if run.quick else DEFAULT_OUT)
    threads = os.cpu_count() or 1
    machine, vers = machine_info(), versions()
    status = 0
    for device in [device for device in impls if impls[device]]:
        for model in run.models:
            status |= main_streaming(
                run,
                clips,
                impls[device],
                device,
                model,
                threads,
                machine,
                vers,
                out_dir,
                stem(run, machine, device, "streaming", model),
            )
    return status


def _run_bulk(run: BulkRun) -> int:
    from .bulk import main_bulk

    impls = _implementations(run, ["cpu"], batched=True)["cpu"]
    machine, vers = machine_info(), versions()
    return max(
        main_bulk(
            run, impls, model, machine, vers, run.out or DEFAULT_OUT, f"bulk-{device_tag('cpu', machine)}-{model}"
        )
        for model in run.models
    )


def _run_serve(run: ServeRun) -> int:
    from .serve import main_serve

    return main_serve(run, run.out or DEFAULT_OUT)


def _run_realtime(run: RealtimeRun) -> int:
    from .realtime import main_realtime

    _check_names(run.backends, run.precisions)
    return main_realtime(run, run.out or DEFAULT_OUT)


def _run_clips(run: ClipsRun) -> int:
    impls = _implementations(run, run.devices)
    clips = resolve_clips(run.audio, quick=run.quick)
    out_dir = run.out or (QUICK_OUT if run.quick else DEFAULT_OUT)
    threads = os.cpu_count() or 1
    machine, vers = machine_info(), versions()
    common = {
        "models": run.models,
        "repeats": run.repeats,
        "rounds": run.rounds,
        "warmup": 1,
        "threads": threads,
        "background_load": run.background_load,
        "quick": run.quick,
        "decode": decode_json(run.decode),
        "clips": [dataclasses.asdict(c) for c in clips],
    }
    status = 0
    for device in [device for device in impls if impls[device]]:
        created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        load_before = machine["load_average"]
        records, failures = [], []
        for model in run.models:
            results, fails = _clip_results(run, impls[device], clips, device, model, threads)
            records += results
            failures += fails
        add_accuracy(records)
        targets = compute_targets(records, vnni=device == "cpu" and "VNNI" in (machine.get("vector_isa") or ""))
        load_end = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        machine_now = {**machine, "load_average": load_before, "load_average_end": load_end}
        results = [dataclasses.asdict(r) for r in records]
        doc = {
            "schema_version": SCHEMA_VERSION,
            "device": device,
            "created": created,
            "machine": machine_now,
            "versions": vers,
            "options": {
                **common,
                "device": device,
                "backends": run.backends or list(BACKENDS),
                "precisions": run.precisions,
            },
            "results": results,
            "targets": targets,
            "failures": failures,
        }
        paths = write_outputs(doc, out_dir, stem(run, machine, device), html=run.html)
        print(markdown_table(results))
        if targets:
            print()
            print(targets_text(targets))
        for f in failures:
            print(
                f"FAILED: {f['backend']} {f['precision']} {f['device']}"
                + (f" on {f['audio']}" if f.get("audio") else "")
                + f": {f['error']}"
            )
        print()
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        sys.stdout.flush()
        if failures or not records:
            status = 1
    return status


def _clip_results(
    run: ClipsRun, impls: list[tuple[str, str]], clips: list[Clip], device: str, model: str, threads: int
) -> tuple[list[ClipResult], list[dict]]:
    """Each implementation on every clip, `run.rounds` times in turn (later rounds pooled into the
    first's); one result per implementation and clip, and the failures."""
    workers: dict[tuple[str, str], dict[str, Any]] = {}
    failures = []
    for round_index in range(run.rounds):
        for backend, precision in impls:
            if round_index and (backend, precision) not in workers:
                continue  # failed in an earlier round (already reported)
            log.info(
                f"--- {implementation_label(backend, precision)} {model} on {device}"
                + (f", round {round_index + 1} of {run.rounds}" if run.rounds > 1 else "")
                + " ---"
            )
            spec = WorkerSpec(
                kind="transcribe",
                backend=backend,
                model=model,
                device=device,
                precision=precision,
                threads=threads,
                clips=tuple(clips),
                repeats=run.repeats,
                options=run.decode,
            )
            t0 = time.perf_counter()
            worker = run_worker(spec, run.timeout)
            worker["wall_s"] = time.perf_counter() - t0
            if not worker.get("ok"):
                failures.append(
                    {
                        "backend": backend,
                        "model": model,
                        "device": device,
                        "precision": precision,
                        "error": worker.get("error", "unknown error"),
                    }
                )
                workers.pop((backend, precision), None)
            elif (backend, precision) in workers:
                merge_round(workers[backend, precision], worker)
                workers[backend, precision]["wall_s"] += worker["wall_s"]
            else:
                workers[backend, precision] = worker
    records = []
    for worker in workers.values():
        results, fails = make_records(worker, threads, run.repeats * run.rounds)
        for r in results:
            r.worker_wall_s = worker["wall_s"]
        records += results
        failures += fails
    return records, failures


def _run_batched(run: BatchedRun) -> int:
    impls = _implementations(run, run.devices, batched=True)
    clip = parse_clip(run.audio) if run.audio else parse_clip(LONG_FORM, audio_dir())
    out_dir = run.out or (QUICK_OUT if run.quick else DEFAULT_OUT)
    threads = os.cpu_count() or 1
    machine, vers = machine_info(), versions()
    status = 0
    for device in [device for device in impls if impls[device]]:
        for model in run.models:
            runs, failures = [], []
            for backend, precision in impls[device]:
                log.info(f"--- {implementation_label(backend, precision)} batched {model} on {device}: {clip.name} ---")
                spec = WorkerSpec(
                    kind="throughput",
                    backend=backend,
                    model=model,
                    device=device,
                    precision=precision,
                    threads=threads,
                    clips=(clip,),
                    repeats=run.repeats,
                    batch_sizes=tuple(run.batch_sizes),
                    options=run.decode,
                )
                worker = run_worker(spec, run.timeout)
                if worker.get("ok"):
                    runs.append(worker)
                    status |= any("error" in r for r in worker["rows"])
                else:
                    failures.append(
                        {"implementation": implementation_label(backend, precision), "error": worker.get("error")}
                    )
                    print(
                        f"FAILED: {implementation_label(backend, precision)} batched on {device}: {worker.get('error')}"
                    )
                    status = 1
            name = stem(run, machine, device, "batched", model)
            doc = {
                "schema_version": 1,
                "device": device,
                "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": machine,
                "versions": vers,
                "options": {
                    "repeats": run.repeats,
                    "batch_sizes": run.batch_sizes,
                    "threads": threads,
                    "background_load": run.background_load,
                    "decode": decode_json(run.decode),
                },
                "throughput": {
                    "model": model,
                    "audio": clip.name,
                    "audio_s": runs[0]["audio_s"] if runs else None,
                    "runs": runs,
                },
                "failures": failures,
            }
            add_batched_accuracy(doc)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
            if not runs:
                continue
            md = throughput_markdown(doc)
            (out_dir / f"{name}.md").write_text(md)
            if run.html:
                write_throughput_html(doc, out_dir / f"{name}.html")
            print(md)
            print(f"wrote {out_dir / name}.{{json,md{',html' if run.html else ''}}}")
    return int(status)


MODES = {
    "clips": Mode(
        "the default: each implementation transcribes each clip (speed, WER, agreement, targets)",
        _clips_arguments,
        ClipsRun,
        _run_clips,
    ),
    "batched": Mode(
        "batched long-form transcription (--batch-size: Silero VAD chunks, N at a time) of one long "
        f"clip (default {LONG_FORM}) at each --batch-sizes, MAX against faster-whisper's pipeline",
        _batched_arguments,
        BatchedRun,
        _run_batched,
    ),
    "streaming": Mode(
        "stream each clip through the live transcriber as if it arrived in real time: commit "
        "latency, compute share, WER",
        _streaming_arguments,
        StreamingRun,
        _run_streaming,
    ),
    "bulk": Mode(
        "bulk jobs (transcribe-many on Ray Data; max and faster backends, cpu) over the test clips "
        "repeated to --minutes of audio, at each of --workers without a batch size and at each "
        "--batch-sizes, beside the same files through transcribe() in one process and a job on two "
        "virtual nodes",
        _bulk_arguments,
        BulkRun,
        _run_bulk,
        ("bulk",),
    ),
    "serve": Mode(
        "the HTTP service under load: closed-loop clients against MAX with and without requests decoded "
        "together and faster-whisper, behind the same `serve` ingress",
        _serve_arguments,
        ServeRun,
        _run_serve,
        ("serve",),
    ),
    # realtime serves with server VAD: the 'batched' extra's
    "realtime": Mode(
        "live sessions of /v1/realtime?intent=transcription against one replica, streaming the "
        "lecture as it is spoken: for MAX fp32 and int8 and faster-whisper fp32 and int8 (narrow with "
        "--backends/--precisions), the most sessions that keep the p90 commit latency within --p90",
        _realtime_arguments,
        RealtimeRun,
        _run_realtime,
        ("serve", "batched"),
    ),
}
# the older spelling: a mode's flag, and its options' older names
MODE_FLAGS = {
    "--throughput": "batched",
    "--streaming": "streaming",
    "--bulk": "bulk",
    "--serve": "serve",
    "--realtime": "realtime",
}
OLD_NAMES = {
    "bulk": {"--bulk-workers": "--workers", "--bulk-minutes": "--minutes"},
    "serve": {"--serve-seconds": "--seconds", "--serve-concurrency": "--concurrency"},
    "realtime": {
        "--realtime-sessions": "--sessions",
        "--realtime-seconds": "--seconds",
        "--realtime-cpus": "--cpus",
        "--realtime-p90": "--p90",
    },
}


def with_mode(argv: list[str]) -> list[str]:
    """`bench` arguments with their mode first: as given where they start with one (or ask for
    help); else the older spelling's, its mode flag (`--streaming`; `clips` without one) made the
    subcommand and its options' older names (`--realtime-p90`) the mode's. Two mode flags are a
    MaxWhisperError."""
    if argv[:1] and (argv[0] in MODES or argv[0] in ("-h", "--help")):
        return argv
    flags = [a for a in argv if a in MODE_FLAGS]
    if len(flags) > 1:
        raise MaxWhisperError(
            f"{' and '.join(flags)} are modes of their own: run one at a time (maxwhisper bench {{{','.join(MODES)}}})"
        )
    mode = MODE_FLAGS[flags[0]] if flags else "clips"
    renamed = OLD_NAMES.get(mode, {})

    def spelled(arg: str) -> str:
        name, equals, value = arg.partition("=")
        return renamed.get(name, name) + equals + value

    return [mode, *(spelled(a) for a in argv if a not in MODE_FLAGS)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The modes as subcommands of `p` (`maxwhisper bench`), each parser of `p`'s class."""
    modes = p.add_subparsers(dest="mode", metavar="MODE", required=True)
    for name, mode in MODES.items():
        mode.add_arguments(modes.add_parser(name, help=mode.help, description=mode.help))
    p.epilog = "maxwhisper bench MODE --help: the mode's options. Without a mode: clips."


def spec_of(args: argparse.Namespace) -> Run:
    """The parsed arguments as their mode's spec; --quick narrows it (tiny.en, cpu, one repeat)."""
    spec = MODES[args.mode].spec
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(spec) if f.name != "decode"}
    if issubclass(spec, Measured):
        values["decode"] = DecodeOptions.from_values(vars(args))
    if values.get("quick"):
        values.update(models=["tiny.en"], devices=["cpu"], **({"repeats": 1} if "repeats" in values else {}))
    return spec(**values)


def _check_names(backends: list[str] | None, precisions: list[str] | None) -> None:
    bad = [b for b in backends or [] if b not in BACKENDS]
    if bad:
        raise BackendError(f"unknown backend(s) {', '.join(bad)}; valid: {', '.join(BACKENDS)}")
    bad = [p for p in precisions or [] if p not in PRECISIONS]
    if bad:
        raise BackendError(f"unknown precision(s) {', '.join(bad)}; valid: {', '.join(PRECISIONS)}")


def _implementations(
    run: Measured, devices: list[str] | None, batched: bool = False
) -> dict[str, list[tuple[str, str]]]:
    """The (backend, precision) pairs the run measures on each of `devices` (`_devices`), in run
    order: its backends' at its precisions (all when not given); `batched`: of the backends that
    take a batch size. Its names, models and devices are checked first, and a run with nothing to
    measure is refused before anything starts (it would write no results over older ones)."""
    _check_names(run.backends, run.precisions)
    for model in run.models:
        check_model_name(model)
    impls = {
        device: [
            (b, p)
            for b, p in IMPLEMENTATIONS[device]
            if b in (run.backends or BACKENDS)
            and (BACKENDS[b].batched or not batched)
            and (not run.precisions or p in run.precisions)
        ]
        for device in _devices(devices)
    }
    if not any(impls.values()):
        raise BackendError(
            f"nothing to measure: none of the backends {', '.join(run.backends or BACKENDS)} runs "
            f"{', '.join(run.precisions or ['any precision'])} on {', '.join(impls)}"
            + (" in this mode (max and faster only)" if batched else "")
        )
    return impls


def _devices(requested: list[str] | None) -> list[str]:
    if requested is None:
        return ["cpu"] + (["gpu"] if gpus() else [])
    bad = [d for d in requested if d not in IMPLEMENTATIONS]
    if bad:
        raise BackendError(f"unknown device(s) {', '.join(bad)}; valid: {', '.join(IMPLEMENTATIONS)}")
    return list(dict.fromkeys(requested))


def stem(
    run: ClipsRun | BatchedRun | StreamingRun,
    machine: dict,
    device: str,
    mode: str | None = None,
    model: str | None = None,
) -> str:
    """A results file's name: quick- under --quick, the mode (none for clips), the device's tag, the
    model, and -loadN under a background load."""
    name = "-".join(part for part in (mode, device_tag(device, machine), model) if part)
    return ("quick-" if run.quick else "") + name + (f"-load{run.background_load}" if run.background_load else "")


# keeps a core busy until this process ends, killed or not (a kill skips `main`'s clean-up)
SPINNER = """import os, sys
while os.getppid() == int(sys.argv[1]):
    for _ in range(100_000):
        pass
"""


def start_spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SPINNER, str(os.getpid())])  # (its parent may end before it reads)


def main(args: argparse.Namespace) -> int:
    """Runs the mode the arguments name; returns 0 when every implementation ran on every clip, else 1."""
    mode = MODES[args.mode]
    for extra in mode.extras:
        require(extra, f"maxwhisper bench {args.mode}")
    run = spec_of(args)
    if level := run.cpu_level or cpu_level():  # MAXWHISPER_CPU_LEVEL alone limits the other libraries too
        keep_to_cpu_level(level)
    spinners = [start_spinner() for _ in range(run.background_load)]
    try:
        return mode.run(run)
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maxwhisper.bench", description="benchmark MAX-Whisper against openai-whisper and faster-whisper"
    )
    add_arguments(p)
    return p


def cli(argv: list[str] | None = None) -> int:
    """`python -m maxwhisper.bench`: a mode (`with_mode` takes the older spelling), or a worker."""
    from .bulk import bulk_reference_worker
    from .streaming import streaming_worker

    show_messages()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return worker_main(argv[1], {**WORKERS, "streaming": streaming_worker, "bulk_reference": bulk_reference_worker})
    try:
        args = build_parser().parse_args(with_mode(argv))
        return main(args)
    except MaxWhisperError as e:
        log.error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
