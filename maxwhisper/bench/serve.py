"""`bench serve`: the transcription service under load.

Each setup (MAX with requests decoded together, MAX one request at a time, faster-whisper fp32 and
int8) is deployed in turn on a Ray instance of this process's own, behind the same ingress. For
each clip (jfk; the lecture's first 60 s) and each concurrency, that many closed-loop clients
send the clip over HTTP (each sends its next request when its last is answered) for at least
`--seconds`; the figures are requests and audio seconds per second, and the p50 and p95
latency. Before the load, the same jfk request alone against `transcribe()` in this process gives
what the service adds to one request.
"""

from __future__ import annotations

import asyncio
import io
import logging
import statistics
import time
from dataclasses import dataclass

import numpy as np

from .machine import device_tag, machine_info, versions
from .report import write_mode_report
from .specs import ServeRun

log = logging.getLogger(__name__)
CONCURRENCY = (1, 4, 16)
LECTURE_SECONDS = 60


@dataclass(frozen=True)
class Setup:
    label: str
    backend: str
    precision: str
    max_batch: int


SETUPS = (
    Setup("MAX, decoded together (max-batch 8)", "max", "fp32", 8),
    Setup("MAX, one at a time (max-batch 1)", "max", "fp32", 1),
    Setup("faster-whisper fp32", "faster", "fp32", 1),
    Setup("faster-whisper int8", "faster", "int8", 1),
)


def _wav(samples: np.ndarray) -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, samples, 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def clips() -> dict[str, tuple[bytes, float]]:
    """name -> (file bytes, seconds of audio)."""
    from ..audio import load_audio
    from .clips import audio_dir

    jfk = audio_dir() / "jfk.flac"
    lecture = load_audio(audio_dir() / "physicsworks.flac")[: LECTURE_SECONDS * 16000]
    return {
        "jfk.flac": (jfk.read_bytes(), len(load_audio(jfk)) / 16000),
        f"physicsworks.flac, first {LECTURE_SECONDS} s": (_wav(lecture), LECTURE_SECONDS),
    }


async def _load(url: str, audio: bytes, concurrency: int, seconds: float) -> list[tuple[float, float, int]]:
    """`concurrency` closed-loop clients for at least `seconds`, each at least twice: (sent, latency, status)."""
    import httpx

    done: list[tuple[float, float, int]] = []
    start = time.perf_counter()

    async def client(http):
        sent_here = 0
        while sent_here < 2 or time.perf_counter() - start < seconds:
            sent = time.perf_counter()
            reply = await http.post(url, files={"file": ("audio.wav", audio)}, data={"model": "whisper-1"})
            done.append((sent - start, time.perf_counter() - sent, reply.status_code))
            sent_here += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return done


