"""The ingress's FastAPI app: OpenAI's audio endpoints, `/v1/models` and `/health`.

Every reply that is not a transcription is OpenAI's error shape with a fitting status; no reply
carries a traceback or a server path. A request is checked in this order, cheapest first: size,
form, fields, audio (readable, not too long, not empty or silent), then it goes to a model.
"""
from __future__ import annotations

import logging

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..api import SAMPLE_RATE, AudioError, NothingToTranscribe
from ..audio import check_transcribable, load_audio
from .openai_api import DEFAULT_MODEL_ALIAS, ApiError, parse_form, render

log = logging.getLogger("maxwhisper.service")


def build_api(ingress) -> FastAPI:
    """The app over `ingress` (a `deployments.Ingress`: its config and `transcribe`)."""
    config = ingress.config
    app = FastAPI(title="MAX-Whisper", description="OpenAI's audio API on MAX-Whisper (Ray Serve)",
                  docs_url="/docs", redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return await api_error(request, ApiError(e.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return await api_error(request, ApiError(400, "the request could not be read"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected failure on %s", request.url.path)
        return await api_error(request, ApiError(500, f"the service failed ({type(e).__name__}); its log has the "
                                                      "details", type="server_error", code="internal_error"))

    async def answer(request: Request, task: str) -> Response:
        length = request.headers.get("content-length")
        limit = int(config.max_upload_mb * 2**20)
        if length and length.isdigit() and int(length) > limit + 2**16:  # the form's own bytes besides the file
            raise ApiError(413, f"the upload is larger than {config.max_upload_mb:g} MB", code="upload_too_large")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "send the request as multipart/form-data with the audio in the 'file' field",
                           param="file", code="invalid_content_type")
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception:  # noqa: BLE001 - a malformed body, whatever the parser says
            raise ApiError(400, "the multipart form could not be read (one file at most)") from None
        try:
            upload = form.get("file")
            fields = {name: [v for v in form.getlist(name) if isinstance(v, str)] for name in form if name != "file"}
            request_ = parse_form(fields, task, config.served)
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "you must send the audio as a file in the 'file' field", param="file",
                               code="missing_required_parameter")
            data = await upload.read(limit + 1)
        finally:
            await form.close()
        if len(data) > limit:
            raise ApiError(413, f"the upload is larger than {config.max_upload_mb:g} MB", param="file",
                           code="upload_too_large")
        if not data:
            raise ApiError(400, "the audio file is empty (0 bytes)", param="file", code="empty_file")
        audio = await run_in_threadpool(_decode, data)
        seconds = len(audio) / SAMPLE_RATE
        if seconds > config.max_seconds:
            raise ApiError(413, f"the audio is {seconds:.1f} s long, more than this service's {config.max_seconds:g} s",
                           param="file", code="audio_too_long")
        _check_speech(audio)
        result = await ingress.transcribe(request_.backend, request_.model, audio, request_.options)
        body, media_type = render(result, request_.response_format, request_.granularities)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await answer(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await answer(request, "translate")

    @app.get("/v1/models")
    async def models() -> dict:
        served = config.served
        entries = [(DEFAULT_MODEL_ALIAS, served.default[1])] + [(m, m) for m in served.models]
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "maxwhisper", "root": model,
             "backends": [b for b, m in served.pairs if m == model]} for name, model in entries]}

    @app.get("/health")
    async def health() -> JSONResponse:
        deployments = []
        for backend, model in config.served.pairs:
            ready, waiting = ingress.model_ready(backend, model)
            deployments.append({"backend": backend, "model": model, "device": config.device, "ready": ready,
                                **({} if ready else {"loading_s": round(waiting)})})
        ok = all(d["ready"] for d in deployments)
        return JSONResponse({"status": "ok" if ok else "loading", "models": deployments},
                            status_code=200 if ok else 503)

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def elsewhere(request: Request, rest: str):
        """The API's other paths in its own shape, before anything mounted at / (the app) sees them."""
        known = {"/v1/audio/transcriptions": "POST", "/v1/audio/translations": "POST", "/v1/models": "GET"}
        if request.url.path in known:
            raise ApiError(405, f"{request.method} is not allowed on {request.url.path}: use {known[request.url.path]}")
        raise ApiError(404, f"no such endpoint: {request.method} {request.url.path}")

    return app


def _decode(data: bytes) -> np.ndarray:
    try:
        return load_audio(data)
    except AudioError:
        raise ApiError(415, "the file could not be read as audio: send a format FFmpeg reads, e.g. wav, flac, mp3, "
                            "ogg, webm or m4a", param="file", code="unsupported_audio") from None


def _check_speech(audio: np.ndarray) -> None:
    """The command line's and the app's refusal (`audio.check_transcribable`), as an OpenAI error."""
    try:
        check_transcribable(audio)
    except NothingToTranscribe as e:
        raise ApiError(400, str(e), param="file", code=f"audio_{e.reason}") from None
