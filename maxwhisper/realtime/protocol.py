"""OpenAI's realtime transcription events as data: a session's configuration read from the client's
`session.update` (the GA shape) or `transcription_session.update` (the earlier beta shape), written
back in the shape the client used, and the server's events built with their ids.

The shapes follow openai-python's types (`types/realtime/`, `types/beta/realtime/`). A field this
service cannot honour is refused with an `EventError` naming it, except two that change nothing in
the transcript and that clients send by default: noise reduction and `include` values other than
`WORDS` are accepted and shown as off in the effective configuration the server sends back.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import Any

from ..api import DecodeOptions, OptionError

RATES = (24000, 16000)  # OpenAI's PCM rate, and Whisper's own
QUOTED_CHARS = 64  # the most of a client's value that an error quotes
MOST_NAMED = 5  # unknown fields an error names
DEFAULT_MODEL = "whisper-1"
# an `include` value of this service's own: each delta also carries its words with their times in
# the session's audio (start_ms, end_ms), so that a client can measure each word's latency
WORDS = "item.input_audio_transcription.words"


class EventError(Exception):
    """A client event this session cannot take: sent back as an `error` event, the socket stays open."""

    def __init__(
        self, message: str, param: str | None = None, code: str = "invalid_value", type: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.type = message, param, code, type


@dataclass(frozen=True)
class ServerVad:
    """OpenAI's `server_vad` turn detection, with its defaults."""

    threshold: float = 0.5  # speech probability from which a frame counts as speech
    prefix_padding_ms: int = 300  # audio before the detected speech that the turn keeps
    silence_duration_ms: int = 500  # silence that ends a turn


@dataclass(frozen=True)
class SessionConfig:
    rate: int = 24000
    model: str = DEFAULT_MODEL
    language: str | None = None
    prompt: str | None = None
    turn_detection: ServerVad | None = ServerVad()
    words: bool = False  # `include` holds WORDS

    def options(self) -> DecodeOptions:
        return DecodeOptions(language=self.language, initial_prompt=self.prompt or None)


