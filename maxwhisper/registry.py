"""The backends by name, one record each (`api.Backend`), which the CLI, the app and the benchmark
read; importing this module loads no backend. MAX is built in (its CPU precisions by the CPU's
features, `cpu_features`). Other backends come from installed packages through the entry-point group
`maxwhisper.backends` (pyproject.toml declares the baselines'), or from `register` where nothing is
installed (the app from a bare checkout)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging

from .api import Backend, BackendError, Transcriber
from .cpu_features import has_bf16
from .extras import MissingExtra, how_to_install

ENTRY_POINTS = "maxwhisper.backends"  # each names a Backend or a sequence of them


MAX = Backend(
    name="max",
    label="MAX",
    description="MAX Graph (this project)",
    color="#e11d48",
    module="maxwhisper.max_backend",
    cls="MaxTranscriber",
    package="max",
    extra=None,
    precisions={"cpu": ("fp32", "int8", "bf16") if has_bf16() else ("fp32", "int8"), "gpu": ("fp32", "fp16")},
    batched=True,
    compiles=True,
    kernels=True,
    decodes_together=True,
)
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
            logging.getLogger(__name__).warning(
                "backend entry point %s could not be loaded", entry.value, exc_info=True
            )
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


def _which(capability: str) -> str:
    """The backends with `capability` as a message names them: "the MAX backend"."""
    labels = [b.label for b in BACKENDS.values() if getattr(b, capability)]
    return f"the {' and '.join(labels)} backend{'s' if len(labels) > 1 else ''}"


def create_transcriber(
    backend: str,
    model: str = "tiny.en",
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    kernels: bool = True,
    max_batch: int = 1,
) -> Transcriber:
    """Load `model` on `backend`. kernels=False: MAX's portable plan (`maxwhisper.graph.plan`);
    max_batch > 1: MAX decodes transcriptions called from several threads at once together.
    Raises BackendError/ModelError with a message meant for people."""
    b = installed_backend(backend)
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if not kernels and not b.kernels:
        raise BackendError(f"--no-kernels is an option of {_which('kernels')} only")
    if max_batch != 1 and not b.decodes_together:
        raise BackendError(f"max_batch (requests decoded together) is an option of {_which('decodes_together')} only")
    options = {
        **({"kernels": kernels} if b.kernels else {}),
        **({"max_batch": max_batch} if b.decodes_together else {}),
    }
    return getattr(importlib.import_module(b.module), b.cls)(
        model=model, device=device, precision=precision, threads=threads, **options
    )


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
