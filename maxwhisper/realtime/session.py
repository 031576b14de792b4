"""A realtime transcription session: OpenAI's client events in, its server events out, each turn
transcribed as a live stream while it is spoken.

A turn is the audio between two commits: the client's (`input_audio_buffer.commit`) or, with
`server_vad`, from the speech the detector hears to the silence that ends it (`vad.TurnDetector`).
Each turn has a `streaming.Streamer` of its own (LocalAgreement-2: committed text never changes):
its updates run as the turn's audio arrives, the first over FIRST_UPDATE_S, then UPDATE_S at a time,
and each update that commits words sends them as a `conversation.item.input_audio_transcription.delta`;
the turn's commit finishes its stream and sends `.completed` with the transcript, its deltas joined.

`RealtimeSession.receive` takes one client event and answers at once (configuration, VAD events,
commits, errors: never a transcription); `work` runs the transcription, from one worker thread.
`run_session` drives both over any message transport (the service's WebSocket, a test's queues)
with the session's limits. No network or Ray here: the transcriber is any `api.Transcriber`, a
local model or the service's model deployment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from ..api import SAMPLE_RATE, MaxWhisperError, Transcriber
from ..audio import StreamResampler
from ..streaming import PROMPT_CHARS, Streamer, StreamWord
from .protocol import (
    QUOTED_CHARS,
    EventError,
    SessionConfig,
    error_event,
    new_id,
    parse_update,
    quoted,
    render_session,
    server_event,
)
from .vad import FRAME, TurnDetector

log = logging.getLogger("maxwhisper.realtime")

UPDATE_S = 0.5  # new audio a turn waits for before its next update
FIRST_UPDATE_S = 1.5  # audio a turn waits for before its first: a first word heard alone is unstable
MIN_COMMIT_S = 0.1  # a commit of less audio is refused, as OpenAI refuses it
MAX_APPEND_BYTES = 15 * 2**20  # OpenAI's limit on one append's audio
MAX_MESSAGE_BYTES = 32 * 2**20  # a client message: room for an append past MAX_APPEND_BYTES, refused by an event
CLIENT_EVENTS = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


@dataclass(frozen=True)
class Limits:
    max_session_s: float = 1800.0  # a session's length (OpenAI's: 30 minutes)
    idle_s: float = 120.0  # time without a client event after which the session is closed
    max_backlog_s: float = 30.0  # audio arrived and not yet transcribed: beyond it the session has fallen behind


@dataclass(eq=False)
class _Turn:
    item_id: str
    start: int  # the turn's first sample, counted from the session's start (16 kHz)
    streamer: Streamer
    end: int = 0  # the session's sample up to which the turn has its audio
    pending: list[np.ndarray] = field(default_factory=list)  # audio not yet fed to the stream
    closed: bool = False  # committed: no more audio comes
    cancelled: bool = False  # cleared: its stream's results are dropped
    failed: bool = False  # its transcription failed: the rest of its audio is dropped until its commit
    text: str = ""  # its deltas so far

    @property
    def pending_samples(self) -> int:
        return sum(len(p) for p in self.pending)

    def take(self) -> np.ndarray:
        samples = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        self.pending = []
        return samples


class RealtimeSession:
    """One client's session. `transcriber_for(model)` gives the transcriber of a model name the client
    may ask for, or raises EventError (an unknown model); `beta`: the client speaks the earlier
    `transcription_session.*` shape (OpenAI-Beta: realtime=v1)."""

    def __init__(
        self,
        transcriber_for: Callable[[str], Transcriber],
        beta: bool = False,
        limits: Limits = Limits(),
        config: SessionConfig = SessionConfig(),
    ):
        self.transcriber_for, self.beta, self.limits = transcriber_for, beta, limits
        transcriber_for(config.model)
        self.config = config
        self.id = new_id("sess")
        self.closed: EventError | None = None  # why the session must end (sent as an error event)
        self._lock = threading.Lock()
        self._resampler = StreamResampler(config.rate)
        self._detector = TurnDetector(config.turn_detection) if config.turn_detection else None
        self._turns: list[_Turn] = []  # not yet completed, oldest first; the last may be open
        self._received = 0  # samples of audio received (16 kHz)
        self._kept = np.zeros(0, np.float32)  # the latest audio no turn has, for a turn's prefix padding
        self._given = 0  # the session's sample up to which audio went to turns
        self._previous_item: str | None = None
        self._context = ""  # the completed turns' text, the next turn's prompt after the client's

    def created(self) -> dict:
        return server_event(
            "transcription_session.created" if self.beta else "session.created",
            session=render_session(self.config, self.id, self.beta),
        )

    def receive(self, message: str | bytes) -> list[dict]:
        """The events that answer one client event: an error event for a bad one, whatever it holds."""
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return [error_event(EventError("the message is not JSON", code="invalid_json"))]
        except RecursionError:
            return [error_event(EventError("the message nests its JSON too deeply", code="invalid_json"))]
        if not isinstance(event, dict):
            return [error_event(EventError("an event is a JSON object", code="invalid_json"))]
        client_id = event.get("event_id")[:QUOTED_CHARS] if isinstance(event.get("event_id"), str) else None
        if not isinstance(event.get("type"), str):
            return [error_event(EventError("an event needs a 'type'", "type", "missing_required_parameter"), client_id)]
        handler = {
            "session.update": self._update,
            "transcription_session.update": self._update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
        }.get(event["type"])
        try:
            if handler is None:
                raise EventError(
                    f"unsupported event type {quoted(event['type'])} on a transcription session; "
                    f"supported: {', '.join(CLIENT_EVENTS)}",
                    "type",
                )
            with self._lock:
                return handler(event)
        except EventError as e:
            return [error_event(e, client_id)]
        except Exception:  # noqa: BLE001 - logged; the client gets an error event and the session goes on
            log.exception("a realtime event could not be handled")
            return [
                error_event(
                    EventError(
                        f"the event {event['type'][:QUOTED_CHARS]} could not be handled; the "
                        "service's log has the details",
                        code="event_failed",
                        type="server_error",
                    ),
                    client_id,
                )
            ]

    def busy(self) -> bool:
        """Whether a turn is still to be transcribed or completed: the client may be waiting for it."""
        with self._lock:
            return any(t.closed or t.pending for t in self._turns)

    def has_work(self) -> bool:
        """Whether `work` has a stream update or a turn's end to run."""
        with self._lock:
            turn = self._current()
            if turn is None:
                return False
            need_s = UPDATE_S if turn.streamer.last_compute_s is not None else FIRST_UPDATE_S
            return turn.closed or turn.pending_samples >= need_s * SAMPLE_RATE

    def work(self, send: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """The oldest turn's next updates over the audio it has received, then, once it is committed,
        its end: the events they give (deltas, completed, or failed). `send`: each update's deltas are
        given to it as the update ends, so that words wait for no later update. Blocks while the model
        runs; one thread at a time."""
        with self._lock:
            turn = self._current()
            if turn is None:
                return []
            samples, closed = turn.take(), turn.closed
        events, done = [], closed
        try:
            if len(samples) and not turn.failed:  # a failed turn's audio is dropped until its commit
                for update in turn.streamer.feed(samples):
                    deltas = self._delta(turn, update.committed)
                    if send is None:
                        events += deltas
                    elif deltas and not turn.cancelled:
                        send(deltas)
            if closed and not turn.failed:
                events += self._delta(turn, turn.streamer.finish().committed)
                events.append(
                    server_event(
                        "conversation.item.input_audio_transcription.completed",
                        item_id=turn.item_id,
                        content_index=0,
                        transcript=turn.text,
                        usage={"type": "duration", "seconds": (turn.end - turn.start) / SAMPLE_RATE},
                    )
                )
        except Exception as e:  # noqa: BLE001 - the turn fails, the session goes on
            if isinstance(e, MaxWhisperError):
                error = {"type": "invalid_request_error", "code": "transcription_failed", "message": str(e)}
            else:
                log.exception("a realtime transcription failed")
                error = {
                    "type": "server_error",
                    "code": "transcription_failed",
                    "message": f"the transcription failed ({type(e).__name__}); the service's log has the details",
                }
            events = [
                server_event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=turn.item_id,
                    content_index=0,
                    error={**error, "param": None},
                )
            ]
            turn.failed = True
        with self._lock:
            if turn.cancelled:
                return []
            if done:
                self._turns.remove(turn)
                self._context = (self._context + " " + turn.text).strip()[-PROMPT_CHARS:]
        return events

    # client events, under the lock

    def _update(self, event: dict) -> list[dict]:
        config = parse_update(event, self.config, self.transcriber_for)
        if config.rate != self.config.rate:
            self._resampler = StreamResampler(config.rate)
        if config.turn_detection is None:
            self._detector = None
        elif self._detector is None:
            self._detector = TurnDetector(config.turn_detection, first=self._received)
            self._detector.in_speech = self._open_turn() is not None  # a turn in progress ends at the next silence
            self._kept = np.zeros(0, np.float32)
        else:
            self._detector.configure(config.turn_detection)
        self.config = config
        beta = event["type"] == "transcription_session.update"
        return [
            server_event(
                "transcription_session.updated" if beta else "session.updated",
                session=render_session(config, self.id, beta),
            )
        ]

    def _append(self, event: dict) -> list[dict]:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise EventError(
                "input_audio_buffer.append needs 'audio': base64 PCM16 samples", "audio", "missing_required_parameter"
            )
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise EventError(f"one append holds at most {MAX_APPEND_BYTES // 2**20} MiB of audio", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("'audio' is not base64", "audio") from None
        if len(data) % 2:
            raise EventError("'audio' must hold whole 16-bit samples (an even number of bytes)", "audio")
        samples = self._resampler(np.frombuffer(data, "<i2"))
        self._received += len(samples)
        events = self._route(samples)
        backlog = sum(t.pending_samples for t in self._turns) / SAMPLE_RATE
        if backlog > self.limits.max_backlog_s and self.closed is None:
            self.closed = EventError(
                f"the transcription fell {backlog:.0f} s behind the audio (more than "
                f"{self.limits.max_backlog_s:g} s): the session is closed",
                code="session_behind",
                type="server_error",
            )
            events.append(error_event(self.closed))
        return events

    def _route(self, samples: np.ndarray) -> list[dict]:
        """Give the new audio to the open turn, or to the turns the detector starts and stops in it."""
        if self._detector is None:
            turn = self._open_turn() or self._start_turn(self._received - len(samples))
            self._give(turn, samples)
            return []
        events = []
        first = self._received - len(samples) - len(self._kept)  # the session's sample of _kept[0]
        self._kept = np.concatenate([self._kept, samples])
        for kind, at in self._detector.feed(samples):
            turn = self._open_turn()
            if kind == "start":
                turn = turn or self._start_turn(max(at, first))  # (a turn left open when VAD was turned on)
                events.append(
                    server_event(
                        "input_audio_buffer.speech_started",
                        item_id=turn.item_id,
                        audio_start_ms=turn.start * 1000 // SAMPLE_RATE,
                    )
                )
            elif turn is not None:
                self._give(turn, self._kept[turn.end - first : at - first])
                events.append(
                    server_event(
                        "input_audio_buffer.speech_stopped", item_id=turn.item_id, audio_end_ms=at * 1000 // SAMPLE_RATE
                    )
                )
                events += self._close(turn)
        turn = self._open_turn()
        if turn is not None and self._detector.in_speech:
            self._give(turn, self._kept[turn.end - first :])
            self._kept = self._kept[:0]
        else:
            self._kept = self._kept[
                -(round(self.config.turn_detection.prefix_padding_ms * SAMPLE_RATE / 1000) + 2 * FRAME) :
            ]
        return events

    def _commit(self, event: dict) -> list[dict]:
        turn = self._open_turn()
        if turn is None or turn.end - turn.start < MIN_COMMIT_S * SAMPLE_RATE:
            heard = 0 if turn is None else (turn.end - turn.start) * 1000 // SAMPLE_RATE
            raise EventError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_S * 1000:.0f}ms of audio, but buffer only has {heard}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        if self._detector is not None:
            self._detector.reset()
            self._kept = self._kept[:0]
        return self._close(turn)

    def _clear(self, event: dict) -> list[dict]:
        turn = self._open_turn()
        if turn is not None:
            turn.cancelled = True
            self._turns.remove(turn)
        if self._detector is not None:
            self._detector.reset()
        self._kept = self._kept[:0]
        return [server_event("input_audio_buffer.cleared")]

    # turns, under the lock

    def _current(self) -> _Turn | None:
        return self._turns[0] if self._turns else None

    def _open_turn(self) -> _Turn | None:
        return self._turns[-1] if self._turns and not self._turns[-1].closed else None

    def _start_turn(self, at: int) -> _Turn:
        prompt = ((self.config.prompt or "") + " " + self._context).strip()[-PROMPT_CHARS:] or None
        options = replace(self.config.options(), initial_prompt=prompt)
        turn = _Turn(new_id("item"), max(at, self._given), Streamer(self.transcriber_for(self.config.model), options))
        turn.end = turn.start
        self._turns.append(turn)
        return turn

    def _give(self, turn: _Turn, samples: np.ndarray) -> None:
        if len(samples):
            turn.pending.append(samples.copy())
            turn.end += len(samples)
            self._given = turn.end

    def _close(self, turn: _Turn) -> list[dict]:
        turn.closed = True
        event = server_event("input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=self._previous_item)
        self._previous_item = turn.item_id
        return [event]

    def _delta(self, turn: _Turn, words: list[StreamWord]) -> list[dict]:
        text = "".join(w.text for w in words)
        text = text if turn.text else text.lstrip()
        if not text:
            return []
        turn.text += text
        extra = {}
        if self.config.words:
            to_ms = lambda t: round(turn.start * 1000 / SAMPLE_RATE + t * 1000)  # noqa: E731
            extra["words"] = [
                {"word": w.text, "start_ms": to_ms(w.start), "end_ms": to_ms(w.end)} for w in words if w.spoken
            ]
        return [
            server_event(
                "conversation.item.input_audio_transcription.delta",
                item_id=turn.item_id,
                content_index=0,
                delta=text,
                **extra,
            )
        ]


async def run_session(
    session: RealtimeSession,
    receive: Callable[[], Awaitable[str | bytes | None]],
    send: Callable[[dict], Awaitable[None]],
) -> str:
    """Serve `session` until the client leaves (`receive` gives None) or a limit ends it (an error event
    is sent first): the client's events are answered as they come, the transcription runs in a thread
    of the session's own. Returns why it ended: "closed", "idle", "expired" or "behind"."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix="realtime")
    wake = asyncio.Event()
    sending = asyncio.Lock()
    limits = session.limits

    async def say(events: list[dict]) -> None:
        async with sending:
            for event in events:
                await send(event)

    def send_now(events: list[dict]) -> None:  # from the transcription's thread, before its next update
        asyncio.run_coroutine_threadsafe(say(events), loop).result()

    async def transcribe() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while session.has_work():
                await say(await loop.run_in_executor(executor, session.work, send_now))

    await say([session.created()])
    worker = asyncio.create_task(transcribe())
    started = loop.time()
    incoming = asyncio.ensure_future(receive())
    try:
        while True:
            left = limits.max_session_s - (loop.time() - started)
            done, _ = await asyncio.wait({incoming}, timeout=max(0.0, min(limits.idle_s, left)))
            if not done:
                expired = limits.max_session_s - (loop.time() - started) <= 0
                if not expired and session.busy():
                    continue  # not idle while its audio is being transcribed
                message = (
                    f"the session reached its limit of {limits.max_session_s:g} s"
                    if expired
                    else f"no event for {limits.idle_s:g} s: the session is closed"
                )
                await say(
                    [
                        error_event(
                            EventError(
                                message,
                                code="session_expired" if expired else "session_idle",
                                type="invalid_request_error",
                            )
                        )
                    ]
                )
                return "expired" if expired else "idle"
            message = incoming.result()
            if message is None:
                return "closed"
            incoming = asyncio.ensure_future(receive())
            await say(session.receive(message))
            if session.closed is not None:
                return "behind"
            if worker.done():
                worker.result()  # a failure to send: the client is gone
                return "closed"
            wake.set()
    finally:
        incoming.cancel()
        worker.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
