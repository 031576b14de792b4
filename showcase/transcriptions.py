"""The seam between the tabs and the models: the one object through which the Transcribe & compare
and Live tabs get their transcriptions.

`Transcriptions` says what a tab may ask; `LocalTranscriptions` answers it in this process (models
loaded once and kept, comparisons taking turns), and another implementation, e.g. one that sends
the work to a transcription service, can stand behind the same tabs. `page.build_demo` is given one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from maxwhisper.api import SAMPLE_RATE, DecodeOptions, Transcriber, TranscriptionResult
from maxwhisper.registry import create_warmed_up

from .cpu_load import OtherWork
from .formatting import label
from .live_session import LIVE_THREAD, LiveSession
from .models import ModelCache
from .turns import Turns

WINDOW_S = 30  # Whisper transcribes in 30 s windows

ProgressCallback = Callable[[float, str], None]  # (fraction of this transcription done, what it does now)


class Cancelled(Exception):
    """The visitor left: raised by a progress callback, it makes the transcription give up its place
    in line or stop, and leaves `Transcriptions.transcribe`."""


@dataclass(frozen=True)
class Transcription:
    """One timed transcription: its wall-clock and CPU seconds, and what shared the CPU meanwhile."""

    result: TranscriptionResult
    shared_cpu: str = ""  # for people: the app's work that ran beside it and slowed it (e.g. "the component checks")
    other_cores: float | None = None  # cores other processes kept busy meanwhile (`cpu_load`); None: not measured
    cpu_s: float | None = None  # CPU seconds the app's process used during it (`cpu_load`); None: not measured

    @property
    def seconds(self) -> float:
        return self.result.timings.total_s


@runtime_checkable
class Transcriptions(Protocol):
    """What the tabs ask of the transcriptions. Every method may be called from many threads at once
    (one per visitor's request), and none may take long except `transcribe` and `transcriber`.

    A model is named by (backend, model, device, precision): a backend of `maxwhisper.registry`
    ("max", "openai", "faster"), an installed model name ("tiny.en"), "cpu" or "gpu", and a
    precision the backend has on that device ("fp32" by default).
    """

    def transcribe(
        self,
        samples: np.ndarray,
        backend: str,
        model: str,
        device: str,
        options: DecodeOptions,
        *,
        precision: str = "fp32",
        progress: ProgressCallback | None = None,
    ) -> Transcription:
        """One transcription of `samples` (float32 mono at 16 kHz, checked already: not empty, not
        silent) with `options`, as the Transcribe & compare tab runs it for a visitor.

        `progress(fraction, what)`, if given, is called as the work goes, from any thread: `fraction`
        is how much of this transcription is done (0 to 1, never going back), `what` says for people
        what it does now, without the implementation's name (the tab puts it in front), e.g.
        "compiling the MAX graphs for tiny.en on cpu (about 40 s last time here)" while the model
        loads, "waiting for its turn, 2 runs ahead (…what runs now…)" while others go first, then
        "transcribing, window 2 of ~7 (40 of 200 s done)" after each 30 s window and "transcribed,
        finishing" at 1. While it waits for its turn, it is called about once a second, so that a visitor who
        leaves is noticed: when the callback raises `Cancelled`, the transcription gives up its
        place (or stops as soon as it can) and `Cancelled` leaves this method.

        Returns the result, its CPU seconds and the work that shared the CPU with it, if any. Raises
        MaxWhisperError for what the visitor can mend (its message is shown as is) and any other
        exception for a failure of the implementation (shown with its type); a failed load is
        raised as well, and a later call loads again.
        """
        ...

    live_races: int | None  # live races at once (`showcase.tabs.live`); None: `live_session` bounds them

    def live_session(self, backend: str, model: str, device: str) -> LiveSession:
        """A live stream of one implementation (`showcase.live_session.LiveSession`), its updates
        called without turns or progress; its transcriber loads in the session's thread, which may take
        minutes (a first MAX compile) and fails the session as `transcribe` would raise. Streams must
        not wait for the comparisons' turns nor run on a model a comparison is using at the same
        time. Raises MaxWhisperError where there is no room for another stream.
        """
        ...

    def loaded(self, backend: str, model: str, device: str, precision: str = "fp32") -> bool:
        """Whether `transcribe` can start on this model without loading it first (a comparison runs
        the loaded implementations first, so that they answer while another loads)."""
        ...

    def load_note(self, backends: list[str], model: str, device: str, precision: str = "fp32") -> str:
        """Markdown saying what a first run of `backends` with `model` on `device` in `precision`
        will load or compile before it starts, and roughly how long that takes; "" when nothing is
        to load."""
        ...

    def status(self) -> str:
        """Markdown for the System tab: the models loaded, loading (for how long so far) or failed,
        what runs now and how many runs wait."""
        ...

    def badge(self) -> str:
        """The page's status badge: "ready", or one plain sentence on what a visitor can do now and
        what they wait for ("You can press Run now: openai-whisper answers at once, MAX once it has
        compiled tiny.en (about 40 s last time here).")."""
        ...

    def busy(self) -> bool:
        """Whether a load, a run or a wait is under way: while it is, the page shows `status()`
        again every 2 s."""
        ...


def progress_text(fraction: float, audio_s: float) -> str:
    """'window k of ~n' of a transcription in 30 s windows, estimated from the fraction of the audio done
    (backends report it after each window, or each segment); a clip of one window says just that."""
    if fraction >= 1:
        return "transcribed, finishing"
    expected = max(math.ceil(audio_s / WINDOW_S), 1)
    if expected == 1:  # one window: no progress until it is done
        return f"transcribing its {audio_s:.0f} s in one window"
    current = min(int(fraction * audio_s // WINDOW_S) + 1, expected)
    return f"transcribing, window {current} of ~{expected} ({fraction * audio_s:.0f} of {audio_s:.0f} s done)"


class LocalTranscriptions:
    """`Transcriptions` in this process: the comparisons' transcribers in `models`, one transcription
    at a time in `turns` (first come first served, each waiter told its place); the live streams'
    transcribers apart in `stream_models`, so that streams run beside the comparisons instead of
    waiting for them. `create(backend, model=, device=, precision=)` makes a transcriber (the app's:
    `create_warmed_up`); `record` keeps how long each load took (`ModelCache`); `meter()` is the
    context manager that measures each run's CPU seconds and the other programs' load (`OtherWork`)."""

    def __init__(
        self,
        create: Callable = create_warmed_up,
        *,
        record: Path | None = None,
        turns: Turns | None = None,
        meter: Callable[[], OtherWork] = OtherWork,
    ):
        self.meter = meter
        self.models = ModelCache(create, record=record)
        self.stream_models = ModelCache(create)
        self.turns = turns or Turns()
        self._stream_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def transcribe(
        self,
        samples: np.ndarray,
        backend: str,
        model: str,
        device: str,
        options: DecodeOptions,
        *,
        precision: str = "fp32",
        progress: ProgressCallback | None = None,
    ) -> Transcription:
        say = progress or (lambda fraction, what: None)
        if not self.models.loaded(backend, model, device, precision):
            say(0.0, self.models.loading_text(backend, model, device, precision))
        transcriber = self.models.get(backend, model, device, precision)

        def waiting(ahead: int, activity: str) -> None:
            say(
                0.0,
                f"waiting for its turn, {ahead} run{'s' if ahead > 1 else ''} ahead"
                + (f" ({activity})" if activity else ""),
            )

        def beside() -> str:  # the app's work outside the turns: asked at the start and the end of the transcription
            if self.models.busy() or self.stream_models.busy():
                return "a model load or compile"
            return "a live stream" if any(t.name == LIVE_THREAD for t in threading.enumerate()) else ""

        with self.turns.turn(waiting) as background:
            shared = background or beside()
            audio_s = len(samples) / SAMPLE_RATE

            def report(fraction: float = 0.0) -> None:
                text = progress_text(fraction, audio_s)
                self.turns.activity = f"{label(backend)}: {text}"
                say(0.1 + 0.9 * fraction, text)

            report()
            with self.meter() as cost:
                result = transcriber.transcribe(samples, options, progress=report)
            return Transcription(result, shared or beside(), cost.cores, cost.own_s)

    live_races = 1  # one race already takes the cores of a small machine; another visitor waits

    def transcriber(self, backend: str, model: str, device: str, precision: str = "fp32") -> Transcriber:
        """The live streams' transcriber of this model, loaded once, apart from the comparisons'."""
        return self.stream_models.get(backend, model, device, precision)

    def live_session(self, backend: str, model: str, device: str) -> LiveSession:
        """A stream on this process's model, whose updates take turns with the other streams on it."""
        with self._locks_lock:
            lock = self._stream_locks.setdefault((backend, model, device), threading.Lock())
        return LiveSession(lambda: self.transcriber(backend, model, device), lock)

    def loaded(self, backend: str, model: str, device: str, precision: str = "fp32") -> bool:
        return self.models.loaded(backend, model, device, precision)

    def load_note(self, backends: list[str], model: str, device: str, precision: str = "fp32") -> str:
        return self.models.load_note(backends, model, device, precision)

    def status(self) -> str:
        return "\n\n".join(part for part in (self.models.status(), self.turns.status()) if part)

    def badge(self) -> str:
        loading = self.models.badge()
        if loading:
            return loading
        if self.stream_models.busy():
            return (
                "ready: press Run. The Live tab's engines still load in the background; a run meanwhile says "
                "that it shared the CPU."
            )
        waiting = self.turns.waiting()
        return f"ready · {waiting} run{'s' if waiting > 1 else ''} waiting" if waiting else "ready"

    def busy(self) -> bool:
        return self.models.busy() or self.stream_models.busy() or self.turns.busy()
