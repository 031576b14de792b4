"""OpenAI's audio API as clients use it: the form of `POST /v1/audio/transcriptions` and
`/translations`, its five response formats, its streamed events and its error shape. No Ray, no
HTTP server: the ingress (`service.http`) hands the form in and sends what comes out.

The form's fields and what this service does with each are `FIELD_DOCS` (the API's /docs show
them); `backend`, `beam_size` and `batch_size` are this service's own.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..api import DecodeOptions, MaxWhisperError, TranscriptionResult
from ..formats import to_srt, to_vtt
from ..realtime.protocol import QUOTED_CHARS, quoted
from ..tokenizer import LANGUAGES, normalize_language

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
STREAMED_FORMATS = ("json", "text")  # a stream's events carry text, as OpenAI's
GRANULARITIES = ("segment", "word")
INCLUDES = ("logprobs",)
DEFAULT_MODEL_ALIAS = "whisper-1"  # what OpenAI's clients send: the service's default model
TEMPERATURE_STEP = 0.2  # the fallback schedule rises from the asked temperature in these steps, up to 1
# OpenAI's server_vad chunking: each setting and the values it takes
VAD_SETTINGS = {
    "prefix_padding_ms": (int, 0, 60_000),
    "silence_duration_ms": (int, 0, 60_000),
    "threshold": (float, 0.0, 1.0),
}

_STRING, _NUMBER, _INTEGER = {"type": "string"}, {"type": "number"}, {"type": "integer"}
FIELD_DOCS: dict[str, tuple[dict, str]] = {  # name -> (JSON schema, what it does here)
    "file": (
        {"type": "string", "format": "binary"},
        "The audio (or video): any format FFmpeg reads. At most the service's upload limit (--max-upload-mb) "
        "and its audio limit (--max-seconds).",
    ),
    "model": (_STRING, f"A served model's name, or {DEFAULT_MODEL_ALIAS} for the first one (GET /v1/models)."),
    "language": (_STRING, "ISO-639-1 code of the speech (transcriptions only); detected when left out."),
    "prompt": (_STRING, "Text that comes before the audio: spellings, style (16 KB at most)."),
    "temperature": (
        {**_NUMBER, "minimum": 0, "maximum": 1},
        "0 (default): greedy, falling back to higher temperatures where the decoding fails Whisper's "
        "checks; T: sampling from T, then T + 0.2, ... up to 1.",
    ),
    "response_format": ({**_STRING, "enum": list(RESPONSE_FORMATS)}, "json (default), text, srt, verbose_json or vtt."),
    "timestamp_granularities[]": (
        {"type": "array", "items": {**_STRING, "enum": list(GRANULARITIES)}},
        "segment (default) and/or word; word only with verbose_json.",
    ),
    "stream": (
        {"type": "boolean"},
        "true: server-sent events, transcript.text.delta as segments are decoded, then transcript.text.done "
        "with the text (response_format json or text). OpenAI ignores it for whisper-1; this service streams.",
    ),
    "chunking_strategy": (
        _STRING,
        "auto, or a server_vad object (prefix_padding_ms, silence_duration_ms, threshold; or as "
        "chunking_strategy[type] ... fields). Checked and ignored: Whisper's 30 s windows are this "
        "service's chunking, as they are whisper-1's.",
    ),
    "include[]": (
        {"type": "array", "items": {**_STRING, "enum": list(INCLUDES)}},
        "logprobs: accepted and ignored (this service gives no per-token log probabilities, as whisper-1 gives none).",
    ),
    "backend": (_STRING, "This service's: which served backend transcribes (max, faster, openai)."),
    "beam_size": ({**_INTEGER, "minimum": 1, "maximum": 16}, "This service's: beam search width (default 1: greedy)."),
    "batch_size": (
        {**_INTEGER, "minimum": 1, "maximum": 64},
        "This service's: transcribe speech chunks found by voice activity detection in batches of this many windows.",
    ),
}
FIELDS = tuple(FIELD_DOCS)
ALIASES = {"timestamp_granularities": "timestamp_granularities[]", "include": "include[]"}  # the same, unbracketed
_VAD_FIELD = re.compile(r"chunking_strategy\[(\w+)\]")


def form_schema(task: str) -> dict:
    """The form's OpenAPI schema, for /docs."""
    fields = {name: doc for name, doc in FIELD_DOCS.items() if not (task == "translate" and name == "language")}
    return {
        "type": "object",
        "required": ["file", "model"],
        "properties": {name: {**schema, "description": text} for name, (schema, text) in fields.items()},
    }


