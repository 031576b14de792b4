"""The realtime endpoint: OpenAI's realtime transcription over a WebSocket on the ingress,
`/v1/realtime?intent=transcription`.

Each connection is a `maxwhisper.realtime.RealtimeSession` run in the ingress (`run_session`): its
events, server VAD and LocalAgreement streams are here; each stream update is a request to the model
deployment (`RemoteTranscriber`), which Serve's router gives to the least busy replica, so a
session's updates spread over the replicas and a MAX replica decodes them together with its other
updates and requests. A session counts against `max_sessions` per replica up of the deployment it
opened on (`Ingress.session_slot`): beyond them it is refused with an `error` event and closed. The
access policy (keys, Host, Origin) has judged the handshake before this runs.

The URL takes `model` (a served model or whisper-1, as `session.update` does) and, as the HTTP form
does, `backend`. A client that sends `OpenAI-Beta: realtime=v1` (openai's beta client) gets the beta
shape's `transcription_session.created`.
"""

from __future__ import annotations

import json
import logging

from fastapi import WebSocket, WebSocketDisconnect
from ray.exceptions import RayActorError

from ..api import DecodeOptions, MaxWhisperError, TranscriptionResult
from ..audio import STREAM_PADDING_S
from ..realtime import EventError, RealtimeSession, SessionConfig, run_session
from ..realtime.protocol import error_event
from .access import offered_protocols
from .openai_api import DEFAULT_MODEL_ALIAS, ApiError, deployment

log = logging.getLogger("maxwhisper.service")

TRY_LATER = 1013  # WebSocket close codes: try again later (no room, no replica up); policy (a bad request)
POLICY = 1008


class RemoteTranscriber:
    """`api.Transcriber` whose transcriptions are requests to a model deployment, called from a
    session's worker thread; a request whose replica dies is given once more (to another replica or
    the replacement), as the HTTP endpoints do."""

    load_s = compile_s = 0.0  # paid by the replicas

    def __init__(self, handle, backend: str, model: str, timeout_s: float):
        self.handle, self.backend, self.model, self.timeout_s = handle, backend, model, timeout_s
        self.device, self.precision = "service", "service"

    def transcribe(self, audio, options: DecodeOptions = DecodeOptions(), progress=None) -> TranscriptionResult:
        return self._call("transcribe", audio, options)

    def _call(self, method: str, *args):
        for retried in (False, True):
            try:
                value = getattr(self.handle, method).remote(*args).result(timeout_s=self.timeout_s)
            except RayActorError:
                if retried:
                    raise
                continue
            if isinstance(value, ApiError):
                raise MaxWhisperError(value.message) if value.status < 500 else RuntimeError(value.message)
            return value


class RemoteWindowTranscriber(RemoteTranscriber):
    """A `RemoteTranscriber` of a deployment whose transcriber hears a stream's window in one pass."""

    def transcribe_window(
        self, audio, options: DecodeOptions = DecodeOptions(), draft=(), padding_s: float | None = STREAM_PADDING_S
    ):
        return self._call("transcribe_window", audio, options, tuple(draft), padding_s)


def remote_transcriber(handle, backend: str, model: str, timeout_s: float, windowed: bool) -> RemoteTranscriber:
    """The transcriber of a stream's updates on a deployment: its windows in one pass where it can."""
    return (RemoteWindowTranscriber if windowed else RemoteTranscriber)(handle, backend, model, timeout_s)


async def serve_socket(ingress, ws: WebSocket) -> None:
    """One realtime connection, from its handshake to its close."""
    config, params = ingress.config, ws.query_params
    offered = offered_protocols(ws.headers)
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    reason = "closed"
    try:
        if params.get("intent") != "transcription":
            raise ApiError(
                400,
                "this service transcribes only: connect to /v1/realtime?intent=transcription",
                param="intent",
                code="invalid_intent",
            )
        model = params.get("model") or DEFAULT_MODEL_ALIAS
        backend, served_model = deployment(model, params.get("backend"), config.served)
        with ingress.session_slot(backend, served_model):
            windowed = await ingress.windowed()

            def transcriber_for(name: str):
                try:
                    pair = deployment(name, params.get("backend"), config.served)
                except ApiError as e:
                    raise EventError(e.message, code=e.code or "invalid_value") from None
                if pair not in windowed:
                    raise EventError(
                        f"{pair[1]} on {pair[0]} has no replica up yet: try again shortly",
                        code="model_loading",
                        type="server_error",
                    )
                return remote_transcriber(ingress.handles[pair], *pair, config.request_timeout_s, windowed[pair])

            session = RealtimeSession(
                transcriber_for,
                beta="realtime=v1" in ws.headers.get("openai-beta", ""),
                limits=config.session_limits,
                config=SessionConfig(model=model),
            )
            reason = await run_session(session, lambda: _receive(ws), lambda event: ws.send_text(json.dumps(event)))
    except ApiError as e:
        await _refuse(ws, e)
        return
    except (WebSocketDisconnect, RuntimeError):  # the client left while an event was sent
        return
    if reason != "closed":
        await _close(ws, 1000)


async def _receive(ws: WebSocket) -> str | bytes | None:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return message["text"] if message.get("text") is not None else message.get("bytes")


async def _refuse(ws: WebSocket, e: ApiError) -> None:
    """The refusal as an `error` event, then the close: 1013 (try again later) where the service is
    full or loading, 1008 for a bad request."""
    try:
        await ws.send_text(json.dumps(error_event(EventError(e.message, e.param, e.code or "invalid_value", e.type))))
    except (WebSocketDisconnect, RuntimeError):
        return
    await _close(ws, TRY_LATER if e.status == 503 else POLICY)


async def _close(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code)
    except (WebSocketDisconnect, RuntimeError):  # the client left first
        pass
