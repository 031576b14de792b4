"""One implementation's subprocess (`python -m maxwhisper.bench --worker SPEC.json`, a
`specs.WorkerSpec`): it loads the model once, times its transcriptions (per clip, or batched at each
batch size) and writes its figures as JSON; `run_worker` is the parent's side. `worker_main` runs
the kind of work it is given (`WORKERS` here, and `bench.streaming`'s and `bench.bulk`'s, which use
this module): the command line gives it all, so imports go one way."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..extras import checkout
from .clips import load_clip
from .machine import current_rss_mib, gpu_memory_mib, peak_rss_mib
from .records import implementation_label, median_or_none, spread
from .specs import WorkerSpec

log = logging.getLogger(__name__)


def _timings(result) -> dict[str, float | None]:
    t = result.timings
    return {"total_s": t.total_s, "features_s": t.features_s, "encode_s": t.encode_s, "decode_s": t.decode_s}


def ready_transcriber(spec: WorkerSpec):
    """The spec's transcriber with every graph ready, as the app's and the service's are (MAX's
    `compile_rest`, its seconds in compile_s): no timed run decodes without the token run graph."""
    from ..registry import create_transcriber

    t = create_transcriber(
        spec.backend, model=spec.model, device=spec.device, precision=spec.precision, threads=spec.threads
    )
    for _ in getattr(t, "compile_rest", tuple)():
        pass
    return t


def _transcribe_worker(spec: WorkerSpec) -> dict[str, Any]:
    options = spec.options
    rss_before = current_rss_mib()
    t = ready_transcriber(spec)
    out: dict[str, Any] = {
        "ok": True,
        "backend": t.backend,
        "model": t.model,
        "device": t.device,
        "precision": t.precision,
        "load_s": t.load_s,
        "compile_s": t.compile_s,
        "rss_before_load_mib": rss_before,
        "rss_after_load_mib": current_rss_mib(),
        "clips": [],
    }
    label = f"[{t.backend} {t.precision} {t.device}]"
    log.info(f"{label} loaded {t.model}: load {t.load_s:.2f} s, compile {t.compile_s:.2f} s")
    for clip in spec.clips:
        entry: dict[str, Any] = {"audio": clip.name}
        try:
            audio = load_clip(clip)
            gc.collect()
            warm = t.transcribe(audio, options)
            runs = []
            for _ in range(spec.repeats):
                gc.collect()
                r = t.transcribe(audio, options)
                runs.append((r, _timings(r)))
            last = runs[-1][0]
            entry.update(
                audio_s=last.audio_s,
                warmup_s=warm.timings.total_s,
                runs=[tm for _, tm in runs],
                text=last.text,
                tokens=[int(x) for x in last.tokens],
                language=last.language,
                deterministic=all(r.tokens == warm.tokens for r, _ in runs),
                peak_rss_mib=peak_rss_mib(),
                gpu_mem_mib=gpu_memory_mib() if t.device == "gpu" else None,
            )
            med = statistics.median(tm["total_s"] for _, tm in runs)
            log.info(
                f"{label} {clip.name}: {last.audio_s:.1f} s of audio, median {med:.3f} s "
                f"({last.audio_s / med:.1f}x real time) over {len(runs)} run(s)"
            )
        except Exception as e:  # noqa: BLE001 - one clip's failure is reported, the others still run
            entry["error"] = f"{type(e).__name__}: {e}"
            log.error(f"{label} {clip.name}: FAILED {entry['error']}")
            if os.environ.get("MAXWHISPER_DEBUG"):
                traceback.print_exc()
        out["clips"].append(entry)
    return out


def _throughput_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Batched long-form transcription (`DecodeOptions.batch_size`) of one clip at each batch size,
    through the public transcriber API."""
    from ..api import SAMPLE_RATE

    t = ready_transcriber(spec)
    clip = spec.clips[0]
    audio = load_clip(clip)
    options = spec.options
    label = f"[{spec.backend} {t.precision} {t.device} batched]"
    log.info(f"{label} loaded {t.model}: load {t.load_s:.2f} s, compile {t.compile_s:.2f} s; {clip.name}")
    rows = []
    for batch in spec.batch_sizes:
        row: dict[str, Any] = {"batch_size": batch}
        try:
            batched = dataclasses.replace(options, batch_size=batch)
            t.transcribe(audio, batched)  # warm-up
            runs = []
            for _ in range(spec.repeats):
                gc.collect()
                runs.append(t.transcribe(audio, batched))
            s = spread(r.timings.total_s for r in runs)
            last = runs[-1]
            row.update(
                total_s_median=s["median"],
                total_s_min=s["min"],
                total_s_max=s["max"],
                encode_s=median_or_none(r.timings.encode_s for r in runs),
                decode_s=median_or_none(r.timings.decode_s for r in runs),
                audio_s_per_s=last.audio_s / s["median"],
                n_chunks=len({seg.seek for seg in last.segments}),
                text=last.text,
                chunk_tokens=[list(seg.tokens) for seg in last.segments],
                peak_rss_mib=peak_rss_mib(),
                gpu_mem_mib=gpu_memory_mib() if t.device == "gpu" else None,
            )
            log.info(f"{label} batch {batch}: median {s['median']:.2f} s, {row['audio_s_per_s']:.1f} audio s/s")
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: say so, go on
            row["error"] = f"{type(e).__name__}: {e}"
            log.error(f"{label} batch {batch}: FAILED {row['error']}")
            if os.environ.get("MAXWHISPER_DEBUG"):
                traceback.print_exc()
        rows.append(row)
    return {
        "ok": True,
        "backend": spec.backend,
        "model": t.model,
        "device": t.device,
        "precision": t.precision,
        "implementation": implementation_label(spec.backend, t.precision),
        "load_s": t.load_s,
        "compile_s": t.compile_s,
        "audio": clip.name,
        "audio_s": len(audio) / SAMPLE_RATE,
        "rows": rows,
    }