class ApiError(Exception):
    """A request the service does not carry out, as OpenAI reports one: an HTTP status and
    {"error": {"message", "type", "param", "code"}}; `retry_after` seconds for a 503."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.retry_after = retry_after

    def __reduce__(self):  # crosses from a model replica to the ingress whole (Exception pickles args only)
        return _api_error, (self.__dict__,)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _api_error(state: dict) -> ApiError:
    error = ApiError(state["status"], state["message"])
    error.__dict__.update(state)
    return error


@dataclass(frozen=True)
class Served:
    """What the service runs: (backend, model) pairs it has deployed; the first is the default."""

    pairs: tuple[tuple[str, str], ...]

    @property
    def default(self) -> tuple[str, str]:
        return self.pairs[0]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(model for _, model in self.pairs))

    @property
    def backends(self) -> list[str]:
        return list(dict.fromkeys(backend for backend, _ in self.pairs))


@dataclass(frozen=True)
class TranscriptionRequest:
    """A form, checked: which deployment, how to decode, how to answer."""

    backend: str
    model: str
    options: DecodeOptions
    response_format: str
    granularities: tuple[str, ...]
    stream: bool = False


def parse_form(form: Mapping[str, Sequence[str]], task: str, served: Served) -> TranscriptionRequest:
    """The form's fields other than `file` (each a list of the values sent under its name) ->
    the request, or ApiError naming the field at fault."""

    def one(name: str) -> str | None:
        values = form.get(name) or []
        if len(values) > 1:
            raise ApiError(400, f"'{name}' was given {len(values)} times: give it once", param=name)
        return values[0].strip() if values else None

    form = {ALIASES.get(name, name): values for name, values in form.items()}  # the bracketed names are OpenAI's
    unknown = sorted(name for name in set(form) - set(FIELDS) if not _VAD_FIELD.fullmatch(name))
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(quoted, unknown[:5]))}; this endpoint takes {', '.join(FIELDS)}",
            param=unknown[0][:QUOTED_CHARS],
            code="unknown_parameter",
        )
    backend, model = deployment(one("model"), one("backend"), served)
    response_format = one("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {quoted(response_format)}",
            param="response_format",
            code="invalid_value",
        )
    granularities = tuple(dict.fromkeys(g.strip() for g in form.get("timestamp_granularities[]", [])))
    for g in granularities:
        if g not in GRANULARITIES:
            raise ApiError(
                400,
                f"timestamp_granularities[] takes segment and/or word, not {quoted(g)}",
                param="timestamp_granularities[]",
                code="invalid_value",
            )
    if "word" in granularities and response_format != "verbose_json":
        raise ApiError(
            422,
            "word timestamps come only with response_format verbose_json",
            param="timestamp_granularities[]",
            code="invalid_value",
        )

    stream = _boolean(one("stream"), "stream")
    if stream and response_format not in STREAMED_FORMATS:
        raise ApiError(
            400,
            f"a streamed transcription's events carry text: use response_format "
            f"{' or '.join(STREAMED_FORMATS)}, not {response_format}",
            param="response_format",
            code="unsupported_value",
        )
    for value in form.get("include[]", []):
        if value.strip() not in INCLUDES:
            raise ApiError(
                400,
                f"include[] takes {', '.join(INCLUDES)}, not {quoted(value)}",
                param="include[]",
                code="invalid_value",
            )
    _check_chunking(
        one("chunking_strategy"), {m.group(1): one(name) for name in form if (m := _VAD_FIELD.fullmatch(name))}
    )

    language = one("language")
    if language is not None and task == "translate":
        raise ApiError(400, "translations take no language: they are always into English", param="language")
    if language:
        try:
            language = normalize_language(language)
        except ValueError:
            raise ApiError(
                400,
                f"unknown language {quoted(language)}; use an ISO-639-1 code such as {', '.join(list(LANGUAGES)[:5])}",
                param="language",
                code="invalid_value",
            ) from None
    values = {
        "task": task,
        "language": language or None,
        "initial_prompt": one("prompt") or None,
        "temperature": _temperatures(one("temperature")),
        "word_timestamps": "word" in granularities,
        "beam_size": _integer(one("beam_size"), "beam_size", 1, 16, default=1),
        "batch_size": _integer(one("batch_size"), "batch_size", 1, 64, default=None),
    }
    try:
        options = DecodeOptions(**values)
    except MaxWhisperError as e:
        raise ApiError(422, str(e), param=getattr(e, "field", None), code="invalid_value") from None
    return TranscriptionRequest(backend, model, options, response_format, granularities or ("segment",), stream)


def deployment(model: str | None, backend: str | None, served: Served) -> tuple[str, str]:
    """The (backend, model) pair a request names: its model (or the alias), on `backend` or the first
    backend serving it; ApiError naming the field at fault."""
    if not model:
        raise ApiError(
            400,
            "you must give a model: one of " + ", ".join([DEFAULT_MODEL_ALIAS, *served.models]),
            param="model",
            code="missing_required_parameter",
        )
    model = served.default[1] if model == DEFAULT_MODEL_ALIAS else model
    if model not in served.models:
        raise ApiError(
            404,
            f"the model {quoted(model)} does not exist here; this service runs "
            f"{', '.join([DEFAULT_MODEL_ALIAS, *served.models])}",
            param="model",
            code="model_not_found",
        )
    backend = backend or next(b for b, m in served.pairs if m == model)
    if (backend, model) not in served.pairs:
        on = [b for b, m in served.pairs if m == model]
        raise ApiError(
            400,
            f"backend {quoted(backend)} does not serve {model} here; it runs on {', '.join(on)}",
            param="backend",
            code="invalid_value",
        )
    return backend, model


def _temperatures(text: str | None) -> tuple[float, ...]:
    """OpenAI's temperature: 0 to 1; at 0 (the default) the decoding falls back to higher
    temperatures when it looks like a failure, as openai-whisper does; from T, through T + 0.2, ... <= 1."""
    if text is None or text == "":
        return DecodeOptions().temperature
    try:
        first = float(text)
    except ValueError:
        first = math.nan
    if not 0 <= first <= 1:
        raise ApiError(
            400,
            f"temperature must be a number from 0 to 1, not {quoted(text)}",
            param="temperature",
            code="invalid_value",
        )
    steps = int((1 - first) / TEMPERATURE_STEP + 1e-9)
    return tuple(round(first + TEMPERATURE_STEP * i, 6) for i in range(steps + 1))


def _boolean(text: str | None, name: str) -> bool:
    if text is None or text == "":
        return False
    if text.lower() not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{name} must be true or false, not {quoted(text)}", param=name, code="invalid_value")
    return text.lower() in ("true", "1")


def _check_chunking(value: str | None, settings: dict[str, str | None]) -> None:
    """OpenAI's chunking_strategy, checked: "auto", or server_vad with its settings (a JSON
    object, or chunking_strategy[...] fields as OpenAI's clients send it)."""
    if value is not None and settings:
        raise ApiError(
            400,
            "give chunking_strategy as one value or as chunking_strategy[...] fields, not both",
            param="chunking_strategy",
            code="invalid_value",
        )
    if value is None and not settings or value == "auto":
        return
    if value is not None:
        try:
            settings = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
            settings = None
        if not isinstance(settings, dict):
            raise ApiError(
                400,
                f"chunking_strategy must be auto or a server_vad object, not {quoted(value)}",
                param="chunking_strategy",
                code="invalid_value",
            )
    settings = dict(settings)
    if settings.pop("type", None) != "server_vad":
        raise ApiError(
            400,
            "chunking_strategy's type must be server_vad (or give chunking_strategy auto)",
            param="chunking_strategy",
            code="invalid_value",
        )
    for name, text in settings.items():
        if name not in VAD_SETTINGS:
            raise ApiError(
                400,
                f"chunking_strategy has no setting {quoted(name)}; server_vad takes {', '.join(VAD_SETTINGS)}",
                param="chunking_strategy",
                code="invalid_value",
            )
        kind, low, high = VAD_SETTINGS[name]
        try:
            number = None if isinstance(text, bool) else kind(text)
        except (TypeError, ValueError, OverflowError):  # not a number, or past a float's range
            number = None
        if number is None or not low <= number <= high:
            raise ApiError(
                400,
                f"chunking_strategy's {name} must be a number from {low:g} to {high:g}, not {quoted(text)}",
                param="chunking_strategy",
                code="invalid_value",
            )


