"""The service on Ray Serve: an ingress deployment serving OpenAI's audio API over HTTP in front,
one model deployment per (backend, model, device) behind it, reached through `DeploymentHandle`s, so
that model replicas scale (and move to other machines of a cluster) without the front.

    ingress (uvicorn, one replica, on the node   --DeploymentHandle-->  ModelServer max/tiny.en/cpu  (N replicas)
             where `serve` runs; Serve's proxy off)                      ModelServer faster/tiny.en/cpu ...

The ingress reads and checks each request (access, form, audio, size, length) so that bad input
never reaches a model; a model replica transcribes up to `max_batch` requests at once, which MAX
decodes together (`graph.shared_steps`), and takes more as those finish. A request whose replica
dies is given once more to a live replica or its replacement, within the request's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ray import serve
from ray.exceptions import RayActorError

from ..api import DecodeOptions, MaxWhisperError, TranscriptionResult
from ..extras import MissingExtra, require
from ..realtime import Limits
from .access import AccessPolicy
from .front import Front, HttpLimits
from .openai_api import ApiError, Served
from .replicas import ReplicaWatch

log = logging.getLogger("maxwhisper.service")

APP_NAME = "maxwhisper"
# names a callable (api, ingress, key_accepted) that mounts a page at / of the FastAPI app `api`, returning the app
UI_ENTRY_POINTS = "maxwhisper.ui"
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
    max_uploads_mb: float = 200.0  # uploads held in memory at once, across requests
    http_limits: HttpLimits = HttpLimits()  # what a connection may cost before the app has its request
    request_timeout_s: float = 600.0
    ui: bool = False
    extra_ui_options: dict = field(default_factory=dict)
    host: str = "127.0.0.1"  # where the ingress listens
    port: int = 8000
    access: AccessPolicy = AccessPolicy()
    loopback_ray: bool = False  # on a Ray instance of its own, its node address the loopback (no --address)
    max_sessions: int = 8  # realtime sessions per model replica up
    session_limits: Limits = Limits()  # a realtime session's length, idle time and backlog

    @property
    def served(self) -> Served:
        return Served(tuple((b, m) for m in self.models for b in self.backends))

    def deployment_name(self, backend: str, model: str) -> str:
        return f"{backend}-{model}-{self.device}".replace("/", "_")

    def batch_of(self, backend: str) -> int:
        """Requests a replica of `backend` transcribes at once: MAX decodes them together; the
        others take them one at a time."""
        from ..registry import BACKENDS

        return self.max_batch if BACKENDS[backend].decodes_together else 1


class ModelServer:
    """One loaded model on one backend and device (a model deployment's replica). Its constructor
    loads the model (Serve routes nothing to the replica before that ends, and the ingress answers
    503 while no replica is up); `transcribe` runs in a pool of `max_batch` threads."""

    def __init__(
        self, backend: str, model: str, device: str, precision: str, max_batch: int, loopback_ray: bool = False
    ):
        from ..registry import BACKENDS, create_warmed_up

        if loopback_ray:
            _replica_grpc_on_loopback()
        start = time.perf_counter()
        options = {"max_batch": max_batch} if BACKENDS[backend].decodes_together else {}
        # first-call costs stay out of the requests: the app's warm-up, and every graph a request may need
        self.transcriber = create_warmed_up(
            backend, every_graph=True, model=model, device=device, precision=precision, **options
        )
        self.pool = ThreadPoolExecutor(max_batch, thread_name_prefix="transcribe")
        self.windows = 0  # realtime stream updates taken
        self.loaded_s = time.perf_counter() - start
        log.info("%s %s on %s ready in %.1f s", backend, model, self.transcriber.device, self.loaded_s)

    async def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> TranscriptionResult | ApiError:
        """The result, or the ApiError to answer (the transcriber refused the request): returned,
        not raised, so that it crosses to the ingress as it is."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._transcribe, audio, options, None)

    async def transcribe_events(self, audio: np.ndarray, options: DecodeOptions, segments: bool = False):
        """`transcribe` as a stream (a handle called with stream=True; the app's progress, the API's
        streamed answers): ("started", None) when a thread takes it, ("progress", fraction done)
        as the transcription goes, with `segments` ("segments", their texts) as they are decoded,
        then ("result", the result or ApiError)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def progress(fraction: float) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("progress", fraction))

        def decoded(new) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("segments", [s.text for s in new]))

        def run():
            loop.call_soon_threadsafe(events.put_nowait, ("started", None))
            return self._transcribe(audio, options, progress, decoded if segments else None)

        done = loop.run_in_executor(self.pool, run)
        while not done.done() or not events.empty():
            waiting = asyncio.ensure_future(events.get())
            await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield waiting.result()
            else:
                waiting.cancel()
        yield "result", done.result()

    def windowed(self) -> bool:
        """Whether the transcriber hears a live stream's window in one pass (`api.WindowTranscriber`)."""
        return hasattr(self.transcriber, "transcribe_window")

    async def transcribe_window(
        self, audio: np.ndarray, options: DecodeOptions, draft: tuple[int, ...], padding_s: float | None
    ) -> tuple[TranscriptionResult, tuple[int, ...]] | ApiError:
        """A realtime session's stream update (`api.WindowTranscriber.transcribe_window`), decoded with the
        replica's other requests and updates; an ApiError as `transcribe` returns one."""
        self.windows += 1
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._call, lambda: self.transcriber.transcribe_window(audio, options, draft, padding_s)
        )

    def _transcribe(
        self, audio: np.ndarray, options: DecodeOptions, progress, on_segments=None
    ) -> TranscriptionResult | ApiError:
        return self._call(
            lambda: self.transcriber.transcribe(audio, options, progress=progress, on_segments=on_segments)
        )

    def _call(self, run):
        try:
            return run()
        except MaxWhisperError as e:
            return ApiError(422, str(e), code="unprocessable_request")
        except Exception as e:  # noqa: BLE001 - logged here; the client gets a message without internals
            log.exception("transcription failed")
            return ApiError(
                500,
                f"the transcription failed ({type(e).__name__}); the service's log has the details",
                type="server_error",
                code="transcription_failed",
            )

    def stats(self) -> dict:
        """This replica's id and Ray node, the realtime stream updates it took, and how its MAX model shared
        work: token step calls and the sequences they carried, decodings that stepped alone, windows per
        encoder call (zeros and [] when nothing is shared)."""
        shared = getattr(self.transcriber, "decoder_model", None)
        steps, encoder = getattr(shared, "steps", None), getattr(shared, "encoder", None)
        import ray

        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "node": ray.get_runtime_context().get_node_id(),
            "windows": self.windows,
            "steps": steps.steps if steps else 0,
            "rows_stepped": steps.rows_stepped if steps else 0,
            "decodings_alone": steps.decodings_alone if steps else 0,
            "encoder_batches": list(encoder.batches) if encoder else [],
        }