def _wait_healthy(url: str, timeout_s: float = 120) -> None:
    """Until the ingress has seen the replica that serve.run waited for (it reads the replicas' state
    four times a second)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(url, timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not say ready in {timeout_s:g} s")
        time.sleep(0.25)


def deployed(config, label: str, failures: list[dict]) -> bool:
    """Whether the service of `config` runs, its ingress ready; if not, why is added to `failures`
    (the other setups still run)."""
    from ray import serve

    from ..service.deployments import APP_NAME, application

    try:
        serve.run(application(config), name=APP_NAME, route_prefix=None)
        _wait_healthy(f"http://{config.host}:{config.port}/health")
    except Exception as e:  # noqa: BLE001 - reported, the other setups still run
        failures.append({"setup": label, "error": f"{type(e).__name__}: {e}"[:500]})
        return False
    return True


def _measure(url: str, audio: bytes, audio_s: float, concurrency: int, seconds: float) -> dict:
    start = time.perf_counter()
    done = asyncio.run(_load(url, audio, concurrency, seconds))
    wall = time.perf_counter() - start
    ok = [latency for _, latency, status in done if status == 200]
    latencies = sorted(ok)
    return {
        "concurrency": concurrency,
        "requests": len(done),
        "failed": len(done) - len(ok),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3),
        "audio_s_per_s": round(len(ok) * audio_s / wall, 2),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3) if latencies else None,
    }


def _in_process(audio: bytes, repeats: int = 10) -> float:
    """Median seconds of `transcribe()` on one jfk in this process, after a warm-up."""
    from ..audio import load_audio
    from ..max_backend import MaxTranscriber

    transcriber, samples = MaxTranscriber("tiny.en", device="cpu"), load_audio(audio)
    transcriber.transcribe(samples)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        transcriber.transcribe(load_audio(audio))  # the service decodes the upload too
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main_serve(run: ServeRun, out_dir) -> int:
    """Runs every setup at every concurrency on both clips; writes serve-<machine>-tiny.en.{json,md}."""
    import ray
    from ray import serve

    from ..service.deployments import APP_NAME, ServiceConfig

    machine, vers = machine_info(), versions()
    audio = clips()
    jfk_bytes = audio["jfk.flac"][0]
    ray.init(include_dashboard=False, log_to_driver=False)
    runs, failures = [], []
    try:
        port = 8765
        serve.start(proxy_location="Disabled")  # the service's ingress serves HTTP itself
        url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
        for setup in SETUPS:
            log.info(f"--- {setup.label} ---")
            config = ServiceConfig(
                backends=(setup.backend,),
                models=("tiny.en",),
                device="cpu",
                precision=setup.precision,
                max_batch=setup.max_batch,
                max_seconds=600,
                host="127.0.0.1",
                port=port,
            )
            if not deployed(config, setup.label, failures):
                continue
            rows = []
            for name, (data, seconds) in audio.items():
                asyncio.run(_load(url, data, 2, 0))  # warm-up: every replica thread has transcribed once
                for c in run.concurrency:
                    row = {"clip": name, "audio_s": seconds, **_measure(url, data, seconds, c, run.seconds)}
                    log.info(f"{name} x{c}: {row['requests_per_s']} req/s, p50 {row['p50_s']} s, p95 {row['p95_s']} s")
                    rows.append(row)
            runs.append(
                {
                    "setup": setup.label,
                    "backend": setup.backend,
                    "precision": setup.precision,
                    "max_batch": setup.max_batch,
                    "rows": rows,
                }
            )
            serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        ray.shutdown()
    alone = _in_process(jfk_bytes)
    doc = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "versions": vers,
        "options": {
            "seconds": run.seconds,
            "concurrency": run.concurrency,
            "model": "tiny.en",
            "decode": "openai-whisper's transcribe() defaults, greedy",
        },
        "in_process_jfk_s": round(alone, 4),
        "runs": runs,
        "failures": failures,
    }
    stem = f"serve-{device_tag('cpu', machine)}-tiny.en"
    write_mode_report(doc, serve_markdown(doc), out_dir, stem)
    return int(bool(failures))


def _row(doc: dict, setup: str, clip: str, concurrency: int) -> dict | None:
    for run in doc["runs"]:
        if run["setup"].startswith(setup):
            return next((r for r in run["rows"] if r["clip"] == clip and r["concurrency"] == concurrency), None)
    return None


def serve_targets(doc: dict) -> list[str]:
    """The service's aims, met or not, on each clip at the highest concurrency."""
    lines = []
    top = max(doc["options"]["concurrency"])
    for clip in dict.fromkeys(r["clip"] for run in doc["runs"] for r in run["rows"]):
        together, alone = _row(doc, "MAX, decoded", clip, top), _row(doc, "MAX, one", clip, top)
        fasters = [
            r for r in (_row(doc, "faster-whisper fp32", clip, top), _row(doc, "faster-whisper int8", clip, top)) if r
        ]
        if together and fasters:
            best = max(r["requests_per_s"] for r in fasters)
            ratio = together["requests_per_s"] / best
            lines.append(
                f"- {clip}, {top} clients: MAX {ratio:.2f}x the faster of faster-whisper's rows "
                f"(aim 1.5x): {'met' if ratio >= 1.5 else 'not met'}"
            )
        if together and alone:
            ratio = together["requests_per_s"] / alone["requests_per_s"]
            p95 = together["p95_s"] <= alone["p95_s"]
            lines.append(
                f"- {clip}, {top} clients: decoding together {ratio:.2f}x one at a time (aim 1.3x), p95 "
                f"{together['p95_s']:.2f} vs {alone['p95_s']:.2f} s: "
                f"{'met' if ratio >= 1.3 and p95 else 'not met'}"
            )
    single = _row(doc, "MAX, decoded", "jfk.flac", 1)
    if single and doc.get("in_process_jfk_s"):
        added = single["p50_s"] / doc["in_process_jfk_s"] - 1
        lines.append(
            f"- one jfk request: {single['p50_s']:.3f} s through the service against "
            f"{doc['in_process_jfk_s']:.3f} s in-process, {100 * added:+.1f} % (aim under 5 %): "
            f"{'met' if added < 0.05 else 'not met'}"
        )
    return lines


def serve_markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"# The service under load: tiny.en on {m.get('cpu')} ({m.get('cores')} cores, {m.get('vector_isa')})",
        "",
        f"`python -m maxwhisper bench serve` ({doc['created']}): closed-loop HTTP clients against "
        "`python -m maxwhisper serve` on this machine (one model replica, the clients in the same machine), "
        f"each sending its next request when the last is answered, for at least {doc['options']['seconds']:g} s "
        "per row. Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v) + ".",
        "",
        "| setup | clip | clients | req/s | audio s/s | p50 s | p95 s | requests (failed) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in doc["runs"]:
        for r in run["rows"]:
            lines.append(
                f"| {run['setup']} | {r['clip']} | {r['concurrency']} | {r['requests_per_s']:.2f} | "
                f"{r['audio_s_per_s']:.1f} | {r['p50_s']} | {r['p95_s']} | {r['requests']} ({r['failed']}) |"
            )
    lines += ["", "Aims:", *serve_targets(doc)]
    for f in doc["failures"]:
        lines.append(f"- FAILED: {f['setup']}: {f['error']}")
    return "\n".join(lines) + "\n"
