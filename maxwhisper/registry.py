"""The backends by name, one record each (`api.Backend`), which the CLI, the app and the benchmark
read; importing this module loads no backend. MAX is built in. Other backends come from installed
packages through the entry-point group `maxwhisper.backends` (pyproject.toml declares the baselines'),
or from `register` where nothing is installed (the app from a bare checkout)."""
from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import importlib.util
import logging
from functools import cache
from pathlib import Path

from .api import Backend, BackendError, Transcriber
from .extras import MissingExtra, how_to_install

ENTRY_POINTS = "maxwhisper.backends"  # each names a Backend or a sequence of them


@cache
def cpu_field(name: str) -> str:
    """The first line's value of a /proc/cpuinfo field ("flags", "vendor_id", ...); empty where there
    is no such field or no /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), "")


# x86-64 levels (psABI) a process may compile for in place of its host CPU, by the /proc/cpuinfo flags
# each requires ("abm" is how Linux names LZCNT)
_V3 = frozenset("cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave".split())
CPU_LEVELS = {"x86-64-v3": _V3, "x86-64-v4": _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}}
_level: str | None = None  # the level set by `use_cpu_level`


def use_cpu_level(level: str) -> None:
    """Compile for every CPU of `level` (one of CPU_LEVELS) rather than for this one: `cpu_flags`
    answers the level's flags from now on, so the plans use no feature beyond it. Set before anything
    compiles (`maxwhisper warm --cpu-level`); refused where this CPU lacks one of its features."""
    if level not in CPU_LEVELS:
        raise BackendError(f"unknown CPU level {level!r}; valid levels: {', '.join(CPU_LEVELS)}")
    if missing := CPU_LEVELS[level] - host_cpu_flags():
        raise BackendError(f"this CPU cannot run code compiled for {level}: it lacks {', '.join(sorted(missing))}")
    global _level
    _level = level


def cpu_level() -> str | None:
    """The level set by `use_cpu_level`, None when compiling for this CPU."""
    return _level


def host_cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as /proc/cpuinfo lists them (avx2, avx512_vnni, avx512_bf16, ...);
    empty where there is no /proc/cpuinfo."""
    return frozenset(cpu_field("flags").split())


def cpu_flags() -> frozenset[str]:
    """The flags the compiled code may use: this CPU's, or the level's (`use_cpu_level`)."""
    return CPU_LEVELS[_level] if _level else host_cpu_flags()


BF16_MISSING = "--precision bf16 needs a CPU with AVX512_BF16 (vdpbf16ps), which this one has not: use fp32 or int8"


def has_bf16() -> bool:
    """Whether the CPU has bfloat16 dot products (AVX512_BF16), which MAX bf16 needs."""
    return "avx512_bf16" in cpu_flags()


_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18  # x86-64 Linux


@cache
def amx_permitted() -> bool:
    """Whether this process may run AMX tiles with bfloat16 and int8 products: the CPU has them and
    Linux gave the process their state (asked for here, once; Linux 5.16 or later)."""
    if not {"amx_tile", "amx_bf16", "amx_int8"} <= cpu_flags():
        return False
    try:
        syscall = ctypes.CDLL(None).syscall
        return syscall(ctypes.c_long(_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                       ctypes.c_long(_XFEATURE_XTILEDATA)) == 0
    except (OSError, AttributeError):
        return False


def bf16_attention_pays() -> bool:
    """Whether int8's encoder attention is faster in bfloat16 than in float32 here: on AMD's CPUs with
    AVX512_BF16, and where AMX tiles run its products. On an Intel Xeon without the tiles the
    bfloat16 attention was the slower (docs/design.md, "int8 on the CPU")."""
    return has_bf16() and (cpu_field("vendor_id") == "AuthenticAMD" or amx_permitted())


MAX = Backend(name="max", label="MAX", description="MAX Graph (this project)", color="#e11d48",
              module="maxwhisper.max_backend", cls="MaxTranscriber", package="max", extra=None,
              precisions={"cpu": ("fp32", "int8", "bf16") if has_bf16() else ("fp32", "int8"),
                          "gpu": ("fp32", "fp16")},
              batched=True)
BACKENDS: dict[str, Backend] = {MAX.name: MAX}  # in the order the app and the benchmark show them
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
OTHER_COLOR = "#64748b"  # a backend no record names (e.g. in an old benchmark file)


def color(backend: str) -> str:
    return BACKENDS[backend].color if backend in BACKENDS else OTHER_COLOR


def register(*backends: Backend) -> None:
    """Adds backends by their records; a name already registered keeps its record."""
    for b in backends:
        BACKENDS.setdefault(b.name, b)


def _discover() -> None:
    """Registers the backends of the installed packages' entry points, in the entry points' order
    by name; one that fails to load is logged and left out."""
    for entry in sorted(importlib.metadata.entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        try:
            found = entry.load()
        except Exception:  # noqa: BLE001 - a broken plugin must not take the built-in backend down
            logging.getLogger(__name__).warning("backend entry point %s could not be loaded", entry.value,
                                                exc_info=True)
            continue
        register(*(found if isinstance(found, (tuple, list)) else (found,)))


_discover()


def available_backends() -> list[str]:
    """Backends whose package is installed (they may still fail to load a given model)."""
    return [b.name for b in BACKENDS.values() if importlib.util.find_spec(b.package)]


def installed_backend(backend: str) -> Backend:
    """`backend`'s record: BackendError where no backend has that name, MissingExtra where its
    package is not installed."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    b = BACKENDS[backend]
    if not importlib.util.find_spec(b.package):
        install = how_to_install(b.extra) if b.extra else b.package
        raise MissingExtra(f"backend {backend!r} ({b.description}) needs {install}")
    return b


def create_transcriber(backend: str, model: str = "tiny.en", device: str = "auto",
                       precision: str = "fp32", threads: int | None = None, kernels: bool = True,
                       max_batch: int = 1) -> Transcriber:
    """Load `model` on `backend`. kernels=False: MAX's portable plan (`maxwhisper.graph.plan`);
    max_batch > 1: MAX decodes transcriptions called from several threads at once together.
    Raises BackendError/ModelError with a message meant for people."""
    b = installed_backend(backend)
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if not kernels and backend != "max":
        raise BackendError("--no-kernels is an option of the MAX backend only")
    if max_batch != 1 and backend != "max":
        raise BackendError("max_batch (requests decoded together) is an option of the MAX backend only")
    options = {"kernels": kernels, "max_batch": max_batch} if backend == "max" else {}
    return getattr(importlib.import_module(b.module), b.cls)(model=model, device=device, precision=precision,
                                                             threads=threads, **options)


def create_warmed_up(backend: str, every_graph: bool = False, **kwargs) -> Transcriber:
    """`create_transcriber`, then one transcription of 1 s of silence, so that no implementation's
    first-call costs land in a timed transcription (the app's models, the service's replicas); a
    failure of that transcription is raised. MAX's first graph call also gives the thread its runtime
    starts a coarse timer slack (`graph.model.timer_slack`). every_graph: MAX's graphs that the
    silence did not need too (a prompt with earlier text, a live stream's draft, word timestamps,
    beams), compiled now or loaded from the cache, so that no later call waits for one."""
    import numpy as np

    from .audio import SAMPLE_RATE

    transcriber = create_transcriber(backend, **kwargs)
    transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))
    if every_graph and hasattr(transcriber, "compile_rest"):
        for name, seconds in transcriber.compile_rest():
            logging.getLogger(__name__).info("%s %s: %s ready in %.1f s", backend, transcriber.model, name, seconds)
    return transcriber
