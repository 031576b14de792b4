"""`Transcriptions` through the transcription service's model deployments (`python -m maxwhisper
serve --ui`): the app's comparisons become requests to the model replicas, and its live streams run
as the service's realtime sessions do (counted in its sessions per replica). The replicas take
several at once (MAX decodes them together with the API's), so visitors no longer wait in one line
for one another.

The service runs the (backend, model) pairs it was started with, on one device and precision;
asking for another is a `MaxWhisperError` that says what it runs.
"""

from __future__ import annotations

import contextlib
import queue
import threading

import numpy as np

from maxwhisper.api import SAMPLE_RATE, DecodeOptions, MaxWhisperError, TranscriptionResult
from maxwhisper.registry import BACKENDS
from maxwhisper.service.openai_api import ApiError
from maxwhisper.service.realtime import remote_transcriber

from .formatting import label, markdown_list
from .live_session import LiveSession
from .transcriptions import Cancelled, ProgressCallback, Transcription, progress_text

POLL_S = 1.0  # how often a waiting run asks its visitor's progress callback whether they are still there


class ServiceTranscriptions:
    """`showcase.transcriptions.Transcriptions` over a `maxwhisper.service.deployments.Ingress`:
    its handles to the model deployments and what Serve says of their replicas."""

    def __init__(self, ingress):
        self.ingress = ingress
        self.config = ingress.config

    def _handle(self, backend: str, model: str, device: str, precision: str):
        if (
            (backend, model) not in self.config.served.pairs
            or device != self.config.device
            or precision != self.config.precision
        ):
            runs = ", ".join(f"{label(b)} {m}" for b, m in self.config.served.pairs)
            raise MaxWhisperError(
                f"this service runs {runs} on {self.config.device} in {self.config.precision}, "
                f"not {label(backend)} {model} on {device} in {precision}"
            )
        up, waited = self.ingress.model_ready(backend, model)
        if not up:
            raise MaxWhisperError(
                f"{label(backend)} {model} is still loading on the service ({waited:.0f} s so far; "
                "MAX compiles its graphs the first time): try again shortly"
            )
        return self.ingress.handles[(backend, model)]

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
        stream = (
            self._handle(backend, model, device, precision)
            .options(stream=True)
            .transcribe_events.remote(samples, options)
        )
        events: queue.Queue = queue.Queue()

        def read():  # the stream's events, into the queue, so that the caller can poll its visitor meanwhile
            try:
                for event in stream:
                    events.put(event)
            except Exception as e:  # noqa: BLE001 - e.g. the replica stopped: the run fails with it
                events.put(("error", e))

        threading.Thread(target=read, name="service-events", daemon=True).start()
        audio_s, what, done = len(samples) / SAMPLE_RATE, "waiting for a free model replica", 0.0
        try:
            while True:
                try:
                    kind, value = events.get(timeout=POLL_S)
                except queue.Empty:
                    say(done, what)
                    continue
                if kind == "started":
                    what = progress_text(0.0, audio_s)
                elif kind == "progress":
                    done, what = 0.1 + 0.9 * value, progress_text(value, audio_s)
                elif kind == "error":
                    raise MaxWhisperError("the model replica running this stopped; run it again") from value
                else:
                    return Transcription(_result(value))
                say(done, what)
        except Cancelled:
            stream.cancel()
            raise

    live_races = None  # the ingress's realtime session slots bound them

    def live_session(self, backend: str, model: str, device: str) -> LiveSession:
        """A stream as the service's realtime sessions run (`maxwhisper.service.realtime`): a session slot
        of the ingress held until it ends, its updates `transcribe_window` requests where the model
        hears a window in one pass, which the replicas decode together with their other work."""
        handle = self._handle(backend, model, device, self.config.precision)
        slot = contextlib.ExitStack()
        try:
            slot.enter_context(self.ingress.session_slot(backend, model))
        except ApiError as e:
            raise MaxWhisperError(e.message) from None

        def load():
            windowed = handle.windowed.remote().result(timeout_s=self.config.request_timeout_s)
            return remote_transcriber(handle, backend, model, self.config.request_timeout_s, windowed)

        return LiveSession(load, release=slot.close)

    def loaded(self, backend: str, model: str, device: str, precision: str = "fp32") -> bool:
        return (backend, model) in self.config.served.pairs and self.ingress.model_ready(backend, model)[0]

    def load_note(self, backends: list[str], model: str, device: str, precision: str = "fp32") -> str:
        loading = [
            label(b)
            for b in backends
            if (b, model) in self.config.served.pairs and not self.ingress.model_ready(b, model)[0]
        ]
        return (
            f"On the service, {', '.join(loading)} with **{model}** still load: runs wait for them." if loading else ""
        )

    def status(self) -> str:
        parts = []
        for backend, model in self.config.served.pairs:
            up, waited = self.ingress.model_ready(backend, model)
            name = f"{label(backend)} · {model} · {self.config.device}"
            parts.append(f"✓ {name}" if up else f"{name}: loading, {waited:.0f} s so far…")
        heading = (
            f"**Service** ({self.config.replicas} replica(s) per model, MAX decoding up to "
            f"{self.config.max_batch} requests together):"
        )
        return markdown_list(heading, parts)

    def badge(self) -> str:
        loading = [
            (waited, b, m)
            for b, m in self.config.served.pairs
            for up, waited in [self.ingress.model_ready(b, m)]
            if not up
        ]
        state = "ready"
        if loading:
            waited, backend, model = max(loading)
            state = f"{BACKENDS[backend].label} {model} loading ({waited:.0f} s)…"
        return f"Service ({self.config.replicas} replica(s) per model): {state}"

    def busy(self) -> bool:
        return not all(self.ingress.model_ready(b, m)[0] for b, m in self.config.served.pairs)


def _result(value: TranscriptionResult | ApiError) -> TranscriptionResult:
    if isinstance(value, ApiError):
        raise MaxWhisperError(value.message) if value.status < 500 else RuntimeError(value.message)
    return value