def _integer(text: str | None, name: str, low: int, high: int, default: int | None) -> int | None:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ApiError(
            400,
            f"{name} must be a whole number from {low} to {high}, not {quoted(text)}",
            param=name,
            code="invalid_value",
        )
    return value


# --- responses --------------------------------------------------------------------------------


def verbose_json(result: TranscriptionResult, granularities: Sequence[str]) -> dict:
    """OpenAI's verbose_json: task, language (its English name), duration, text, and the segments
    and/or words asked for."""
    body = {
        "task": result.options.task,
        "language": LANGUAGES.get(result.language, result.language),
        "duration": round(result.audio_s, 3),
        "text": result.text.strip(),
    }
    if "segment" in granularities:
        body["segments"] = [
            {
                "id": s.id,
                "seek": s.seek,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": _number(s.avg_logprob),
                "compression_ratio": _number(s.compression_ratio),
                "no_speech_prob": _number(s.no_speech_prob),
            }
            for s in result.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in result.segments
            for w in s.words or ()
        ]
    body["usage"] = {"type": "duration", "seconds": math.ceil(result.audio_s)}
    return body


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


TEXT_WRITERS: dict[str, Callable[[TranscriptionResult], str]] = {
    "text": lambda r: r.text.strip() + "\n",
    "srt": to_srt,
    "vtt": to_vtt,
}


