"""`maxwhisper warm`: compiles every graph MAX runs for the given models, precisions and device into
MAX's disk cache (`MODULAR_CACHE_DIR`, else ~/.cache/modular), so that a build step (a Space's or a
Docker image's, a GPU box's setup) pays the compile once and a later process's first transcript
compiles nothing. `--cpu-level` compiles for any CPU of an x86-64 level, for a cache built on
another machine than the one that runs it; `--device gpu --arch sm_90,...` compiles the GPU's
graphs for those architectures on any machine, CPU-only ones included, and keeps them where a real
GPU loads them in milliseconds (`gpu_compile`). One line per compiled unit with its seconds. Exit 2
for a bad model, precision, device, level or architecture, said before anything compiles; 1 when a
compile fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cpu_features import CPU_LEVELS
    from .registry import DEVICES

    p.add_argument(
        "--model",
        type=_csv,
        default=["tiny.en"],
        help="comma-separated installed models, CTranslate2 folders or .pt files (default: tiny.en)",
    )
    p.add_argument(
        "--precision",
        type=_csv,
        default=["fp32"],
        help="comma-separated: fp32, int8, bf16 on the CPU; fp32, fp16 on a GPU (default: fp32)",
    )
    p.add_argument("--device", default="auto", choices=list(DEVICES), help="auto (default): the GPU when there is one")
    p.add_argument(
        "--no-kernels",
        dest="kernels",
        action="store_false",
        help="the portable graphs (MAX's ops only), as `transcribe --no-kernels` runs them",
    )
    p.add_argument(
        "--arch",
        type=_csv,
        default=None,
        help="with --device gpu: comma-separated CUDA architectures to compile for on this machine, "
        "with or without a GPU (sm_80: A100, sm_86: A10, sm_89: L4/L40, sm_90: H100/H200)",
    )
    p.add_argument(
        "--cpu-level",
        choices=list(CPU_LEVELS),
        help="compile for every CPU of this x86-64 level, not this CPU only: for a cache built on "
        "another machine than the one that runs it (a Space's or an image's build)",
    )


def main(args: argparse.Namespace) -> int:
    from .api import BackendError
    from .checkpoint import check_model_name, load_checkpoint
    from .cpu_features import use_cpu_level
    from .graph.kernel_package import start_kernel_library
    from .graph.model import MaxWhisper, check_precision, resolve_device
    from .registry import PRECISIONS

    if args.cpu_level:
        if args.device != "cpu" or not args.kernels:
            raise BackendError("--cpu-level compiles the CPU kernels' graphs: give it with --device cpu")
        if "bf16" in args.precision:
            raise BackendError("bf16 needs AVX512_BF16, which no x86-64 level has: warm bf16 without --cpu-level")
        use_cpu_level(args.cpu_level)  # before anything compiles
    if not args.model or not args.precision:
        raise BackendError("--model and --precision each need at least one name")
    if args.arch is not None:
        return _warm_archs(args)
    for model in args.model:
        check_model_name(model)
    if unknown := [p for p in args.precision if p not in PRECISIONS]:
        raise BackendError(f"unknown precision {', '.join(unknown)}; valid precisions: {', '.join(PRECISIONS)}")
    device, note = resolve_device(args.device)
    for precision in args.precision:
        check_precision(device, precision, args.kernels)
    if note:
        log.info(f"note: --device auto compiles for the CPU: {note}")
    if device == "cpu" and args.kernels:
        start_kernel_library()  # the Mojo kernels compile while the first checkpoint loads
    checkpoints = {model: load_checkpoint(model) for model in args.model}  # one not installed: its message first

    failed, units, start = 0, 0, time.perf_counter()
    for model, checkpoint in checkpoints.items():
        for precision in args.precision:
            where = f"{model} {precision} {device}"
            try:
                net = MaxWhisper(checkpoint, device, precision, kernels=args.kernels)
                print(f"{where}: {'+'.join(net.graphs)} {net.compile_s:.1f} s", flush=True)
                units += 1
                for name, seconds in net.compile_rest():
                    print(f"{where}: {name} {seconds:.1f} s", flush=True)
                    units += 1
            except Exception as e:  # noqa: BLE001 - one failure is reported; the other models still warm
                print(f"{where}: FAILED: {type(e).__name__}: {e}", flush=True)
                failed += 1
    cache = os.environ.get("MODULAR_CACHE_DIR") or Path.home() / ".cache" / "modular"
    print(
        f"{units} compiled units ready in {cache} in {time.perf_counter() - start:.1f} s"
        + (f"; {failed} failed" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


def _warm_archs(args: argparse.Namespace) -> int:
    """--arch: each model's GPU graphs compiled for each architecture on virtual devices (`gpu_compile`)."""
    from argparse import Namespace

    from .api import BackendError
    from .gpu_compile import ARCHS, check, compile_arch

    if args.device != "gpu" or not args.kernels:
        raise BackendError("--arch compiles the GPU's graphs: give it with --device gpu")
    if not args.arch:
        raise BackendError(f"--arch needs at least one architecture: {', '.join(ARCHS)}")
    jobs = [Namespace(arch=args.arch, precision=args.precision, model=model, graphs=None) for model in args.model]
    for job in jobs:
        check(job)  # every model and architecture checked before anything compiles
    start = time.perf_counter()
    rows = [row for job in jobs for arch in job.arch for row in compile_arch(arch, job)]
    failed = sum(not row["ok"] for row in rows)
    print(
        f"{len(rows) - failed} GPU graphs ready for {', '.join(args.arch)} in {time.perf_counter() - start:.1f} s"
        + (f"; {failed} failed" if failed else ""),
        flush=True,
    )
    return 1 if failed or not rows else 0