def quoted(value: Any) -> str:
    """A client's value as an error message quotes it: its repr, at most QUOTED_CHARS of it (a list
    or an object is named, not shown)."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    text = repr(value[:QUOTED_CHARS] if isinstance(value, str) else value)
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def server_event(type: str, **fields) -> dict:
    return {"type": type, "event_id": new_id("event"), **fields}


def error_event(error: EventError, client_event_id: str | None = None) -> dict:
    return server_event(
        "error",
        error={
            "type": error.type,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        },
    )


def parse_update(event: dict, config: SessionConfig, known_model) -> SessionConfig:
    """The configuration after `event` (a session.update or transcription_session.update): only the
    fields it holds change. `known_model(name)` raises EventError for a model this session cannot
    use. The whole update is refused (EventError) where one field is wrong."""
    session = _object(event.get("session"), "session")
    if event["type"] == "session.update":
        return _parse_ga(session, config, known_model)
    return _parse_beta(session, config, known_model)


def _parse_ga(session: dict, config: SessionConfig, known_model) -> SessionConfig:
    if session.get("type", "transcription") != "transcription":
        raise EventError(
            "this endpoint transcribes only: session.type must be 'transcription' (connect with ?intent=transcription)",
            "session.type",
        )
    _known(session, {"type", "audio", "include", "id", "object"}, "session")
    audio = _object(session.get("audio", {}), "session.audio")
    _known(audio, {"input"}, "session.audio")
    given = _object(audio.get("input", {}), "session.audio.input")
    _known(given, {"format", "transcription", "turn_detection", "noise_reduction"}, "session.audio.input")
    if "format" in given:
        fmt = _object(given["format"], "session.audio.input.format")
        if fmt.get("type", "audio/pcm") != "audio/pcm":
            raise EventError(
                f"unsupported audio format {quoted(fmt.get('type'))}: send 'audio/pcm' (16-bit mono)",
                "session.audio.input.format.type",
            )
        rate = fmt.get("rate", config.rate)
        if rate not in RATES:
            raise EventError(
                f"unsupported rate {quoted(rate)}: send PCM at 24000 or 16000 Hz", "session.audio.input.format.rate"
            )
        config = replace(config, rate=rate)
    config = _transcription(given, "transcription", "session.audio.input.transcription", config, known_model)
    config = _turn_detection(given, "session.audio.input.turn_detection", config)
    return _include(session, config)


def _parse_beta(session: dict, config: SessionConfig, known_model) -> SessionConfig:
    _known(
        session,
        {
            "input_audio_format",
            "input_audio_transcription",
            "turn_detection",
            "input_audio_noise_reduction",
            "include",
            "modalities",
            "client_secret",
            "id",
            "object",
        },
        "session",
    )
    if "input_audio_format" in session:
        if session["input_audio_format"] != "pcm16":
            raise EventError(
                f"unsupported input_audio_format {quoted(session['input_audio_format'])}: send 'pcm16' "
                "(16-bit mono at 24 kHz)",
                "session.input_audio_format",
            )
        config = replace(config, rate=24000)
    config = _transcription(
        session, "input_audio_transcription", "session.input_audio_transcription", config, known_model
    )
    config = _turn_detection(session, "session.turn_detection", config)
    return _include(session, config)


def _transcription(holder: dict, key: str, param: str, config: SessionConfig, known_model) -> SessionConfig:
    if key not in holder:
        return config
    given = _object(holder[key], param)
    _known(given, {"model", "prompt", "language"}, param)
    model = given.get("model", config.model)
    if not isinstance(model, str) or not model:
        raise EventError("the model is a name such as 'whisper-1'", f"{param}.model")
    try:
        known_model(model)
    except EventError as e:
        raise EventError(e.message, f"{param}.model", e.code, e.type) from None
    prompt = given.get("prompt", config.prompt)
    if prompt is not None and not isinstance(prompt, str):
        raise EventError("the prompt is a string", f"{param}.prompt")
    language = given.get("language", config.language)
    try:
        language = DecodeOptions(language=language or None).language
    except OptionError:
        raise EventError(
            f"unknown language {quoted(language)}; use a code such as en, de or fr", f"{param}.language"
        ) from None
    return replace(config, model=model, prompt=prompt, language=language)


def _turn_detection(holder: dict, param: str, config: SessionConfig) -> SessionConfig:
    key = param.rsplit(".", 1)[1]
    if key not in holder:
        return config
    given = holder[key]
    if given is None:
        return replace(config, turn_detection=None)
    given = _object(given, param)
    kind = given.get("type", "server_vad")
    if kind != "server_vad":
        raise EventError(
            f"turn detection {quoted(kind)} is not supported: use 'server_vad', or null to commit yourself",
            f"{param}.type",
        )
    _known(
        given,
        {
            "type",
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "create_response",
            "interrupt_response",
            "idle_timeout_ms",
        },
        param,
    )
    vad = config.turn_detection or ServerVad()
    threshold = given.get("threshold", vad.threshold)
    if not _number(threshold) or not 0 <= threshold <= 1:
        raise EventError("threshold is a number from 0 to 1", f"{param}.threshold")
    values = {"threshold": float(threshold)}
    for name, most in (("prefix_padding_ms", 10_000), ("silence_duration_ms", 10_000)):
        value = given.get(name, getattr(vad, name))
        if not _number(value) or value != int(value) or not 0 <= value <= most:
            raise EventError(f"{name} is a whole number of milliseconds from 0 to {most}", f"{param}.{name}")
        values[name] = int(value)
    return replace(config, turn_detection=ServerVad(**values))


def _include(session: dict, config: SessionConfig) -> SessionConfig:
    if "include" not in session:
        return config
    include = session["include"]
    if include is None:
        include = []
    if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
        raise EventError("include is a list of strings", "session.include")
    return replace(config, words=WORDS in include)


def render_session(config: SessionConfig, session_id: str, beta: bool) -> dict:
    """The effective configuration as `session.created/updated` (beta: `transcription_session.*`) carry it."""
    vad = config.turn_detection
    turn_detection = (
        None
        if vad is None
        else {
            "type": "server_vad",
            "threshold": vad.threshold,
            "prefix_padding_ms": vad.prefix_padding_ms,
            "silence_duration_ms": vad.silence_duration_ms,
        }
    )
    transcription = {"model": config.model, "prompt": config.prompt or "", "language": config.language}
    include = [WORDS] if config.words else []
    if beta:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_transcription": transcription,
            "turn_detection": turn_detection,
            "input_audio_noise_reduction": None,
            "include": include,
            "modalities": ["text"],
        }
    return {
        "type": "transcription",
        "id": session_id,
        "object": "realtime.transcription_session",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": config.rate},
                "transcription": transcription,
                "turn_detection": turn_detection,
                "noise_reduction": None,
            }
        },
        "include": include,
    }


def _object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise EventError(f"{param} must be an object", param)
    return value


def _known(given: dict, fields: set[str], param: str) -> None:
    unknown = sorted(set(given) - fields)
    if unknown:
        shown = ", ".join(quoted(name) for name in unknown[:MOST_NAMED]) + (", ..." if unknown[MOST_NAMED:] else "")
        raise EventError(
            f"unknown field(s) in {param}: {shown}", f"{param}.{unknown[0][:QUOTED_CHARS]}", code="unknown_parameter"
        )


def _number(value: Any) -> bool:
    """A JSON number: an integer of any size (past a float's range, too), or a finite float."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or isinstance(value, float) and math.isfinite(value)
