"""Compiled graphs kept on disk as MAX artifacts (`.mef`), so that a process loads a model's graphs
without compiling them again.

MAX's own compile cache still takes most of a second per graph on a hit; an exported artifact
loads in milliseconds and runs the same code. An artifact is found by a digest of everything its
code depends on: the graphs' text (their ops, shapes, dtypes and constants; the weights are the
registry's, bound after loading), the MAX version, and the target:
- on the CPU, the Mojo kernel package the graphs call (named by its own digest) and the CPU it was
  compiled for (the host and `kernel_package.cpu_target`, or an x86-64 level that any CPU having its
  features runs: a cache built elsewhere). Graphs compiled together go into one MAX `Module` and
  one artifact: a cold compile pays MAX's fixed cost per compile once for all of them
  (docs/design.md, "Start-up"). tiny.en's first graphs compiled for x86-64-v3 ship with the code
  (`SHIPPED_GRAPHS`, `ship_first_graphs`): on a CPU whose best level that is, a first transcript
  compiles nothing;
- on a GPU, its architecture (`gpu_arch`): an artifact compiled for a virtual GPU of that
  architecture on any machine, CPU-only ones included (`maxwhisper warm --device gpu --arch`),
  loads on a real one, where MAX's own cache from such a compile is not reused (docs/design.md#the-gpu).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from max.engine import InferenceSession
from max.graph import Graph, Module
from max.graph.graph import KernelLibrary

from ..cpu_features import CPU_LEVEL_ENV, CPU_LEVELS, cpu_level, host_cpu_flags
from .kernel_package import SHIPPED_KERNELS, cache_folder, cpu_target, kernel_library

SHIPPED_GRAPHS = SHIPPED_KERNELS / "graphs"  # artifacts shipped with the code, for SHIPPED_LEVEL
SHIPPED_LEVEL = "x86-64-v3"  # AVX2: the best level of the CPUs a free Space or a laptop is likely to have
SHIPPED_MODEL, SHIPPED_PRECISIONS = "tiny.en", ("fp32", "int8")  # the app's, the command's and the service's default
# features beyond every level that the kernels use (AVX-VNNI's `vpdpbusd` on ymm): a CPU with one
# compiles its own first graphs rather than load the shipped ones
KERNEL_EXTRAS = frozenset({"avx_vnni"})

logger = logging.getLogger(__name__)


@cache
def _cpu() -> str:
    """The CPU that compiled code is specialised for: its model and instruction set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    fields = ("model name", "flags", "Features", "CPU part")  # x86 and ARM spellings
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in fields}))


def gpu_arch(device) -> str:
    """The architecture a GPU's artifacts are compiled for, as MAX's virtual devices name it:
    "sm_90" for an H100, whose own name may carry a feature suffix ("sm_90a")."""
    return re.sub(r"^(sm_\d+)[a-z]*$", r"\1", device.architecture_name)


def artifact_paths(graphs: Graph | Sequence[Graph], gpu: str | None = None) -> list[Path]:
    """Where the artifact of `graphs` compiled together may live, the one this process writes first.
    On a GPU of architecture `gpu` ("sm_90", `gpu_arch`) one place. On the CPU: compiled for this
    CPU (or for the level it compiles for, `cpu_features.use_cpu_level`), then for each level this CPU
    can run, the highest first (a cache that `maxwhisper warm --cpu-level` built on another machine),
    then the one shipped for the highest level (`SHIPPED_GRAPHS`): a CPU of a newer level than those
    shipped, or with one of KERNEL_EXTRAS, compiles its own, whose code uses its extras."""
    graphs = [graphs] if isinstance(graphs, Graph) else list(graphs)
    name, texts = "+".join(g.name for g in graphs), [str(graph) for graph in graphs]
    level_texts = [_PACKAGE_PATH.sub(r'"\1"', _COUNTER.sub("", text)) for text in texts]
    if gpu:
        return [_artifact_path(f"{name}.{gpu}", level_texts, "gpu", gpu)]
    if level := cpu_level():
        cached = _artifact_path(name, level_texts, level, cpu_target())
        return [cached, SHIPPED_GRAPHS / cached.name]
    host = host_cpu_flags()
    levels = [level for level, flags in reversed(CPU_LEVELS.items()) if flags <= host]
    cached = [_artifact_path(name, level_texts, level, level) for level in levels]
    shipped = [SHIPPED_GRAPHS / p.name for p in cached[:1]] if not host & KERNEL_EXTRAS else []
    return [_artifact_path(name, texts, _cpu(), cpu_target()), *cached, *shipped]


