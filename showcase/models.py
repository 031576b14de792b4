"""Transcribers loaded once and kept (`ModelCache`), each warmed up by a first transcription
(`maxwhisper.registry.create_warmed_up`, as the service's replicas), and where MAX's compile cache
and the record of load times live.

`ModelCache` keeps, per (backend, model, device, precision), one transcriber for the process, with
a status line for people while it loads (the first MAX compile takes minutes on a CPU) and the time
each load took, kept beside MAX's compile cache for the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maxwhisper.registry import BACKENDS, create_transcriber

from .formatting import error_message, label, load_text, markdown_list

log = logging.getLogger(__name__)

LOAD_RECORD = "maxwhisper-load-times.json"


def compile_cache_dir() -> Path:
    return Path(os.environ.get("MODULAR_CACHE_DIR") or Path.home() / ".cache" / "modular")


def load_record_path() -> Path:
    """Where the app keeps how long each model took to load: beside MAX's compile cache, which decides it."""
    return compile_cache_dir().parent / LOAD_RECORD


def use_persistent_storage(data: Path = Path("/data")) -> None:
    """On a Space with persistent storage (`/data`, writable), keep MAX's compile cache there so that a
    restart loads the compiled graphs in seconds. Call before `max` is imported; an explicit
    MODULAR_CACHE_DIR wins."""
    if "MODULAR_CACHE_DIR" not in os.environ and data.is_dir() and os.access(data, os.W_OK):
        os.environ["MODULAR_CACHE_DIR"] = str(data / "modular")


def backend_precision(backend: str, device: str, precision: str) -> str:
    """`precision` where `backend` has it on `device`, else fp32 (openai-whisper has no int8)."""
    return precision if precision in BACKENDS[backend].precisions.get(device, ()) else "fp32"


def _names(keys) -> str:
    """'openai-whisper and faster-whisper': the implementations of `keys`, in the registry's order."""
    backends = {key[0] for key in keys}
    return " and ".join(BACKENDS[b].label for b in BACKENDS if b in backends)


BUSY = ("loading", "compiling")  # the states in which a model's graphs are being compiled


