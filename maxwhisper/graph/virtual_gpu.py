"""Compiling the GPU path's graphs for an NVIDIA GPU that is not there, and keeping them.

MAX can target a virtual device: set its API, architecture and count before the first
`InferenceSession`, and `session.compile(graph)` compiles for that target. Each graph's compiled
artifact is exported where a real GPU of that architecture looks for it (`compiled.artifact_paths`),
so it loads there in milliseconds instead of compiling for minutes. One process serves one
architecture (the setting is global), so `maxwhisper.gpu_compile` runs one child process per
architecture.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from max import driver
from max.engine import InferenceSession
from max.graph import DeviceRef

from ..checkpoint import Checkpoint
from .compiled import artifact_paths, compile_graph
from .layers import WeightBank
from .model import DTYPES, build_graph, graph_names
from .plan import make_plan
from .weights import graph_arrays


def compile_for(arch: str, ckpt: Checkpoint, precisions: list[str], graphs: list[str] | None = None) -> Iterator[dict]:
    """Compile each graph of the GPU plan (all, or those named in `graphs`) for a virtual CUDA GPU
    of architecture `arch` (e.g. "sm_90") in each precision and export its artifact, unless it is
    there already; yield one row per graph: graph, precision, arch, ok, kept (the artifact was
    there), seconds, error (the failure's first line, or None). Call once per process."""
    driver.set_virtual_device_api("cuda")
    driver.set_virtual_device_target_arch(arch)
    driver.set_virtual_device_count(1)
    session = InferenceSession(devices=[driver.Accelerator()])
    arrays = graph_arrays(ckpt.state, ckpt.dims)
    for precision in precisions:
        copies: dict = {}
        plan = make_plan(WeightBank(arrays, DTYPES[precision], DeviceRef.GPU(), copies), ckpt.dims)
        for name in graph_names(plan):
            if graphs and name not in graphs:
                continue
            start, error, kept = time.perf_counter(), None, False
            try:
                graph = build_graph(name, arrays, ckpt.dims, plan, copies)[0]
                paths = artifact_paths(graph, arch)
                kept = paths[0].exists()
                if not kept:
                    compile_graph(session, graph, paths, kernels=False)
                    if not paths[0].exists():
                        raise OSError("compiled, but its artifact could not be written to the cache")
            except Exception as e:  # noqa: BLE001 - a failure is the result being reported
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            yield {
                "graph": name,
                "precision": precision,
                "arch": arch,
                "ok": error is None,
                "kept": kept,
                "seconds": round(time.perf_counter() - start, 1),
                "error": error,
            }