# each graph's text ends with a counter of MAX's that differs between a process compiling for a level
# and one for its host; it names nothing the code depends on. Left in the host's key, which it always
# was, so that caches already built stay valid
_COUNTER = re.compile(r"\{counter = \d+ : i64\}")
# the kernel package's path in a graph's text: a level's key names the package by its file name alone
# (its digest is in the key), so that an artifact serves wherever the cache lives
_PACKAGE_PATH = re.compile(r'"[^"]*/(kernels_[0-9a-f]+\.mojoc)"')


def _artifact_path(name: str, texts: list[str], cpu: str, target: str) -> Path:
    digest = hashlib.sha256()
    # the kernel package only where a graph calls it (its text names it): a changed kernel compiles
    # those graphs again, not the portable plan's or the GPU's
    kernels = kernel_library().name if cpu != "gpu" and any(".mojoc" in text for text in texts) else ""
    for part in (importlib.metadata.version("max"), cpu, kernels, target, *texts):
        digest.update(part.encode() + b"\0")
    return cache_folder() / "graphs" / f"{name}_{digest.hexdigest()[:24]}.mef"


_unchecked = threading.local()  # .on: graphs built on this thread skip MAX's custom op check


@contextlib.contextmanager
def custom_ops_unchecked():
    """Graphs built on this thread meanwhile skip MAX's check of each custom op against the kernel
    package: the check reads the whole package first, most of a model's load in a new process, and
    a graph whose artifact exists was checked when it was compiled from the same text and package."""
    before = getattr(_unchecked, "on", False)
    _unchecked.on = True
    try:
        yield
    finally:
        _unchecked.on = before


# private to MAX: graphs check their ops through it. A MAX without it keeps its own check (every
# graph is then built checked, only slower to load)
_verify_custom_op = getattr(KernelLibrary, "verify_custom_op", None)
if _verify_custom_op is not None:

    def _check_custom_op(library: KernelLibrary, op) -> None:
        if not getattr(_unchecked, "on", False):
            _verify_custom_op(library, op)

    KernelLibrary.verify_custom_op = _check_custom_op


def compile_graph(
    session: InferenceSession,
    graph: Graph | Module | Callable[[], Graph | Module],
    paths: Sequence[Path] | None = None,
    kernels: bool = True,
):
    """`graph` compiled for `session`: from the first of its artifacts that exists, else compiled
    and its artifact exported for the next process. `graph`: a Graph, a Module of graphs built with
    `module=`, or what builds one of them when it must be compiled (then with `paths`, as a Module
    must be: its `artifact_paths`, the first where this process writes). kernels: a Module's graphs
    call the Mojo kernel package (the CPU's)."""
    if paths is None:
        paths = artifact_paths(graph)
    for path in paths:
        if path.exists():
            try:
                loaded = session.compile(str(path))
            except Exception as error:  # noqa: BLE001 - an unreadable artifact (a damaged disk, a copied cache) compiles again
                logger.warning(
                    "MAX cannot load the compiled graph %s (%s): it compiles it again",
                    path.name,
                    str(error).splitlines()[0] if str(error) else type(error).__name__,
                )
                if path.parent != SHIPPED_GRAPHS:
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            if path.parent == SHIPPED_GRAPHS:  # into the cache too, where it serves every CPU of its level
                with contextlib.suppress(OSError):
                    _place(path, cache_folder() / "graphs" / path.name)
            return loaded
    unit = graph if isinstance(graph, Graph | Module) else graph()
    # a Module's graphs call the kernel package too, but only a Graph names it to the session itself
    library = [kernel_library()] if kernels and isinstance(unit, Module) else None
    compiled = session.compile(unit, custom_extensions=library)
    try:
        _export(compiled, paths[0])
    except Exception as error:  # noqa: BLE001 - a read-only or full cache: the next process compiles again
        name = unit.name if isinstance(unit, Graph) else "+".join(unit.top_level_graph_names())
        warnings.warn(f"could not keep the compiled graph {name} on disk: {error}", stacklevel=2)
    return compiled


