"""The ingress's FastAPI app: OpenAI's audio endpoints, its realtime transcription over a WebSocket
(`realtime.serve_socket`), `/v1/models`, `/health` and `/docs`.

Every reply that is not a transcription is OpenAI's error shape with a fitting status; no reply
carries a traceback or a server path. A request is checked in this order, cheapest first, each
check bounding the work of the next: the form as it streams in (`upload.read_form`: size, fields),
the fields, the audio's length from its container and then as it decodes, its samples, whether it
holds anything to transcribe; then it goes to a model. A request's memory is its upload (at most
--max-upload-mb) and its decoded audio (at most --max-seconds, 64 KB a second as float32); the uploads
held at once share --max-uploads-mb, and at most DECODES_AT_ONCE are decoded at a time. Access (keys,
Host, Origin) is checked before all this, by `access.guard` around the app.
"""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..api import AudioError, AudioTooLong, InvalidSamples, NothingToTranscribe
from ..audio import check_transcribable, load_audio
from ..realtime.protocol import quoted
from .access import KEYED_PREFIX
from .openai_api import (
    DEFAULT_MODEL_ALIAS,
    ApiError,
    TranscriptionRequest,
    delta_event,
    done_event,
    form_schema,
    model_object,
    parse_form,
    render,
    sse,
)
from .realtime import serve_socket
from .upload import FormLimits, UploadBudget, read_form

log = logging.getLogger("maxwhisper.service")