class ModelCache:
    """Transcribers keyed by (backend, model, device, precision), created once and reused.

    Thread-safe: callers asking for the same key wait for a single load (a request that arrives
    during the start-up warm-up waits for it instead of compiling again); different keys load
    independently. A failed load is not kept: the next request tries again. With `record`, the
    seconds each load took are kept in that JSON file and quoted while the same key loads again.
    """

    def __init__(self, create: Callable = create_transcriber, record: Path | None = None):
        self._create = create
        self._record = record
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._loaded: dict[tuple, object] = {}
        # key -> (one of BUSY, t0) or ("ready" | "failed", text)
        self._state: dict[tuple, tuple[str, float | str]] = {}

    def get(self, backend: str, model: str, device: str, precision: str = "fp32"):
        key = (backend, model, device, precision)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._loaded:
                self._state[key] = ("loading", time.monotonic())
                try:
                    t = self._create(backend, model=model, device=device, precision=precision)
                except Exception as e:
                    self._state[key] = ("failed", error_message(e))
                    raise
                self._loaded[key] = t
                self._state[key] = ("ready", load_text(t.load_s, t.compile_s))
                self._remember(key, t.load_s + t.compile_s)
            return self._loaded[key]

    def loaded(self, backend: str, model: str, device: str, precision: str = "fp32") -> bool:
        return (backend, model, device, precision) in self._loaded

    def warm_up(self, keys: list[tuple[str, str, str]], then: Callable[[], None] | None = None) -> threading.Thread:
        """Load (backend, model, device) for each key in a background thread, in order; then call `then`."""

        def run():
            for key in keys:
                try:
                    self.get(*key)
                except Exception:  # noqa: BLE001 - recorded in the status; a request will show it
                    log.exception("warm-up of %s failed", key)
            if then is not None:
                then()

        thread = threading.Thread(target=run, name="maxwhisper-warm-up", daemon=True)
        thread.start()
        return thread

    def compile_rest(self) -> None:
        """Every loaded model's graphs that its warm-up did not need, one model at a time (MAX's step
        graph for a prompt with earlier text and a live stream's drafts, word timestamps', beams'),
        so that a long upload, a live stream's second update or a beam search waits for none. The
        model answers meanwhile, its state reading "compiling", so a run beside it says it shared the CPU."""
        for key, transcriber in list(self._loaded.items()):
            if not hasattr(transcriber, "compile_rest"):
                continue
            self._state[key] = ("compiling", time.monotonic())
            try:
                for name, seconds in transcriber.compile_rest():
                    log.info("%s: %s ready in %.1f s", "/".join(key), name, seconds)
            except Exception:  # noqa: BLE001 - the graph's first use compiles it again and says what fails
                log.exception("compiling the other graphs of %s failed", key)
            # every graph's compile so far, as a run's timings give it (the Compare tab's Details)
            self._state[key] = ("ready", load_text(transcriber.load_s, transcriber.compile_s))

    def busy(self) -> bool:
        return any(state in BUSY for state, _ in list(self._state.values()))

    def _load_times(self) -> dict[str, float]:
        try:
            return json.loads(self._record.read_text(encoding="utf-8")) if self._record else {}
        except (OSError, ValueError):
            return {}

    def _remember(self, key: tuple, seconds: float) -> None:
        if self._record is None:
            return
        times = {**self._load_times(), "/".join(key): round(seconds, 1)}
        try:
            self._record.parent.mkdir(parents=True, exist_ok=True)
            self._record.write_text(json.dumps(times, indent=1), encoding="utf-8")
        except OSError as e:
            log.warning("cannot keep the load times in %s: %s", self._record, e)

    def expected_load(self, backend: str, model: str, device: str, precision: str = "fp32") -> str:
        """Roughly how long loading the key takes here: the last load's time, or what a first load costs."""
        seconds = self._load_times().get("/".join((backend, model, device, precision)))
        if seconds is not None:
            return f"about {math.ceil(seconds)} s" + (" last time here" if BACKENDS[backend].compiles else "")
        if BACKENDS[backend].compiles:
            return f"seconds, or minutes the first time on a {device.upper()}"
        return "seconds"

    def loading_text(self, backend: str, model: str, device: str, precision: str = "fp32") -> str:
        what = f"compiling the {BACKENDS[backend].label} graphs" if BACKENDS[backend].compiles else "loading"
        return f"{what} for {model} on {device} ({self.expected_load(backend, model, device, precision)})"

    def load_note(self, backends: list[str], model: str, device: str, precision: str = "fp32") -> str:
        """One line of Markdown on what the next run of `backends` loads first and about how long
        that takes ("First run with **base**: MAX compiles it (minutes …); openai-whisper loads it
        (seconds)."), or "" when all is loaded."""
        keys = [(b, model, device, backend_precision(b, device, precision)) for b in BACKENDS if b in backends]
        missing = [key for key in keys if not self.loaded(*key)]
        if not missing:
            return ""
        by_time: dict[str, list[str]] = {}  # backends that take as long, in the page's order
        for key in missing:
            by_time.setdefault(self.expected_load(*key), []).append(key[0])
        parts = [
            f"{' and '.join(BACKENDS[b].label for b in names)} "
            f"{'compile' if all(BACKENDS[b].compiles for b in names) else 'load'}{'' if len(names) > 1 else 's'} "
            f"it ({seconds})"
            for seconds, names in by_time.items()
        ]
        name = model if all(key[3] == "fp32" for key in missing) else f"{model} {precision}"
        return f"First run with **{name}**: " + "; ".join(parts) + "."

    def badge(self) -> str:
        """One plain sentence while models load: what a visitor can do now and what they wait for
        ("You can press Run now: openai-whisper answers at once, MAX once it has compiled tiny.en
        (about 40 s last time here)."); "ready: …" while MAX prepares its other graphs; a load that
        failed; "" when none of these."""
        states = list(self._state.items())
        failed = [key for key, (state, _) in states if state == "failed"]
        if failed:
            return f"⚠ {BACKENDS[failed[0][0]].label} {failed[0][1]} failed to load (System tab)"
        loading = [key for key, (state, _) in states if state == "loading"]
        if loading:
            ready = _names(key for key, (state, _) in states if state != "loading")
            waits = ", ".join(
                f"{_names([key])} once it has {'compiled' if BACKENDS[key[0]].compiles else 'loaded'} {key[1]} "
                f"({self.expected_load(*key)})"
                for key in loading
            )
            if ready:
                return f"You can press Run now: {ready} answer{'' if ' and ' in ready else 's'} at once, {waits}."
            return f"Loading the models: press Run now and each answers as it is ready, {waits}."
        if any(state == "compiling" for _, (state, _) in states):
            return (
                "ready: press Run. MAX also prepares long files, beams and the Live tab in the background for a "
                "few minutes; a run meanwhile says that it shared the CPU."
            )
        return ""

    def status(self) -> str:
        """Markdown, a line and a list: what is loaded, loading or failed, one model an item."""
        if not self._state:
            return "No model loaded yet: the first run loads them."
        parts = []
        for (backend, model, device, precision), (state, info) in list(self._state.items()):
            name = f"{label(backend)} · {model} · {device} · {precision}"
            if state == "loading":
                parts.append(
                    f"{name}: {self.loading_text(backend, model, device, precision)}, "
                    f"{time.monotonic() - info:.0f} s so far…"
                )
            elif state == "compiling":
                parts.append(
                    f"{name}: answers; compiling its other graphs (a long file's later windows, live "
                    f"drafts, word timestamps, beams), {time.monotonic() - info:.0f} s so far…"
                )
            elif state == "ready":
                parts.append(f"✓ {name} ({info})")
            else:
                parts.append(f"✗ {name} failed: {info}")
        heading = "**Loading** (each implementation answers as soon as it is ready):" if self.busy() else "**Models:**"
        return markdown_list(heading, parts)
