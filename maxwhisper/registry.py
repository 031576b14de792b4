"""Backend name -> lazily imported transcriber class. Importing this module loads no backend."""
from __future__ import annotations

import importlib
import importlib.util

from .api import BackendError, Transcriber

# name -> (module, class, the package it needs, what it is)
BACKENDS = {
    "max": ("maxwhisper.max_backend", "MaxTranscriber", "max", "MAX Graph (this project)"),
    "openai": ("baselines.openai_backend", "OpenAITranscriber", "whisper", "openai-whisper (PyTorch)"),
    "faster": ("baselines.faster_backend", "FasterTranscriber", "faster_whisper", "faster-whisper (CTranslate2)"),
}
BACKEND_COLORS = {"max": "#e11d48", "openai": "#16a34a", "faster": "#0891b2"}  # the same in every chart
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def available_backends() -> list[str]:
    """Backends whose package is installed (they may still fail to load a given model)."""
    return [name for name, (_, _, package, _) in BACKENDS.items() if importlib.util.find_spec(package)]


def create_transcriber(backend: str, model: str = "tiny.en", device: str = "auto",
                       precision: str = "fp32", threads: int | None = None, kernels: bool = True) -> Transcriber:
    """Load `model` on `backend`. kernels=False: MAX's portable plan (`maxwhisper.graph.plan`).
    Raises BackendError/ModelError with a message meant for people."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if not kernels and backend != "max":
        raise BackendError("--no-kernels is an option of the MAX backend only")
    module, cls, package, label = BACKENDS[backend]
    if not importlib.util.find_spec(package):
        raise BackendError(f"backend {backend!r} needs {label}, which is not installed (pip install -r requirements.txt)")
    options = {"kernels": kernels} if backend == "max" else {}
    return getattr(importlib.import_module(module), cls)(model=model, device=device, precision=precision,
                                                         threads=threads, **options)
