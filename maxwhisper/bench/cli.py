"""The benchmark's command: its flags (`add_arguments`, which `python -m maxwhisper bench` wires in),
the runs per device and model (`main`; `--throughput`: the batched mode; `--streaming`: see
streaming.py; `--bulk`: see bulk.py; `--serve`: serve.py; `--realtime`: realtime.py), and
`python -m maxwhisper.bench` (`cli`, which also runs a worker's `--worker SPEC.json`)."""
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
from pathlib import Path
from typing import Any

from ..__main__ import finite_float, positive_seconds, show_messages, temperatures
from ..api import DecodeOptions
from ..checkpoint import check_model_name
from ..extras import require
from ..registry import BACKENDS, PRECISIONS
from .clips import DEFAULT_CLIPS, LONG_FORM, audio_dir, parse_clip, resolve_clips
from .machine import device_tag, gpus, machine_info, versions
from .records import (IMPLEMENTATIONS, add_accuracy, add_batched_accuracy, compute_targets, implementation_label,
                      make_records, merge_round)
from .report import markdown_table, targets_text, throughput_markdown, write_outputs, write_throughput_html
from .bulk import bulk_reference_worker, main_bulk
from .realtime import P90_BOUND_S
from .streaming import STREAMING_CLIPS, main_streaming, stream_offsets, streaming_worker
from .worker import WORKERS, run_worker, worker_main

