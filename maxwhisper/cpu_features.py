"""What this CPU can run, as the plans and the backends' precisions ask: /proc/cpuinfo's fields and
feature flags, the x86-64 level the compiled code may be limited to (`use_cpu_level`, set once per
process before anything compiles: by `maxwhisper warm --cpu-level`, or MAXWHISPER_CPU_LEVEL in the
environment), bfloat16 dot products, and AMX tiles (their state requested from Linux once per process,
`amx_permitted`)."""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

from .api import BackendError


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
CPU_LEVEL_ENV = "MAXWHISPER_CPU_LEVEL"  # a level every process compiles for, as an AVX2 machine on a newer one
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
    """The level set by `use_cpu_level` or named by MAXWHISPER_CPU_LEVEL (set then, on first asking), None
    when compiling for this CPU."""
    if _level is None and (named := os.environ.get(CPU_LEVEL_ENV, "").strip()):
        if named not in CPU_LEVELS:
            raise BackendError(f"{CPU_LEVEL_ENV}={named!r} is no CPU level; valid levels: {', '.join(CPU_LEVELS)}")
        use_cpu_level(named)
    return _level


def host_cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as /proc/cpuinfo lists them (avx2, avx512_vnni, avx512_bf16, ...);
    empty where there is no /proc/cpuinfo."""
    return frozenset(cpu_field("flags").split())


def cpu_flags() -> frozenset[str]:
    """The flags the compiled code may use: this CPU's, or the level's (`use_cpu_level`)."""
    return CPU_LEVELS[level] if (level := cpu_level()) else host_cpu_flags()


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
        return (
            syscall(ctypes.c_long(_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM), ctypes.c_long(_XFEATURE_XTILEDATA))
            == 0
        )
    except (OSError, AttributeError):
        return False


def bf16_attention_pays() -> bool:
    """Whether int8's encoder attention is faster in bfloat16 than in float32 here: on AMD's CPUs with
    AVX512_BF16, and where AMX tiles run its products; elsewhere float32's is the faster
    (measured: docs/design.md, "int8 on the CPU")."""
    return has_bf16() and (cpu_field("vendor_id") == "AuthenticAMD" or amx_permitted())


def int16_attention_pays() -> bool:
    """Whether int8's encoder attention is faster on `vpmaddwd` over 12- and 16-bit integers than
    in float32 here: where the vectors are AVX2's, not AVX-512's (measured on a Zen 3:
    docs/design.md, "int8 on the CPU")."""
    flags = cpu_flags()
    return "avx2" in flags and "avx512f" not in flags