class Ingress:
    """The HTTP front: OpenAI's audio API (and, with --ui, the Gradio app at /) over handles to
    the model deployments, keyed by (backend, model), served on (config.host, config.port) behind
    the access policy."""

    def __init__(self, config: ServiceConfig, *handles):
        from .access import guard
        from .http import build_api

        if config.loopback_ray:
            _replica_grpc_on_loopback()
        self.config = config
        self.handles = dict(zip(config.served.pairs, handles))
        self.replicas = ReplicaWatch(
            APP_NAME, [config.deployment_name(b, m) for b, m in config.served.pairs], config.replicas
        )
        self.sessions = dict.fromkeys(config.served.pairs, 0)  # realtime sessions open, per deployment
        self._sessions_lock = threading.Lock()  # the sockets' event loop and the app's live streams count them
        self._windowed: dict[tuple[str, str], bool] = {}
        app = build_api(self)
        self.front = Front(
            guard(_with_app(self, app) if config.ui else app, config.access),
            config.host,
            config.port,
            config.http_limits,
        )

    def check_health(self) -> None:
        """Serve's health check: a replica whose HTTP server stopped is replaced."""
        if not self.front.alive:
            raise RuntimeError("the ingress's HTTP server stopped")

    def replicas_of(self, backend: str, model: str):
        """The deployment's replicas up, its target, how long it has had none (`replicas.Replicas`)."""
        return self.replicas.of(self.config.deployment_name(backend, model))

    def model_ready(self, backend: str, model: str) -> tuple[bool, float]:
        """Whether a replica of the deployment is up, and for how long none has been."""
        replicas = self.replicas_of(backend, model)
        return replicas.up > 0, replicas.down_s

    def _check_ready(self, backend: str, model: str) -> None:
        ready, waited = self.model_ready(backend, model)
        if not ready:
            raise ApiError(
                503,
                f"{model} on {backend} has no replica up (loading: MAX compiles its graphs on first "
                f"start; or replacing one that stopped; {waited:.0f} s so far): try again shortly",
                type="server_error",
                code="model_loading",
                retry_after=LOADING_RETRY_S,
            )

    @contextlib.contextmanager
    def session_slot(self, backend: str, model: str):
        """A realtime session's place on the deployment: at most `max_sessions` per replica up (ApiError
        503 beyond them, or while none is up), held until the session ends. The app's live streams
        under --ui hold them too."""
        self._check_ready(backend, model)
        most = self.config.max_sessions * self.replicas_of(backend, model).up
        with self._sessions_lock:
            if self.sessions[(backend, model)] >= most:
                raise ApiError(
                    503,
                    f"{model} on {backend} has its {most} realtime sessions "
                    f"({self.config.max_sessions} per replica): try again later",
                    type="server_error",
                    code="too_many_sessions",
                    retry_after=LOADING_RETRY_S,
                )
            self.sessions[(backend, model)] += 1
        try:
            yield
        finally:
            with self._sessions_lock:
                self.sessions[(backend, model)] -= 1

    async def windowed(self) -> dict[tuple[str, str], bool]:
        """Whether each deployment with a replica up hears a stream's window in one pass (asked once)."""
        for pair, handle in self.handles.items():
            if pair not in self._windowed and self.model_ready(*pair)[0]:
                self._windowed[pair] = await handle.windowed.remote()
        return dict(self._windowed)

    def _timeout(self) -> ApiError:
        return ApiError(
            504,
            f"the transcription took longer than {self.config.request_timeout_s:g} s",
            type="server_error",
            code="timeout",
        )

    def _lost(self, backend: str, model: str, error: Exception, retried: bool) -> None:
        """A replica died under a request: say so, look at the replicas now; the second time, give up."""
        self.replicas.refresh()
        log.warning(
            "a replica of %s/%s stopped under a request (%s)%s",
            backend,
            model,
            type(error).__name__,
            "" if retried else "; giving it to another replica",
        )
        if retried:
            raise ApiError(
                503,
                "the model replicas handling this request stopped twice; try again",
                type="server_error",
                code="replica_unavailable",
                retry_after=LOADING_RETRY_S,
            ) from None

    async def transcribe(
        self, backend: str, model: str, audio: np.ndarray, options: DecodeOptions
    ) -> TranscriptionResult:
        """The model deployment's result, or ApiError: 503 while none of its replicas is up, 504 past
        the request timeout. A request whose replica dies is given once more to a live replica or
        the replacement, within the same timeout."""
        self._check_ready(backend, model)
        deadline = time.monotonic() + self.config.request_timeout_s
        for retried in (False, True):
            response = self.handles[(backend, model)].transcribe.remote(audio, options)
            try:
                result = await asyncio.wait_for(response, max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                response.cancel()
                raise self._timeout() from None
            except RayActorError as e:
                self._lost(backend, model, e, retried)
                continue
            if isinstance(result, ApiError):
                raise result
            return result

    async def transcribe_stream(
        self, backend: str, model: str, audio: np.ndarray, options: DecodeOptions
    ) -> AsyncIterator[tuple[str, object]]:
        """`transcribe` as it goes: ("delta", a segment's text) as segments are decoded, then
        ("result", the result); ApiError as `transcribe` raises it. A stream whose replica dies is
        given once more, as a request is; its repeat skips the segments already given (at the same
        options the same audio decodes to the same segments)."""
        self._check_ready(backend, model)
        deadline = time.monotonic() + self.config.request_timeout_s
        given = 0
        for retried in (False, True):
            events = (
                self.handles[(backend, model)]
                .options(stream=True)
                .transcribe_events.remote(audio, options, segments=True)
            )
            decoded = 0
            try:
                while True:
                    kind, value = await asyncio.wait_for(events.__anext__(), max(deadline - time.monotonic(), 0.0))
                    if kind == "segments":
                        for text in value:
                            decoded += 1
                            if decoded > given:
                                given += 1
                                yield "delta", text
                    elif kind == "result":
                        if isinstance(value, ApiError):
                            raise value
                        yield "result", value
                        return
            except asyncio.TimeoutError:
                events.cancel()
                raise self._timeout() from None
            except RayActorError as e:
                self._lost(backend, model, e, retried)
            finally:
                events.cancel()


def _replica_grpc_on_loopback() -> None:
    """Serve starts a gRPC server in each replica for calls between deployments, bound to every
    interface ("[::]:0" in ray.serve 2.60, with no setting). On a Ray instance whose node address
    is the loopback nothing reaches it from elsewhere, so this replica binds it to the loopback.
    Called from a replica's constructor, which Serve runs before it starts that server."""
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:  # another Ray: its listeners are what it makes them (the service test checks them)
        log.warning("cannot keep Serve's replica gRPC server on the loopback with this version of Ray")
        return
    replica.add_port_to_grpc_server = lambda server, address: bind(
        server, "127.0.0.1:0" if address == "[::]:0" else address
    )


def ui_entry_point() -> importlib.metadata.EntryPoint:
    """The entry point of the page `--ui` serves (the showcase's: pyproject.toml declares it), so that
    the service imports no app; MissingExtra where the app is not installed."""
    require("app", "maxwhisper serve --ui")
    found = sorted(importlib.metadata.entry_points(group=UI_ENTRY_POINTS), key=lambda e: e.name)
    if not found:  # a checkout run without installing it
        raise MissingExtra(
            f"maxwhisper serve --ui needs an installed app ({UI_ENTRY_POINTS} entry point): "
            "pip install -e '.[app]' in the checkout"
        )
    return found[0]


def _with_app(ingress: Ingress, api):
    """`api` with the app's page at /, built here in the replica (Gradio objects do not pickle). Where
    the service has API keys, the page asks for one."""
    mount = ui_entry_point().load()
    access = ingress.config.access
    return mount(api, ingress, access.key_accepted if access.keyed else None)


def application(config: ServiceConfig) -> serve.Application:
    """The Serve application: the ingress bound to one model deployment per (backend, model)."""
    models = []
    for backend, model in config.served.pairs:
        resources = {"num_cpus": config.cpus_per_replica}
        if config.device == "gpu":
            resources["num_gpus"] = 1
        models.append(
            serve.deployment(ModelServer)
            .options(
                name=config.deployment_name(backend, model),
                num_replicas=config.replicas,
                ray_actor_options=resources,
                max_ongoing_requests=config.batch_of(backend),
                health_check_timeout_s=120,
            )
            .bind(backend, model, config.device, config.precision, config.batch_of(backend), config.loopback_ray)
        )
    import ray

    # the ingress listens on this machine's address: its replica runs on the node this process runs on
    here = {"num_cpus": 0, "resources": {f"node:{ray.util.get_node_ip_address()}": 0.001}}
    ingress = serve.deployment(Ingress).options(name="ingress", num_replicas=1, ray_actor_options=here)
    return ingress.bind(config, *models)
