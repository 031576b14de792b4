"""The Mojo kernels (`kernels/`) as the package a Graph's `custom_extensions` loads: compiled once
per source and compiler version into this project's folder of MAX's cache (or copied from the
package shipped in `prebuilt/`, so that a new machine does not compile it), for the CPU target set
before the first compile (`cpu_target`); `ship_kernel_library` ships it again after a kernel changes."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import threading
from pathlib import Path

from max import driver

from ..cpu_features import cpu_flags, cpu_level

KERNELS = Path(__file__).parent / "kernels"  # Mojo custom ops (their source package)
SHIPPED_KERNELS = Path(__file__).parent / "prebuilt"  # KERNELS compiled, shipped with the code (`ship_kernel_library`)
AMX_TARGET = "sapphirerapids"  # LLVM's first CPU with AMX: every CPU with AMX has its features


def cache_folder() -> Path:
    """This project's folder in MAX's cache (compiled kernels and graphs)."""
    return Path(os.environ.get("MODULAR_CACHE_DIR", Path.home() / ".cache" / "modular")) / "maxwhisper"


@functools.cache
def _kernels_digest(folder: Path) -> str:
    """The digest of a folder's kernel sources and the compiler: read and hashed once per process and
    folder (every graph built or loaded asks for the package)."""
    digest = hashlib.sha256(importlib.metadata.version("mojo-compiler").encode())
    for source in sorted(folder.glob("*.mojo")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def kernel_package_name() -> str:
    """The file name of `KERNELS`' compiled package: a digest of their sources and the compiler's version."""
    return f"kernels_{_kernels_digest(KERNELS)}.mojoc"


_compiling = threading.Lock()  # one compile of the package at a time in a process (`start_kernel_library`)


def start_kernel_library() -> None:
    """`kernel_library` started on a thread of its own: the compiler runs while the caller loads
    weights (a cold cache's first seconds)."""
    threading.Thread(target=kernel_library, name="kernel-library", daemon=True).start()


@functools.cache
def cpu_target() -> str:
    """The CPU that MAX compiles our kernels for, set before the first compile: the host's (""), a
    level's (`cpu_features.use_cpu_level`), or AMX_TARGET on a host with AMX. MAX names the host CPU by its
    model number, and a virtual machine can report an older model than its features: the kernels
    would then compile without its AVX512_BF16 (docs/design.md#the-cpu-target). A target set already
    is kept."""
    if not driver.get_virtual_cpu_target():
        if cpu_level():
            driver.set_virtual_cpu_target(cpu_level())
        elif {"amx_tile", "avx512_bf16", "avx512_vnni"} <= cpu_flags():
            driver.set_virtual_cpu_target(AMX_TARGET)
    return driver.get_virtual_cpu_target()


def kernel_library() -> Path:
    """`KERNELS` compiled to a Mojo package, once per source and compiler version, for a Graph's
    `custom_extensions`: given the source folder, MAX recompiles it for every Graph. When the package
    shipped with the code (`SHIPPED_KERNELS`) has this name, it is copied instead: a new machine does
    not compile it. Sets `cpu_target`."""
    cpu_target()
    cache = cache_folder()
    package = cache / kernel_package_name()
    if package.exists():
        return package
    with _compiling:
        if not package.exists():
            _place_kernels(cache, package)
    return package


def _place_kernels(cache: Path, package: Path) -> None:
    """`package` in `cache`: the shipped one copied, or the kernels compiled under the package's final
    name (the compiler bakes it in), in a folder of this call's own (processes may race on a cold
    cache), then moved into place atomically."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="staging-", dir=cache) as staging:
        staged = Path(staging) / package.name
        if (SHIPPED_KERNELS / package.name).exists():
            shutil.copyfile(SHIPPED_KERNELS / package.name, staged)
        else:
            compile_kernels(staged)
        os.replace(staged, package)


def compile_kernels(package: Path) -> None:
    """`KERNELS` compiled to `package`. The compiler runs in their parent folder and is given their
    folder's name, so the package records its sources as `kernels/<file>.mojo`: it is the same byte
    for byte wherever the code lives, and the one shipped can be checked against the sources."""
    from mojo.run import subprocess_run_mojo

    done = subprocess_run_mojo(
        ["precompile", KERNELS.name, "-o", str(package.resolve())], cwd=KERNELS.parent, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"compiling the Mojo kernels in {KERNELS} failed:\n{done.stderr[-2000:]}")


def ship_kernel_library() -> Path:
    """`KERNELS` compiled into `SHIPPED_KERNELS`, in place of the package shipped before (after
    changing a kernel: tests/test_max_model.py checks the shipped package against the sources)."""
    package = SHIPPED_KERNELS / kernel_package_name()
    SHIPPED_KERNELS.mkdir(exist_ok=True)
    compile_kernels(package)
    for old in SHIPPED_KERNELS.glob("*.mojoc"):
        if old != package:
            old.unlink()
    return package
