"""The service on Ray Serve: an ingress deployment speaking OpenAI's audio API in front, one model
deployment per (backend, model, device) behind it, reached through `DeploymentHandle`s, so that
model replicas scale (and move to other machines of a cluster) without the front.

    ingress (FastAPI; one replica)  --DeploymentHandle-->  ModelServer max/tiny.en/cpu  (N replicas)
                                                          ModelServer faster/tiny.en/cpu ...

The ingress reads and checks each request (form, audio, size, length) so that bad input never
reaches a model; a model replica transcribes up to `max_batch` requests at once, which MAX decodes
together (`graph.shared_steps`), and takes more as those finish.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from ..api import DecodeOptions, MaxWhisperError, TranscriptionResult
from .openai_api import ApiError, Served

log = logging.getLogger("maxwhisper.service")

APP_NAME = "maxwhisper"
LOADING_RETRY_S = 15  # Retry-After while a model replica is still loading or compiling


@dataclass(frozen=True)
class ServiceConfig:
    """What `python -m maxwhisper serve` runs."""

    backends: tuple[str, ...] = ("max",)
    models: tuple[str, ...] = ("tiny.en",)
    device: str = "auto"
    precision: str = "fp32"
    replicas: int = 1
    max_batch: int = 8
    cpus_per_replica: float = 1.0
    max_seconds: float = 600.0  # longest audio accepted
    max_upload_mb: float = 25.0  # largest upload accepted (OpenAI's limit)
    request_timeout_s: float = 600.0
    ui: bool = False
    extra_ui_options: dict = field(default_factory=dict)

    @property
    def served(self) -> Served:
        return Served(tuple((b, m) for m in self.models for b in self.backends))

    def deployment_name(self, backend: str, model: str) -> str:
        return f"{backend}-{model}-{self.device}".replace("/", "_")

    def batch_of(self, backend: str) -> int:
        """Requests a replica of `backend` transcribes at once: MAX decodes them together; the
        others take them one at a time."""
        return self.max_batch if backend == "max" else 1


class ModelServer:
    """One loaded model on one backend and device (a model deployment's replica). Its constructor
    loads the model (Serve routes nothing to the replica before that ends, and the ingress answers
    503 while no replica is up); `transcribe` runs in a pool of `max_batch` threads."""

    def __init__(self, backend: str, model: str, device: str, precision: str, max_batch: int):
        from ..registry import create_warmed_up

        start = time.perf_counter()
        options = {"max_batch": max_batch} if backend == "max" else {}
        # first-call costs stay out of the requests, as the app's models warm up
        self.transcriber = create_warmed_up(backend, model=model, device=device, precision=precision, **options)
        self.pool = ThreadPoolExecutor(max_batch, thread_name_prefix="transcribe")
        self.loaded_s = time.perf_counter() - start
        log.info("%s %s on %s ready in %.1f s", backend, model, self.transcriber.device, self.loaded_s)

    async def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> TranscriptionResult | ApiError:
        """The result, or the ApiError to answer (the transcriber refused the request): returned,
        not raised, so that it crosses to the ingress as it is."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._transcribe, audio, options, None)

    async def transcribe_events(self, audio: np.ndarray, options: DecodeOptions):
        """`transcribe` as a stream (a handle called with stream=True; the app's progress): ("started",
        None) when a thread takes it, ("progress", fraction done) as the transcription goes, then
        ("result", the result or ApiError)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def progress(fraction: float) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("progress", fraction))

        def run():
            loop.call_soon_threadsafe(events.put_nowait, ("started", None))
            return self._transcribe(audio, options, progress)

        done = loop.run_in_executor(self.pool, run)
        while not done.done() or not events.empty():
            waiting = asyncio.ensure_future(events.get())
            await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield waiting.result()
            else:
                waiting.cancel()
        yield "result", done.result()

    def _transcribe(self, audio: np.ndarray, options: DecodeOptions, progress) -> TranscriptionResult | ApiError:
        try:
            return self.transcriber.transcribe(audio, options, progress=progress)
        except MaxWhisperError as e:
            return ApiError(422, str(e), code="unprocessable_request")
        except Exception as e:  # noqa: BLE001 - logged here; the client gets a message without internals
            log.exception("transcription failed")
            return ApiError(500, f"the transcription failed ({type(e).__name__}); the service's log has the details",
                            type="server_error", code="transcription_failed")

    def stats(self) -> dict:
        """This replica's id and Ray node, and how its MAX model shared work: token step calls and the sequences
        they carried, decodings that stepped alone, windows per encoder call (zeros and [] when nothing is shared)."""
        shared = getattr(self.transcriber, "decoder_model", None)
        steps, encoder = getattr(shared, "steps", None), getattr(shared, "encoder", None)
        import ray

        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "node": ray.get_runtime_context().get_node_id(),
                "steps": steps.steps if steps else 0, "rows_stepped": steps.rows_stepped if steps else 0,
                "decodings_alone": steps.decodings_alone if steps else 0,
                "encoder_batches": list(encoder.batches) if encoder else []}


class Ingress:
    """The HTTP front: OpenAI's audio API (and, with --ui, the Gradio app at /) over handles to
    the model deployments, keyed by (backend, model)."""

    def __init__(self, config: ServiceConfig, *handles):
        self.config = config
        self.handles = dict(zip(config.served.pairs, handles))
        self._started = time.monotonic()
        self._ready: dict[str, tuple[bool, float]] = {}  # deployment -> (a replica is up, since when it was not)
        threading.Thread(target=self._watch, name="readiness", daemon=True).start()

    def __serve_build_asgi_app__(self):
        from .http import build_api

        api = build_api(self)
        return _with_app(self, api) if self.config.ui else api

    def _watch(self) -> None:
        """Serve's view of the model deployments, once a second, off the requests' path (asking the
        controller costs a round trip)."""
        while True:
            try:
                status = serve.status().applications.get(APP_NAME)
                deployments = status.deployments if status else {}
                for backend, model in self.config.served.pairs:
                    name = self.config.deployment_name(backend, model)
                    deployment = deployments.get(name)
                    up = bool(deployment and deployment.replica_states.get("RUNNING", 0))
                    was_up, since = self._ready.get(name, (False, self._started))
                    self._ready[name] = (up, since if not up and not was_up else time.monotonic())
            except Exception:  # noqa: BLE001 - the controller may be busy or restarting: ask again
                log.debug("could not read Serve's status", exc_info=True)
            time.sleep(1.0)

    def model_ready(self, backend: str, model: str) -> tuple[bool, float]:
        """Whether a replica of the deployment is up, and for how long none has been."""
        up, since = self._ready.get(self.config.deployment_name(backend, model), (False, self._started))
        return up, time.monotonic() - since

    async def transcribe(self, backend: str, model: str, audio: np.ndarray,
                         options: DecodeOptions) -> TranscriptionResult:
        """The model deployment's result, or ApiError: 503 while it loads or when its replica
        stopped during the request, 504 past the request timeout."""
        ready, waited = self.model_ready(backend, model)
        if not ready:
            raise ApiError(503, f"{model} on {backend} is still loading (MAX compiles its graphs on first start; "
                                f"{waited:.0f} s so far): try again shortly", type="server_error",
                           code="model_loading", retry_after=LOADING_RETRY_S)
        response = self.handles[(backend, model)].transcribe.remote(audio, options)
        try:
            result = await asyncio.wait_for(response, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise ApiError(504, f"the transcription took longer than {self.config.request_timeout_s:g} s",
                           type="server_error", code="timeout") from None
        except Exception as e:  # noqa: BLE001 - e.g. the replica died: Serve starts another
            log.warning("a request to %s/%s failed: %s", backend, model, type(e).__name__)
            raise ApiError(503, "the model replica handling this request stopped; try again (Serve replaces it)",
                           type="server_error", code="replica_unavailable", retry_after=5) from None
        if isinstance(result, ApiError):
            raise result
        return result


def _with_app(ingress: Ingress, api):
    """The repository's Gradio app (app.py) mounted at / beside the API, built here in the replica
    (Gradio objects do not pickle), its transcriptions going to the model deployments."""
    import gradio as gr

    from showcase.page import build_demo, quiet_queue
    from showcase.choices import Choices
    from showcase.remote import ServiceTranscriptions
    from showcase.tabs.compare import EXAMPLES_DIR

    config = ingress.config
    choices = Choices(list(config.served.models), list(config.served.backends), config.device == "gpu")
    demo = build_demo(ServiceTranscriptions(ingress), config.max_seconds, choices=choices)
    demo.queue(default_concurrency_limit=1, max_size=64)
    quiet_queue(demo)
    return gr.mount_gradio_app(api, demo, path="/", allowed_paths=[str(EXAMPLES_DIR)])


def application(config: ServiceConfig) -> serve.Application:
    """The Serve application: the ingress bound to one model deployment per (backend, model)."""
    models = []
    for backend, model in config.served.pairs:
        resources = {"num_cpus": config.cpus_per_replica}
        if config.device == "gpu":
            resources["num_gpus"] = 1
        models.append(serve.deployment(ModelServer).options(
            name=config.deployment_name(backend, model), num_replicas=config.replicas, ray_actor_options=resources,
            max_ongoing_requests=config.batch_of(backend), health_check_timeout_s=120,
        ).bind(backend, model, config.device, config.precision, config.batch_of(backend)))
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="ingress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(config, *models)
