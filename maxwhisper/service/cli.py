"""`python -m maxwhisper serve`: the transcription service on Ray Serve.

Without --address (or $RAY_ADDRESS) it starts a Ray instance on this machine (nothing else to install or start),
whose own ports listen on the loopback only and whose workers run at --nice (default 0, normal priority);
with --address it joins an existing Ray cluster and places its replicas there. It prints the URL,
the deployments and their replicas, and what is still compiling; Ctrl-C shuts it down.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import time
import urllib.request
from pathlib import Path

from ..api import MaxWhisperError
from ..extras import checkout

log = logging.getLogger(__name__)
KEY_ENV = "MAXWHISPER_API_KEY"  # one API key, or several separated by commas
RAY_ALONE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is the loopback, as on macOS
# Ray's and Serve's periodic work, less often where that costs the service nothing, so that an idle service
# costs little CPU (benchmarks/idle_cpu.py). Set in the environment of a Ray instance of the service's own
# (each may be set otherwise there); a cluster's processes have the environment of its `ray start`.
QUIET_RAY = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",  # Serve's controller: a round a second, not ten
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "0",  # Serve's metrics set as they come, not flushed ten times a second
    "RAY_SERVE_EVENT_LOOP_MONITORING_INTERVAL_S": "60",  # each replica's event-loop lag probe (5 s)
    "RAY_enable_metrics_collection": "0",  # Ray's Prometheus metrics, which nothing scrapes here
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray's usage reports, as MAX's telemetry is off
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",  # the log monitor lists its folder every 5 s, not ten times a
    "LOG_NAME_UPDATE_INTERVAL_S": "5",  # second (the workers' logs go to files, not to this process)
    "REPORTER_UPDATE_INTERVAL_MS": "60000",  # the dashboard agent's process statistics (5 s; no dashboard runs)
}

EXAMPLE = f"""examples:
  python -m maxwhisper serve                               # MAX tiny.en on this machine, http://127.0.0.1:8000
  python -m maxwhisper serve --backend max,faster --ui     # two backends, and the app at /
  python -m maxwhisper serve --address auto --replicas 4   # on a running Ray cluster
  {KEY_ENV}=$(openssl rand -hex 24) python -m maxwhisper serve --host 0.0.0.0   # on the network, with a key"""


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..registry import BACKENDS, DEVICES, PRECISIONS

    p.epilog, p.formatter_class = EXAMPLE, argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--backend",
        default="max",
        help=f"comma-separated backends to serve ({', '.join(BACKENDS)}); the first is the default (default: max)",
    )
    p.add_argument(
        "--model",
        default="tiny.en",
        help="comma-separated installed models; the first is what 'whisper-1' means (default: tiny.en)",
    )
    p.add_argument("--device", default="auto", choices=list(DEVICES), help="auto (default): the GPU when there is one")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="default: fp32")
    p.add_argument("--replicas", type=_positive(int), default=1, help="replicas per model deployment (default 1)")
    p.add_argument(
        "--max-batch",
        type=_positive(int),
        default=8,
        help="requests a MAX replica decodes together (default 8; 1: one at a time)",
    )
    p.add_argument(
        "--cpus-per-replica",
        type=_positive(float),
        default=1.0,
        help="CPUs Ray reserves per model replica (default 1; MAX uses every core of its machine)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)"
    )
    p.add_argument("--port", type=_positive(int), default=8000, help="default 8000")
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="a Ray cluster to join (e.g. auto or ray://head:10001); default: $RAY_ADDRESS where set, "
        "else a Ray instance of its own",
    )
    p.add_argument("--ui", action="store_true", help="also serve the Gradio app at /")
    p.add_argument("--max-seconds", type=_positive(float), default=600.0, help="longest audio accepted (default 600)")
    p.add_argument(
        "--max-upload-mb", type=_positive(float), default=25.0, help="largest upload (default 25, as OpenAI)"
    )
    p.add_argument(
        "--max-uploads-mb",
        type=_positive(float),
        default=200.0,
        help="uploads held in memory at once, all requests together; past it a request gets 503 with "
        "Retry-After (default 200)",
    )
    p.add_argument(
        "--request-timeout",
        type=_positive(float),
        default=600.0,
        help="seconds after which a request is answered 504 (default 600)",
    )
    p.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=20.0,
        help="seconds a request's line and headers may take to arrive, from the connection or the "
        "request's first byte; then 408 and the connection closes (default 20)",
    )
    p.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds a request's body may pause; then 408 and the connection closes (default 30)",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=_count,
        default=64,
        help="connections open at once from one address, WebSockets included; more are answered 429 "
        "(default 64; 0: none, as behind a proxy, from whose address every connection comes)",
    )
    p.add_argument(
        "--max-sessions",
        type=_positive(int),
        default=8,
        help="realtime transcription sessions (/v1/realtime) per model replica; more are refused (default 8)",
    )
    p.add_argument(
        "--session-minutes",
        type=_positive(float),
        default=30.0,
        help="the longest a realtime session may last (default 30, as OpenAI's)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"a key clients must send (Authorization: Bearer KEY) on /v1; may be given again; also "
        f"${KEY_ENV} (several separated by commas) and --api-key-file. Default: none asked",
    )
    p.add_argument("--api-key-file", metavar="PATH", help="a file of API keys, one a line (# starts a comment)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the service answers to besides the address it listens on and the loopback "
        "(a DNS rebinding guard); default: none, and with --host 0.0.0.0 any name",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example) whose pages may call the API; '*': any. Default: none",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(0, 20),
        metavar="0-19",
        help="the niceness of a Ray instance of its own (Ray's default is 15, which yields to every "
        "other process); default 0: normal priority. A cluster's is set at its `ray start`",
    )