DECODES_AT_ONCE = 2  # uploads decoded at a time (each holds its decoded audio): the rest wait their turn
ROUTES = (
    (re.compile(r"/v1/audio/(transcriptions|translations)"), "POST"),  # the API's paths, and their method
    (re.compile(r"/v1/models(/[^/]+)?"), "GET"),
)
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def build_api(ingress) -> FastAPI:
    """The app over `ingress` (a `deployments.Ingress`: its config, `transcribe`, `transcribe_stream`,
    `replicas` and `replicas_of`)."""
    config = ingress.config
    limits = FormLimits(file_bytes=int(config.max_upload_mb * 2**20))
    uploads = UploadBudget(int(config.max_uploads_mb * 2**20))
    decoding = asyncio.Semaphore(DECODES_AT_ONCE)
    app = FastAPI(
        title="MAX-Whisper",
        docs_url="/docs",
        redoc_url=None,
        description="OpenAI's audio API on MAX-Whisper (Ray Serve)."
        + (
            " Every /v1 path needs an API key: `Authorization: Bearer KEY` (Authorize, above)."
            if config.access.keyed
            else ""
        ),
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {
            404: f"no such endpoint: {request.method} {quoted(request.url.path)}",
            405: f"{request.method} is not allowed on {quoted(request.url.path)}",
        }.get(e.status_code, str(e.detail))
        return await api_error(request, ApiError(e.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return await api_error(request, ApiError(400, "the request could not be read"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected failure on %s", request.url.path)
        return await api_error(
            request,
            ApiError(
                500,
                f"the service failed ({type(e).__name__}); its log has the details",
                type="server_error",
                code="internal_error",
            ),
        )

    async def request_and_audio(request: Request, task: str) -> tuple[TranscriptionRequest, np.ndarray]:
        """The form checked and its audio decoded; the upload is dropped, and the budget has it back, on return."""
        with uploads.claim() as take:
            try:
                form = await read_form(
                    request.stream(),
                    request.headers.get("content-type", ""),
                    request.headers.get("content-length"),
                    limits,
                    take,
                )
            except ClientDisconnect:
                raise ApiError(
                    400, "the client closed the connection before its upload ended", code="client_disconnected"
                ) from None
            request_ = parse_form(form.fields, task, config.served)
            if form.file is None:
                raise ApiError(
                    400,
                    "you must send the audio as a file in the 'file' field",
                    param="file",
                    code="missing_required_parameter",
                )
            if not form.file:
                raise ApiError(400, "the audio file is empty (0 bytes)", param="file", code="empty_file")
            async with decoding:
                return request_, await run_in_threadpool(_decode, form.file, config.max_seconds)

    async def answer(request: Request, task: str) -> Response:
        request_, audio = await request_and_audio(request, task)  # only the audio is kept while the model works
        _check_speech(audio)
        if request_.stream:
            return await _streamed(ingress, request_, audio)
        result = await ingress.transcribe(request_.backend, request_.model, audio, request_.options)
        body, media_type = render(result, request_.response_format, request_.granularities)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    def documented(task: str) -> dict:
        """The route's form and answers, for /docs (the form is read by hand, as it streams)."""
        errors = {
            400: "A field or the form is wrong",
            401: "No valid API key",
            404: "No such model",
            413: "The upload or the audio is too long",
            415: "Not audio",
            503: "No replica up, or the uploads held at once fill their budget: Retry-After",
        }
        return {
            "openapi_extra": {
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form_schema(task)}}}
            },
            "responses": {
                200: {
                    "description": "The transcription: JSON (json, verbose_json), text (text, srt, "
                    "vtt) or, with stream=true, server-sent events",
                    "content": {"application/json": {}, "text/plain": {}, "text/event-stream": {}},
                },
                **{
                    status: {"description": what, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
                    for status, what in errors.items()
                },
            },
        }

    @app.post("/v1/audio/transcriptions", summary="Transcribe audio", **documented("transcribe"))
    async def transcriptions(request: Request) -> Response:
        return await answer(request, "transcribe")

    @app.post("/v1/audio/translations", summary="Translate audio into English", **documented("translate"))
    async def translations(request: Request) -> Response:
        return await answer(request, "translate")

    @app.get("/v1/models", summary="The models served")
    async def models() -> dict:
        served = config.served
        return {
            "object": "list",
            "data": [model_object(name, served) for name in [DEFAULT_MODEL_ALIAS, *served.models]],
        }

    @app.get("/v1/models/{model_id}", summary="One model")
    async def model(model_id: str) -> dict:
        return model_object(model_id, config.served)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        """OpenAI's realtime transcription (`?intent=transcription`): see `service.realtime`."""
        await serve_socket(ingress, websocket)

    @app.get("/health", summary="Whether every model deployment has its replicas up (no key needed)")
    async def health() -> JSONResponse:
        await run_in_threadpool(ingress.replicas.fresh)  # not what an idle service last read
        deployments = []
        for backend, model_name in config.served.pairs:
            replicas = ingress.replicas_of(backend, model_name)
            deployments.append(
                {
                    "backend": backend,
                    "model": model_name,
                    "device": config.device,
                    "ready": replicas.up > 0,
                    "replicas": replicas.up,
                    "target": replicas.target,
                    **({} if replicas.up else {"loading_s": round(replicas.down_s)}),
                }
            )
        status = (
            "ok"
            if all(d["replicas"] >= d["target"] for d in deployments)
            else "degraded"
            if all(d["ready"] for d in deployments)
            else "loading"
        )
        return JSONResponse({"status": status, "models": deployments}, status_code=503 if status == "loading" else 200)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def elsewhere(request: Request, rest: str):
        """The API's other paths in its own shape, before anything mounted at / (the app) sees them:
        405 on a path the API has with another method, else 404."""
        path = request.url.path
        method = next((method for pattern, method in ROUTES if pattern.fullmatch(path)), None)
        if method is not None:
            raise ApiError(405, f"{request.method} is not allowed on {quoted(path)}: use {method}")
        raise ApiError(404, f"no such endpoint: {request.method} {quoted(path)}")

    if config.access.keyed:
        app.openapi = lambda: _with_bearer(app)
    return app


def _with_bearer(app: FastAPI) -> dict:
    """The OpenAPI schema saying that the API's paths take a Bearer key (/docs' Authorize)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path.startswith(KEYED_PREFIX):
                    operation["security"] = [{"apiKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema


async def _streamed(ingress, request: TranscriptionRequest, audio: np.ndarray) -> StreamingResponse:
    """Server-sent events as OpenAI's: transcript.text.delta per segment as it is decoded, then
    transcript.text.done. A failure before the first event is the request's HTTP error; after, an
    error event (OpenAI's clients raise it)."""
    events = ingress.transcribe_stream(request.backend, request.model, audio, request.options)
    first = await anext(events)

    async def body():
        event, leading = first, True
        try:
            while True:
                kind, value = event
                if kind == "result":
                    yield sse(done_event(value))
                    return
                yield sse(delta_event(value.lstrip() if leading else value))
                leading = False
                event = await anext(events)
        except ApiError as e:
            yield sse(e.body())
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _decode(data: bytes, max_seconds: float) -> np.ndarray:
    """The upload's audio, its length checked from its container and then as it decodes."""
    try:
        return load_audio(data, max_seconds=max_seconds)
    except AudioTooLong as e:
        raise ApiError(413, f"{e} of this service", param="file", code="audio_too_long") from None
    except InvalidSamples as e:
        raise ApiError(400, f"{e}: it cannot be transcribed", param="file", code="invalid_audio") from None
    except AudioError:
        raise ApiError(
            415,
            "the file could not be read as audio: send a format FFmpeg reads, e.g. wav, flac, mp3, ogg, webm or m4a",
            param="file",
            code="unsupported_audio",
        ) from None


def _check_speech(audio: np.ndarray) -> None:
    """The command line's and the app's refusal (`audio.check_transcribable`), as an OpenAI error."""
    try:
        check_transcribable(audio)
    except NothingToTranscribe as e:
        raise ApiError(400, str(e), param="file", code=f"audio_{e.reason}") from None