def _export(compiled, path: Path) -> None:
    """`compiled`'s artifact written to `path`, under a name of its own and renamed into place:
    processes may race on a cold cache."""
    _staged(compiled.export_mef, path)


def _place(shipped: Path, path: Path) -> None:
    """A shipped artifact copied to `path` in the cache, unless it is there already."""
    if not path.exists():
        _staged(lambda staged: shutil.copyfile(shipped, staged), path)


def _staged(write: Callable[[str], object], path: Path) -> None:
    """`write(staged)` to a file of this call's own beside `path`, then renamed to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(staged)
        os.replace(staged, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)


_FIRST_GRAPHS_FOR_LEVEL = """
import sys
from maxwhisper.checkpoint import load_checkpoint
from maxwhisper.graph.compiled import custom_ops_unchecked
from maxwhisper.graph.model import MaxWhisper, first_graphs

checkpoint = load_checkpoint(sys.argv[1])
for precision in sys.argv[2:]:
    net = MaxWhisper(checkpoint, "cpu", precision)
    with custom_ops_unchecked():
        graphs = [net.build(name)[0] for name in first_graphs(net.plan)]
    print(next(path for path in net.artifacts(graphs) if path.exists()))
"""


def ship_first_graphs() -> list[Path]:
    """SHIPPED_MODEL's first graphs (`model.first_graphs`) in each of SHIPPED_PRECISIONS compiled for
    SHIPPED_LEVEL, into SHIPPED_GRAPHS in place of those shipped before: after changing a kernel or one
    of those graphs, or MAX or the Mojo compiler (tests/test_max_model.py checks that a new process
    compiling for the level compiles none of them). Compiled in a process of its own, with the level
    set and an empty cache, where a shipped one is not current (one that is stays); minutes."""
    with tempfile.TemporaryDirectory(prefix="maxwhisper-ship-") as cache:
        env = {"MODULAR_TELEMETRY_ENABLED": "0", **os.environ, CPU_LEVEL_ENV: SHIPPED_LEVEL, "MODULAR_CACHE_DIR": cache}
        done = subprocess.run(
            [sys.executable, "-c", _FIRST_GRAPHS_FOR_LEVEL, SHIPPED_MODEL, *SHIPPED_PRECISIONS],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"compiling the first graphs for {SHIPPED_LEVEL} failed:\n{done.stderr[-2000:]}")
        built = [Path(line) for line in done.stdout.splitlines() if line.endswith(".mef")]
        if len(built) != len(SHIPPED_PRECISIONS):
            raise RuntimeError(f"compiling the first graphs for {SHIPPED_LEVEL} named {len(built)} artifacts")
        SHIPPED_GRAPHS.mkdir(parents=True, exist_ok=True)
        for path in built:
            if path.parent != SHIPPED_GRAPHS:
                shutil.copyfile(path, SHIPPED_GRAPHS / path.name)
    shipped = [SHIPPED_GRAPHS / path.name for path in built]
    for old in SHIPPED_GRAPHS.glob("*.mef"):
        if old not in shipped:
            old.unlink()
    return shipped