def api_keys(args: argparse.Namespace) -> list[str]:
    """The keys of --api-key, --api-key-file and $MAXWHISPER_API_KEY, checked."""
    keys = list(args.api_key) + [k for k in os.environ.get(KEY_ENV, "").split(",") if k.strip()]
    if args.api_key_file:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise MaxWhisperError(
                f"cannot read the API key file {args.api_key_file}: {getattr(e, 'strerror', None) or e}"
            ) from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    keys = [k.strip() for k in keys]
    bad = [k for k in keys if not k or not k.isascii() or not k.isprintable() or " " in k or "," in k]
    if bad:
        raise MaxWhisperError("an API key must be printable ASCII without spaces or commas")
    return keys


def config_of(args: argparse.Namespace, device: str):
    """The ServiceConfig the arguments ask for, checked before anything starts."""
    from ..checkpoint import installed_models
    from ..cpu_features import BF16_MISSING, has_bf16
    from ..realtime import Limits
    from ..registry import BACKENDS, installed_backend
    from .access import AccessPolicy
    from .deployments import ServiceConfig, ui_entry_point
    from .front import HttpLimits

    if args.ui:
        ui_entry_point()  # an installed app to mount, found before anything starts
    backends = tuple(dict.fromkeys(b.strip() for b in args.backend.split(",") if b.strip()))
    models = tuple(dict.fromkeys(m.strip() for m in args.model.split(",") if m.strip()))
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise MaxWhisperError(
            f"unknown backend(s) {', '.join(unknown) or '(none given)'}; valid backends: {', '.join(BACKENDS)}"
        )
    for b in backends:
        installed_backend(b)  # a missing one says which extra installs it
    installed = installed_models()
    absent = [m for m in models if m not in installed and not os.path.exists(m)]
    if absent or not models:
        raise MaxWhisperError(
            f"model(s) {', '.join(absent) or '(none given)'} not installed; installed: "
            f"{', '.join(installed) or 'none'} (`python -m maxwhisper models` says how to add one)"
        )
    for b in backends:
        if b == "max" and args.precision == "bf16" and device != "gpu" and not has_bf16():
            raise MaxWhisperError(BF16_MISSING)
        if args.precision not in BACKENDS[b].precisions.get("gpu" if device == "gpu" else "cpu", ()):
            raise MaxWhisperError(f"backend {b} has no precision {args.precision} on {device}")
    access = AccessPolicy.create(
        args.host, keys=api_keys(args), allowed_hosts=args.allowed_host, cors_origins=args.cors_origin
    )
    if args.max_uploads_mb < args.max_upload_mb:
        raise MaxWhisperError(
            f"--max-uploads-mb ({args.max_uploads_mb:g}) is less than one upload "
            f"(--max-upload-mb {args.max_upload_mb:g}): raise it"
        )
    http_limits = HttpLimits(
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        connections_per_client=args.max_connections_per_client,
    )
    return ServiceConfig(
        backends=backends,
        models=models,
        device=device,
        precision=args.precision,
        replicas=args.replicas,
        max_batch=args.max_batch,
        cpus_per_replica=args.cpus_per_replica,
        max_seconds=args.max_seconds,
        max_upload_mb=args.max_upload_mb,
        max_uploads_mb=args.max_uploads_mb,
        http_limits=http_limits,
        request_timeout_s=args.request_timeout,
        ui=args.ui,
        host=args.host,
        port=args.port,
        access=access,
        loopback_ray=not args.address,
        max_sessions=args.max_sessions,
        session_limits=Limits(max_session_s=60 * args.session_minutes),
    )