def render(result: TranscriptionResult, response_format: str, granularities: Sequence[str]) -> tuple[str | dict, str]:
    """(body, media type): a dict for the JSON formats, text for the others."""
    if response_format == "json":
        return {
            "text": result.text.strip(),
            "usage": {"type": "duration", "seconds": math.ceil(result.audio_s)},
        }, "application/json"
    if response_format == "verbose_json":
        return verbose_json(result, granularities), "application/json"
    return TEXT_WRITERS[response_format](result), "text/plain; charset=utf-8"


def model_object(name: str, served: Served) -> dict:
    """OpenAI's model object for `name` (a served model, or the alias of the first)."""
    model = served.default[1] if name == DEFAULT_MODEL_ALIAS else name
    if model not in served.models:
        raise ApiError(
            404,
            f"the model {quoted(name)} does not exist here; this service runs "
            f"{', '.join([DEFAULT_MODEL_ALIAS, *served.models])}",
            param="model",
            code="model_not_found",
        )
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "maxwhisper",
        "root": model,
        "backends": [b for b, m in served.pairs if m == model],
    }


# --- streamed answers: server-sent events as OpenAI's -------------------------------------------


def sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def delta_event(text: str) -> dict:
    return {"type": "transcript.text.delta", "delta": text}


def done_event(result: TranscriptionResult) -> dict:
    return {
        "type": "transcript.text.done",
        "text": result.text.strip(),
        "usage": {"type": "duration", "seconds": math.ceil(result.audio_s)},
    }
