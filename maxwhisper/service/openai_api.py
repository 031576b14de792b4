"""OpenAI's audio API as clients use it: the form of `POST /v1/audio/transcriptions` and
`/translations`, its five response formats and its error shape. No Ray, no HTTP server: the
ingress (`service.deployments`) hands the form in and sends what comes out.

Form fields: `file` (required), `model` (a served model's name, or `whisper-1` for the default
one), `language` (transcriptions only), `prompt`, `temperature`, `response_format` (json, text,
srt, verbose_json, vtt), `timestamp_granularities[]` (segment and/or word; word only with
verbose_json); this service's extensions in the same form: `backend`, `beam_size`, `batch_size`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..api import DecodeOptions, MaxWhisperError, TranscriptionResult
from ..formats import to_srt, to_vtt
from ..tokenizer import LANGUAGES, normalize_language

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
DEFAULT_MODEL_ALIAS = "whisper-1"  # what OpenAI's clients send: the service's default model
TEMPERATURE_STEP = 0.2  # the fallback schedule rises from the asked temperature in these steps, up to 1
FIELDS = ("file", "model", "language", "prompt", "temperature", "response_format", "timestamp_granularities[]",
          "backend", "beam_size", "batch_size")


class ApiError(Exception):
    """A request the service does not carry out, as OpenAI reports one: an HTTP status and
    {"error": {"message", "type", "param", "code"}}; `retry_after` seconds for a 503."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", retry_after: int | None = None):
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


def parse_form(form: Mapping[str, Sequence[str]], task: str, served: Served) -> TranscriptionRequest:
    """The form's fields other than `file` (each a list of the values sent under its name) ->
    the request, or ApiError naming the field at fault."""
    def one(name: str) -> str | None:
        values = form.get(name) or []
        if len(values) > 1:
            raise ApiError(400, f"'{name}' was given {len(values)} times: give it once", param=name)
        return values[0].strip() if values else None

    unknown = sorted(set(form) - set(FIELDS) - {"timestamp_granularities"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes "
                            f"{', '.join(FIELDS)}", param=unknown[0], code="unknown_parameter")
    backend, model = _deployment(one("model"), one("backend"), served)
    response_format = one("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {response_format!r}",
                       param="response_format", code="invalid_value")
    granularities = tuple(dict.fromkeys(
        g.strip() for g in [*form.get("timestamp_granularities[]", []), *form.get("timestamp_granularities", [])]))
    for g in granularities:
        if g not in GRANULARITIES:
            raise ApiError(400, f"timestamp_granularities[] takes segment and/or word, not {g!r}",
                           param="timestamp_granularities[]", code="invalid_value")
    if "word" in granularities and response_format != "verbose_json":
        raise ApiError(422, "word timestamps come only with response_format verbose_json",
                       param="timestamp_granularities[]", code="invalid_value")

    language = one("language")
    if language is not None and task == "translate":
        raise ApiError(400, "translations take no language: they are always into English", param="language")
    if language:
        try:
            language = normalize_language(language)
        except ValueError:
            raise ApiError(400, f"unknown language {language!r}; use an ISO-639-1 code such as "
                                f"{', '.join(list(LANGUAGES)[:5])}", param="language", code="invalid_value") from None
    values = {"task": task, "language": language or None, "initial_prompt": one("prompt") or None,
              "temperature": _temperatures(one("temperature")), "word_timestamps": "word" in granularities,
              "beam_size": _integer(one("beam_size"), "beam_size", 1, 16, default=1),
              "batch_size": _integer(one("batch_size"), "batch_size", 1, 64, default=None)}
    try:
        options = DecodeOptions(**values)
    except MaxWhisperError as e:
        raise ApiError(422, str(e), param=getattr(e, "field", None), code="invalid_value") from None
    return TranscriptionRequest(backend, model, options, response_format, granularities or ("segment",))


def _deployment(model: str | None, backend: str | None, served: Served) -> tuple[str, str]:
    if not model:
        raise ApiError(400, "you must give a model: one of " + ", ".join([DEFAULT_MODEL_ALIAS, *served.models]),
                       param="model", code="missing_required_parameter")
    model = served.default[1] if model == DEFAULT_MODEL_ALIAS else model
    if model not in served.models:
        raise ApiError(404, f"the model {model!r} does not exist here; this service runs "
                            f"{', '.join([DEFAULT_MODEL_ALIAS, *served.models])}",
                       param="model", code="model_not_found")
    backend = backend or next(b for b, m in served.pairs if m == model)
    if (backend, model) not in served.pairs:
        on = [b for b, m in served.pairs if m == model]
        raise ApiError(400, f"backend {backend!r} does not serve {model} here; it runs on {', '.join(on)}",
                       param="backend", code="invalid_value")
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
        raise ApiError(400, f"temperature must be a number from 0 to 1, not {text!r}", param="temperature",
                       code="invalid_value")
    steps = int((1 - first) / TEMPERATURE_STEP + 1e-9)
    return tuple(round(first + TEMPERATURE_STEP * i, 6) for i in range(steps + 1))


def _integer(text: str | None, name: str, low: int, high: int, default: int | None) -> int | None:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, not {text!r}", param=name,
                       code="invalid_value")
    return value


# --- responses --------------------------------------------------------------------------------

def verbose_json(result: TranscriptionResult, granularities: Sequence[str]) -> dict:
    """OpenAI's verbose_json: task, language (its English name), duration, text, and the segments
    and/or words asked for."""
    body = {"task": result.options.task, "language": LANGUAGES.get(result.language, result.language),
            "duration": round(result.audio_s, 3), "text": result.text.strip()}
    if "segment" in granularities:
        body["segments"] = [
            {"id": s.id, "seek": s.seek, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
             "tokens": list(s.tokens), "temperature": s.temperature, "avg_logprob": _number(s.avg_logprob),
             "compression_ratio": _number(s.compression_ratio), "no_speech_prob": _number(s.no_speech_prob)}
            for s in result.segments]
    if "word" in granularities:
        body["words"] = [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                         for s in result.segments for w in s.words or ()]
    body["usage"] = {"type": "duration", "seconds": math.ceil(result.audio_s)}
    return body


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


TEXT_WRITERS: dict[str, Callable[[TranscriptionResult], str]] = {
    "text": lambda r: r.text.strip() + "\n", "srt": to_srt, "vtt": to_vtt}


def render(result: TranscriptionResult, response_format: str, granularities: Sequence[str]) -> tuple[str | dict, str]:
    """(body, media type): a dict for the JSON formats, text for the others."""
    if response_format == "json":
        return {"text": result.text.strip(), "usage": {"type": "duration", "seconds": math.ceil(result.audio_s)}}, \
            "application/json"
    if response_format == "verbose_json":
        return verbose_json(result, granularities), "application/json"
    return TEXT_WRITERS[response_format](result), "text/plain; charset=utf-8"