WORKERS = {"transcribe": _transcribe_worker, "throughput": _throughput_worker}  # WorkerSpec.kind -> its work


def worker_main(spec_path: str, kinds: Mapping[str, Callable[[WorkerSpec], dict[str, Any]]]) -> int:
    """`python -m maxwhisper.bench --worker SPEC.json`: run one implementation with the function
    `kinds[spec.kind]`, write its JSON to `spec.out`."""
    spec = WorkerSpec.from_json(Path(spec_path).read_text())
    try:
        result = kinds[spec.kind](spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which records the failure
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        log.error(f"[{spec.backend} {spec.precision} {spec.device}] FAILED: {result['error']}")
    result["worker_peak_rss_mib"] = peak_rss_mib()
    Path(spec.out).write_text(json.dumps(result))
    return 0


def run_worker(spec: WorkerSpec, timeout: float | None) -> dict[str, Any]:
    """Runs one worker subprocess; its stdout and stderr go to our stderr (progress, library noise)."""
    with tempfile.TemporaryDirectory(prefix="maxwhisper-bench-") as tmp:
        spec = dataclasses.replace(spec, out=str(Path(tmp) / "result.json"))
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(spec.to_json())
        env = os.environ.copy()
        env.setdefault("MODULAR_TELEMETRY_ENABLED", "0")
        root = checkout()
        if root is not None:  # the worker imports the checkout's maxwhisper, as this process, installed or not
            env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
        sys.stderr.flush()
        try:  # the worker's stdout goes to our stderr (fd 2): our stdout is the report
            proc = subprocess.run(
                [sys.executable, "-m", "maxwhisper.bench", "--worker", str(spec_path)],
                env=env,
                stdout=2,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:g} s"}
        out = Path(spec.out)
        if not out.exists():
            return {
                "ok": False,
                "error": f"worker exited with code {proc.returncode} without a result "
                "(crashed or killed, e.g. out of memory)",
            }
        return json.loads(out.read_text())