def replicas_short_of(config, resources: dict[str, float]) -> str | None:
    """What the model replicas ask of Ray beyond `resources` (what the cluster has), in a line that
    says what to change; None when they fit. Serve would leave the replicas that do not fit waiting,
    and the service would never be ready."""
    n = len(config.served.pairs) * config.replicas
    need = {"CPU": n * config.cpus_per_replica, **({"GPU": float(n)} if config.device == "gpu" else {})}
    short = {kind: amount for kind, amount in need.items() if amount > resources.get(kind, 0.0) + 1e-9}
    if not short:
        return None
    have = resources.get("CPU", 0.0)
    fit = math.floor(have / n * 10) / 10
    return (
        f"{n} model replica(s) ({len(config.served.pairs)} deployment(s) x {config.replicas}) need "
        + " and ".join(f"{amount:g} {kind}(s)" for kind, amount in short.items())
        + ", and Ray has "
        + " and ".join(f"{resources.get(kind, 0.0):g}" for kind in short)
        + ": serve fewer backends or models, or fewer --replicas"
        + (f", or lower --cpus-per-replica (to {fit:g})" if "CPU" in short and fit > 0 else "")
    )


def _device(requested: str, ray) -> str:
    """--device auto on a cluster: the GPU when the cluster has one; here: when MAX sees one."""
    if requested != "auto":
        return requested
    if ray.cluster_resources().get("GPU", 0) > 0:
        return "gpu"
    return "cpu"


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    if not args.address:
        # a Ray instance of its own takes the loopback for its node's address, and then listens on it alone
        # (Ray's switch for a single machine that forms no cluster); its processes inherit it
        os.environ[RAY_ALONE] = "0"
    import ray
    from ray import serve

    from .deployments import APP_NAME, application
    from .front import listening_socket

    config_of(args, "cpu" if args.device == "auto" else args.device)  # mistakes before Ray starts
    try:
        listening_socket(args.host, args.port).close()
    except OSError as e:
        raise MaxWhisperError(f"cannot listen on {args.host} port {args.port}: {e.strerror}") from None
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a shell started it ignoring Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    where = f"the Ray cluster at {args.address}" if args.address else "a Ray instance of its own"
    log.info(f"starting on {where} ...")
    # on a cluster the checkout this runs from travels to every node (their Python environments need the
    # 'serve' extra's packages); installed from a wheel, the nodes import their own installed maxwhisper
    root = checkout()
    code = root and {"working_dir": str(root), "excludes": [".venv", ".git", "artifacts", "benchmarks", "tests"]}
    # "local": a Ray instance of its own, not the cluster the last `ray start` here recorded (bulk.job);
    # its workers at --nice, not Ray's default 15
    ray.init(
        address=args.address or "local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env=code if args.address else None,
        **({} if args.address else {"_system_config": {"worker_niceness": args.nice}}),
    )
    try:
        config = config_of(args, _device(args.device, ray))
        short = replicas_short_of(config, ray.cluster_resources())
        if short and not args.address:
            raise MaxWhisperError(short)
        if short:  # a cluster may add nodes for them
            log.warning(f"warning: {short}; they wait until the cluster has room")
        serve.start(proxy_location="Disabled")  # the ingress serves HTTP itself (service.front)
        serve._run(application(config), name=APP_NAME, route_prefix=None, _blocking=False)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"
        print(
            f"MAX-Whisper service: {url}/v1 (OpenAI's audio API)"
            + (f", the app at {url}/" if config.ui else "")
            + f"; API docs at {url}/docs",
            flush=True,
        )
        keys = len(config.access.key_digests)
        print(
            f"  {keys} API key(s) asked on /v1" + (" and by the app's login page" if config.ui else "")
            if keys
            else "  no API key asked: anyone who reaches this address can use it",
            flush=True,
        )
        for backend, model in config.served.pairs:
            print(
                f"  {config.deployment_name(backend, model)}: {config.replicas} replica(s), "
                f"{config.batch_of(backend)} request(s) at once each, {config.precision}",
                flush=True,
            )
        _wait_until_ready(serve, APP_NAME, config, f"{url}/health")
        print("ready; Ctrl-C stops the service", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping ...")
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _wait_until_ready(serve, app: str, config, health: str) -> None:
    """Print what is still loading or compiling every 10 s until every deployment has a replica up
    and the ingress says so too (`health`)."""
    start, last = time.monotonic(), -math.inf
    names = [config.deployment_name(b, m) for b, m in config.served.pairs]
    while True:
        status = serve.status().applications.get(app)
        deployments = status.deployments if status else {}
        waiting = [n for n in names if n not in deployments or not deployments[n].replica_states.get("RUNNING")]
        failed = [
            n
            for n in ["ingress", *names]
            if n in deployments and deployments[n].status.value in ("UNHEALTHY", "DEPLOY_FAILED")
        ]
        if failed:
            raise MaxWhisperError(f"{', '.join(failed)} failed to start: {_last_line(deployments[failed[0]].message)}")
        if not waiting and _healthy(health):
            return
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(
                f"  loading {', '.join(waiting)} ({last - start:.0f} s; MAX compiles its graphs the first time, "
                "minutes on a few cores; requests get 503 until then)",
                flush=True,
            )
        time.sleep(1)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:  # 503 (HTTPError) while the ingress has not seen the replicas yet, or not listening
        return False


def _last_line(message: str) -> str:
    """A replica's failure as Serve reports it ends with the exception's own line."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"