log = logging.getLogger(__name__)
DEFAULT_OUT = Path("benchmarks") / "results"  # under the current folder: a checkout's root holds the committed results
QUICK_OUT = Path(tempfile.gettempdir()) / "maxwhisper-bench"  # --quick without --output: never the committed results
SCHEMA_VERSION = 2  # the per-clip results' JSON; 1: `rtfx` was named `rtf` (the same value)


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", type=_csv, default=None,
                   help=f"comma-separated: {','.join(BACKENDS)} (default: all)")
    p.add_argument("--models", type=_csv, default=["tiny.en"], help="comma-separated model names (default: tiny.en)")
    p.add_argument("--devices", type=_csv, default=None,
                   help="comma-separated: cpu, gpu (default: cpu, plus gpu when nvidia-smi lists one)")
    p.add_argument("--precisions", type=_csv, default=None,
                   help="only these precisions (default: " + "; ".join(
                       f"{device} " + " ".join(f"{b}/{p}" for b, p in impls)
                       for device, impls in IMPLEMENTATIONS.items()) + ")")
    p.add_argument("--audio", nargs="+", default=None, metavar="FILE|FOLDER",
                   help="audio files or folders; FILE#left / FILE#right / FILE#N takes one channel (default: "
                        + ", ".join(DEFAULT_CLIPS) + " from the shared audio folder)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per clip after 1 warm-up (default 5)")
    p.add_argument("--rounds", type=_positive_int, default=1,
                   help="run the implementations in turn this many times and pool their timed runs (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: jfk.flac, 1 repeat, tiny.en, cpu, all backends; files are named quick-* and "
                        f"go to {QUICK_OUT} unless --output is given")
    p.add_argument("--output", "--out", dest="out", type=Path, default=None,
                   help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--no-html", dest="html", action="store_false", help="skip the Plotly chart")
    p.add_argument("--background-load", type=_non_negative_int, default=0, metavar="N",
                   help="keep N cores busy with spinning processes while measuring (a shared machine); the "
                        "output names get -loadN (default 0)")
    p.add_argument("--timeout", type=positive_seconds, default=3600.0,
                   help="seconds one implementation may take over all clips (default 3600)")
    g = p.add_argument_group("batched mode (max and faster backends)")
    g.add_argument("--throughput", action="store_true",
                   help="batched long-form transcription (--batch-size: Silero VAD chunks, N at a time) of one long "
                        f"clip (default {LONG_FORM}) at each --batch-sizes, MAX against faster-whisper's pipeline")
    g.add_argument("--batch-sizes", type=_positive_ints, default=[1, 8], help="default 1,8")
    b = p.add_argument_group("bulk mode (transcribe-many on Ray Data; max and faster backends, cpu)")
    b.add_argument("--bulk", action="store_true",
                   help="bulk jobs over the shared clips repeated to --bulk-minutes of audio, at each of "
                        "--bulk-workers without a batch size and at each --batch-sizes, beside the same files "
                        "through transcribe() in one process and a job on two virtual nodes")
    b.add_argument("--bulk-workers", type=_positive_ints, default=[1, 2], metavar="N,N", help="default 1,2")
    b.add_argument("--bulk-minutes", type=_positive_minutes, default=30.0, metavar="M",
                   help="at least this much audio (default 30)")
    s = p.add_argument_group("streaming mode")
    s.add_argument("--streaming", action="store_true",
                   help="stream each clip (default " + ", ".join(STREAMING_CLIPS) + ") through the live "
                        "transcriber as if it arrived in real time: commit latency, compute share, WER")
    s.add_argument("--chunk", type=positive_seconds, default=1.0, metavar="S",
                   help="seconds of audio per chunk (default 1.0)")
    s.add_argument("--streams", type=_positive_int, default=1, metavar="N",
                   help="streams of each clip per implementation, the k-th with its chunk boundaries shifted by "
                        "k x chunk / N, to the millisecond (at most the chunk's milliseconds); the aims are judged "
                        "over all of them (default 1)")
    v = p.add_argument_group("service mode")
    v.add_argument("--serve", action="store_true",
                   help="the HTTP service under load: closed-loop clients against MAX with and without requests "
                        "decoded together and faster-whisper, behind the same `serve` ingress")
    v.add_argument("--serve-seconds", type=positive_seconds, default=20.0, metavar="S",
                   help="seconds of load per clip and concurrency (default 20)")
    v.add_argument("--serve-concurrency", type=_positive_ints, default=[1, 4, 16], help="clients (default 1,4,16)")
    r = p.add_argument_group("realtime mode")
    r.add_argument("--realtime", action="store_true",
                   help="live sessions of /v1/realtime?intent=transcription against one replica, streaming the "
                        "lecture as it is spoken: for MAX fp32 and int8 and faster-whisper fp32 and int8 (narrow "
                        "with --backends/--precisions), the most sessions that keep the p90 commit latency within "
                        "--realtime-p90")
    r.add_argument("--realtime-sessions", type=_positive_ints, default=list(range(1, 17)), metavar="N,N",
                   help="the session counts to try, in order, until one does not keep up (default 1,2,...,16)")
    r.add_argument("--realtime-seconds", type=positive_seconds, default=None, metavar="S",
                   help="stream the lecture's first S seconds (default: all 203 s)")
    r.add_argument("--realtime-cpus", type=positive_seconds, default=2.0, metavar="N",
                   help="CPUs of the one model replica (default 2)")
    r.add_argument("--realtime-p90", type=positive_seconds, default=P90_BOUND_S, metavar="S",
                   help=f"the p90 commit latency that N sessions must keep to count as keeping up (default "
                        f"{P90_BOUND_S:g}; results with another bound go to files named -p90-S)")
    d = p.add_argument_group("decoding (the same for every implementation)")
    d.add_argument("--beam-size", type=_positive_int, default=1, help="1 = greedy (default)")
    d.add_argument("--temperature", type=temperatures, action="append", default=None, metavar="T",
                   help="fallback schedule: repeat the flag or give a comma list (default 0,0.2,0.4,0.6,0.8,1.0 "
                        "as openai-whisper)")
    d.add_argument("--language", default=None, help="language code (default: English for .en models, else detect)")


def _devices(requested: list[str] | None) -> list[str]:
    from ..api import BackendError

    if requested is None:
        return ["cpu"] + (["gpu"] if gpus() else [])
    bad = [d for d in requested if d not in IMPLEMENTATIONS]
    if bad:
        raise BackendError(f"unknown device(s) {', '.join(bad)}; valid: {', '.join(IMPLEMENTATIONS)}")
    return list(dict.fromkeys(requested))


# keeps a core busy until this process ends, killed or not (a kill skips `main`'s clean-up)
SPINNER = """import os, sys
while os.getppid() == int(sys.argv[1]):
    for _ in range(100_000):
        pass
"""


def start_spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SPINNER, str(os.getpid())])  # (its parent may end before it reads)


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark; returns 0 when every implementation ran on every clip, else 1."""
    spinners = [start_spinner() for _ in range(args.background_load)]
    try:
        return _main(args)
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def _main(args: argparse.Namespace) -> int:
    from ..api import BackendError

    # each mode's extras, said before anything starts: realtime serves with server VAD (the 'batched' extra's)
    for mode, extras in (("serve", ("serve",)), ("bulk", ("bulk",)), ("realtime", ("serve", "batched"))):
        for extra in extras if getattr(args, mode) else ():
            require(extra, f"maxwhisper bench --{mode}")
    if args.quick:
        args.models, args.repeats, args.devices = ["tiny.en"], 1, ["cpu"]
    backends = args.backends or list(BACKENDS)
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise BackendError(f"unknown backend(s) {', '.join(bad)}; valid: {', '.join(BACKENDS)}")
    bad = [p for p in args.precisions or [] if p not in PRECISIONS]
    if bad:
        raise BackendError(f"unknown precision(s) {', '.join(bad)}; valid: {', '.join(PRECISIONS)}")
    for model in args.models:
        check_model_name(model)
    devices = _devices(args.devices)
    if not (args.serve or args.realtime):  # what each device runs: nothing to run writes no results over older ones
        impls = {device: _implementations(args, backends, device) for device in (["cpu"] if args.bulk else devices)}
        if not any(impls.values()):
            raise BackendError(f"nothing to measure: none of the backends {', '.join(backends)} runs "
                               f"{', '.join(args.precisions or ['any precision'])} on {', '.join(impls)}"
                               + (" in this mode (max and faster only)" if args.throughput or args.bulk else ""))
        devices = [device for device in devices if impls.get(device)]
    clips = resolve_clips(args.audio, quick=args.quick)
    options = DecodeOptions.from_values(vars(args))
    out_dir = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    threads = os.cpu_count() or 1
    machine, vers = machine_info(), versions()
    decode_dict = dataclasses.asdict(options)
    decode_dict["temperature"] = list(options.temperature)
    common = {"models": args.models, "repeats": args.repeats, "rounds": args.rounds, "warmup": 1, "threads": threads,
              "background_load": args.background_load,
              "quick": args.quick, "decode": decode_dict, "clips": [dataclasses.asdict(c) for c in clips]}
    if args.throughput:
        return _main_throughput(args, impls, clips, decode_dict, threads, machine, vers, out_dir)
    if args.bulk:
        return max(main_bulk(args, impls["cpu"], model, decode_dict, machine, vers, out_dir,
                             f"bulk-{device_tag('cpu', machine)}-{model}") for model in args.models)
    if args.serve:
        from .serve import main_serve

        return main_serve(args, out_dir)
    if args.realtime:
        from .realtime import main_realtime

        return main_realtime(args, out_dir)
    if args.streaming:
        stream_offsets(args.chunk, args.streams)  # refuses more streams than it can shift apart
        if not (args.audio or args.quick):
            clips = [parse_clip(name, audio_dir()) for name in STREAMING_CLIPS]
        status = 0
        for device in devices:
            for model in args.models:
                stem = ("quick-" if args.quick else "") + f"streaming-{device_tag(device, machine)}-{model}" \
                    + _load_suffix(args)
                status |= main_streaming(args, clips, impls[device], device, model, decode_dict, threads, machine,
                                         vers, out_dir, stem)
        return status

    status = 0
    for device in devices:
        created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        load_before = machine["load_average"]
        records, failures = [], []
        for model in args.models:
            workers: dict[tuple[str, str], dict[str, Any]] = {}  # the first round's output, later rounds pooled in
            for round_index in range(args.rounds):
                for backend, precision in impls[device]:
                    if round_index and (backend, precision) not in workers:
                        continue  # failed in an earlier round (already reported)
                    log.info(f"--- {implementation_label(backend, precision)} {model} on {device}"
                         + (f", round {round_index + 1} of {args.rounds}" if args.rounds > 1 else "") + " ---")
                    spec = {"kind": "transcribe", "backend": backend, "model": model, "device": device,
                            "precision": precision, "threads": None if backend == "max" else threads,
                            "clips": common["clips"], "repeats": args.repeats, "options": decode_dict}
                    t0 = time.perf_counter()
                    worker = run_worker(spec, args.timeout)
                    worker["wall_s"] = time.perf_counter() - t0
                    if not worker.get("ok"):
                        failures.append({"backend": backend, "model": model, "device": device, "precision": precision,
                                         "error": worker.get("error", "unknown error")})
                        workers.pop((backend, precision), None)
                    elif (backend, precision) in workers:
                        merge_round(workers[backend, precision], worker)
                        workers[backend, precision]["wall_s"] += worker["wall_s"]
                    else:
                        workers[backend, precision] = worker
            for worker in workers.values():
                recs, fails = make_records(worker, threads, args.repeats * args.rounds)
                for r in recs:
                    r["worker_wall_s"] = worker["wall_s"]
                records += recs
                failures += fails
        add_accuracy(records)
        targets = compute_targets(records, vnni=device == "cpu" and "VNNI" in (machine.get("vector_isa") or ""))
        load_end = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        machine_now = {**machine, "load_average": load_before, "load_average_end": load_end}
        doc = {"schema_version": SCHEMA_VERSION, "device": device, "created": created, "machine": machine_now,
               "versions": vers, "options": {**common, "device": device,
                                              "backends": backends, "precisions": args.precisions},
               "results": records, "targets": targets, "failures": failures}
        stem = ("quick-" if args.quick else "") + device_tag(device, machine) + _load_suffix(args)
        paths = write_outputs(doc, out_dir, stem, html=args.html)
        print(markdown_table(records))
        if targets:
            print()
            print(targets_text(targets))
        for f in failures:
            print(f"FAILED: {f['backend']} {f['precision']} {f['device']}"
                  + (f" on {f['audio']}" if f.get("audio") else "") + f": {f['error']}")
        print()
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        sys.stdout.flush()
        if failures or not records:
            status = 1
    return status


def _implementations(args: argparse.Namespace, backends: list[str], device: str) -> list[tuple[str, str]]:
    """The (backend, precision) pairs the run measures on `device`, in run order: `backends`' at
    --precisions (all when not given); the batched modes (--throughput, --bulk) take max and faster."""
    batched = args.throughput or args.bulk
    return [(b, p) for b, p in IMPLEMENTATIONS[device] if b in backends and (BACKENDS[b].batched or not batched)
            and (not args.precisions or p in args.precisions)]


def _load_suffix(args) -> str:
    return f"-load{args.background_load}" if args.background_load else ""


def _main_throughput(args, impls: dict[str, list[tuple[str, str]]], clips, decode_dict, threads, machine, vers,
                     out_dir) -> int:
    clip = clips[0] if args.audio else parse_clip(LONG_FORM, audio_dir())
    status = 0
    for device in [device for device in impls if impls[device]]:
        for model in args.models:
            runs, failures = [], []
            for backend, precision in impls[device]:
                log.info(f"--- {implementation_label(backend, precision)} batched {model} on {device}: {clip.name} ---")
                spec = {"kind": "throughput", "backend": backend, "model": model, "device": device,
                        "precision": precision, "threads": None if backend == "max" else threads,
                        "clips": [dataclasses.asdict(clip)], "repeats": args.repeats,
                        "batch_sizes": args.batch_sizes, "options": decode_dict}
                worker = run_worker(spec, args.timeout)
                if worker.get("ok"):
                    runs.append(worker)
                    status |= any("error" in r for r in worker["rows"])
                else:
                    failures.append({"implementation": implementation_label(backend, precision),
                                     "error": worker.get("error")})
                    print(f"FAILED: {implementation_label(backend, precision)} batched on {device}: "
                          f"{worker.get('error')}")
                    status = 1
            stem = (("quick-" if args.quick else "") + f"batched-{device_tag(device, machine)}-{model}"
                    + _load_suffix(args))
            doc = {"schema_version": 1, "device": device,
                   "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine, "versions": vers,
                   "options": {"repeats": args.repeats, "batch_sizes": args.batch_sizes, "threads": threads,
                               "background_load": args.background_load, "decode": decode_dict},
                   "throughput": {"model": model, "audio": clip.name,
                                  "audio_s": runs[0]["audio_s"] if runs else None, "runs": runs},
                   "failures": failures}
            add_batched_accuracy(doc)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
            if not runs:
                continue
            md = throughput_markdown(doc)
            (out_dir / f"{stem}.md").write_text(md)
            if args.html:
                write_throughput_html(doc, out_dir / f"{stem}.html")
            print(md)
            print(f"wrote {out_dir / stem}.{{json,md{',html' if args.html else ''}}}")
    return int(status)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m maxwhisper.bench",
                                description="benchmark MAX-Whisper against openai-whisper and faster-whisper")
    add_arguments(p)
    return p


def cli(argv: list[str] | None = None) -> int:
    from ..api import MaxWhisperError

    show_messages()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return worker_main(argv[1], {**WORKERS, "streaming": streaming_worker, "bulk_reference": bulk_reference_worker})
    args = build_parser().parse_args(argv)
    try:
        return main(args)
    except MaxWhisperError as e:
        log.error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
