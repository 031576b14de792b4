"""The backends, one record each, which the CLI, the app and the benchmark read; importing this
module loads no backend. A new backend is its transcriber's module plus one record in BACKENDS."""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .api import BackendError, Transcriber


@dataclass(frozen=True)
class Backend:
    name: str  # --backend's value
    label: str  # short, in the benchmark's tables: "MAX fp32"
    description: str  # in the app and in messages
    color: str  # the same in every chart
    module: str  # imported only when a model is loaded on it
    cls: str  # the Transcriber class in `module`
    package: str  # the module it needs installed
    precisions: dict[str, tuple[str, ...]]  # device it supports -> its precisions there, in the benchmark's order
    batched: bool = False  # takes DecodeOptions.batch_size (bench --throughput)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (avx2, avx512_vnni, avx512_bf16, ...);
    empty where there is no /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


BF16_MISSING = "--precision bf16 needs a CPU with AVX512_BF16 (vdpbf16ps), which this one has not: use fp32 or int8"


def has_bf16() -> bool:
    """Whether the CPU has bfloat16 dot products (AVX512_BF16), which MAX bf16 needs."""
    return "avx512_bf16" in cpu_flags()


BACKENDS = {b.name: b for b in (
    Backend(name="max", label="MAX", description="MAX Graph (this project)", color="#e11d48",
            module="maxwhisper.max_backend", cls="MaxTranscriber", package="max",
            precisions={"cpu": ("fp32", "int8", "bf16") if has_bf16() else ("fp32", "int8"), "gpu": ("fp32", "fp16")},
            batched=True),
    Backend(name="openai", label="openai-whisper", description="openai-whisper (PyTorch)", color="#16a34a",
            module="baselines.openai_backend", cls="OpenAITranscriber", package="whisper",
            precisions={"cpu": ("fp32",), "gpu": ("fp32", "fp16")}),
    Backend(name="faster", label="faster-whisper", description="faster-whisper (CTranslate2)", color="#0891b2",
            module="baselines.faster_backend", cls="FasterTranscriber", package="faster_whisper",
            precisions={"cpu": ("fp32", "int8"), "gpu": ("fp32", "fp16", "int8")}, batched=True),
)}
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
OTHER_COLOR = "#64748b"  # a backend no record names (e.g. in an old benchmark file)


def color(backend: str) -> str:
    return BACKENDS[backend].color if backend in BACKENDS else OTHER_COLOR


def available_backends() -> list[str]:
    """Backends whose package is installed (they may still fail to load a given model)."""
    return [b.name for b in BACKENDS.values() if importlib.util.find_spec(b.package)]


def create_transcriber(backend: str, model: str = "tiny.en", device: str = "auto",
                       precision: str = "fp32", threads: int | None = None, kernels: bool = True,
                       max_batch: int = 1) -> Transcriber:
    """Load `model` on `backend`. kernels=False: MAX's portable plan (`maxwhisper.graph.plan`);
    max_batch > 1: MAX decodes transcriptions called from several threads at once together.
    Raises BackendError/ModelError with a message meant for people."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if not kernels and backend != "max":
        raise BackendError("--no-kernels is an option of the MAX backend only")
    if max_batch != 1 and backend != "max":
        raise BackendError("max_batch (requests decoded together) is an option of the MAX backend only")
    b = BACKENDS[backend]
    if not importlib.util.find_spec(b.package):
        raise BackendError(f"backend {backend!r} needs {b.description}, which is not installed "
                           "(pip install -r requirements.txt)")
    options = {"kernels": kernels, "max_batch": max_batch} if backend == "max" else {}
    return getattr(importlib.import_module(b.module), b.cls)(model=model, device=device, precision=precision,
                                                             threads=threads, **options)


def create_warmed_up(backend: str, **kwargs) -> Transcriber:
    """`create_transcriber`, then one transcription of 1 s of silence, so that no implementation's
    first-call costs land in a timed transcription (the app's models, the service's replicas); a
    failure of that transcription is raised. MAX's first graph call also gives the thread its runtime
    starts a coarse timer slack (`graph.model.timer_slack`)."""
    import numpy as np

    from .audio import SAMPLE_RATE

    transcriber = create_transcriber(backend, **kwargs)
    transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))
    return transcriber
