"""`bench realtime`: live sessions of OpenAI's realtime transcription against one replica.

Each setup (MAX fp32 and int8, faster-whisper fp32 and int8) is served in turn by `serve` with one
model replica of `--cpus` CPUs. For N sessions at once (N rising), each session
connects to `/v1/realtime?intent=transcription` over a WebSocket, asks for server VAD (OpenAI's
defaults) and for each delta's words with their times (`realtime.protocol.WORDS`), and streams the
lecture at 24 kHz in 100 ms appends, each sent when its audio would have been spoken; the sessions
start 1/N s apart. A word's commit latency is when its delta arrived minus when its audio ended. N
keeps up when every session ended normally and the p90 latency over all their words is at most
`--p90` (`P90_BOUND_S` by default); N rises until it does not. The clients run in this process,
on the same machine.
The transcripts are scored against whisper-medium's (the whole lecture only) and against the first
session's at the setup's first N, which shows what sharing the replica changed in the text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shlex
import time
from dataclasses import dataclass, field

import numpy as np

from ..api import SAMPLE_RATE
from ..realtime.protocol import WORDS
from .report import ratio_text, write_mode_report
from .specs import RealtimeRun

log = logging.getLogger(__name__)
P90_BOUND_S = 2.5  # the p90 commit latency a number of sessions must keep to count as keeping up (default)
CHUNK_S = 0.1  # audio per append, as a microphone client sends it
RATE = 24000  # OpenAI's PCM rate
TAIL_S = 1.0  # silence after the clip, so that server VAD ends the last turn
END_WAIT_S = 60.0  # how long a session waits for its last transcript after its audio


def pcm16(audio: np.ndarray, rate: int = RATE) -> bytes:
    """16 kHz float32 samples as 16-bit little-endian PCM at `rate` (FFmpeg's resampler)."""
    if rate != SAMPLE_RATE:
        import av

        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        audio = np.concatenate([f.to_ndarray()[0] for f in resampler.resample(frame) + resampler.resample(None)])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class SessionRun:
    """What one session's client saw."""

    latencies: list[float] = field(default_factory=list)  # per committed word, seconds
    transcripts: list[str] = field(default_factory=list)  # the completed turns', in order
    errors: list[dict] = field(default_factory=list)  # error and failed events' error objects
    end_lag_s: float | None = None  # from the last audio sent to the last transcript (None: it never came)
    closed_early: bool = False  # the server ended the session before the client did

    @property
    def text(self) -> str:
        return " ".join(t for t in self.transcripts if t)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.closed_early and self.end_lag_s is not None


async def stream_session(
    url: str, data: bytes, delay_s: float = 0.0, headers: dict | None = None, model: str = "whisper-1", rate: int = RATE
) -> SessionRun:
    """One client: after `delay_s`, streams `data` (PCM16 at `rate`) and TAIL_S of silence in real time,
    then waits for the transcripts of every committed turn."""
    import websockets

    run = SessionRun()
    await asyncio.sleep(delay_s)
    step = round(CHUNK_S * rate) * 2
    data = data + bytes(round(TAIL_S * rate) * 2)
    committed, completed = set(), set()
    async with websockets.connect(url, additional_headers=headers or {}, max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created.get("type") != "session.created":
            run.errors.append(created.get("error", {"message": f"got {created.get('type')} first"}))
            return run
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "include": [WORDS],
                        "audio": {
                            "input": {"format": {"type": "audio/pcm", "rate": rate}, "transcription": {"model": model}}
                        },
                    },
                }
            )
        )
        t0 = time.perf_counter()  # when the session's audio begins, in real time
        last_sent: list[float] = []
        done = asyncio.Event()

        async def send():
            for k, i in enumerate(range(0, len(data), step)):
                await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK_S - time.perf_counter()))
                await ws.send(
                    json.dumps(
                        {"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i : i + step]).decode()}
                    )
                )
            last_sent.append(time.perf_counter())
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # a turn still open; else an error
            if committed <= completed:
                done.set()

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(len(data) / 2 / rate + END_WAIT_S):
                async for message in ws:
                    now = time.perf_counter()
                    event = json.loads(message)
                    kind = event["type"]
                    if kind == "conversation.item.input_audio_transcription.delta":
                        run.latencies += [now - t0 - w["end_ms"] / 1000 for w in event.get("words", [])]
                    elif kind == "input_audio_buffer.committed":
                        committed.add(event["item_id"])
                    elif kind == "conversation.item.input_audio_transcription.completed":
                        completed.add(event["item_id"])
                        run.transcripts.append(event["transcript"])
                    elif kind == "conversation.item.input_audio_transcription.failed":
                        completed.add(event["item_id"])
                        run.errors.append(event["error"])
                    elif kind == "error" and event["error"].get("code") != "input_audio_buffer_commit_empty":
                        run.errors.append(event["error"])
                    if last_sent and committed <= completed:
                        run.end_lag_s = now - last_sent[0]
                        break
                else:
                    run.closed_early = True
        except TimeoutError:
            pass
        finally:
            sender.cancel()
    return run


async def run_sessions(url: str, data: bytes, n: int, headers: dict | None = None) -> list[SessionRun]:
    """N sessions streaming the same audio, started 1/N s apart."""
    return list(await asyncio.gather(*(stream_session(url, data, k / n, headers) for k in range(n))))


def summary(runs: list[SessionRun], audio_s: float, bound_s: float = P90_BOUND_S) -> dict:
    """The figures of one N: latencies over every session's words, and whether it kept up."""
    from ..streaming import quantile

    latencies = [x for r in runs for x in r.latencies]
    p90 = quantile(latencies, 0.9)
    lags = [r.end_lag_s for r in runs if r.end_lag_s is not None]
    ok = all(r.ok for r in runs)
    return {
        "sessions": len(runs),
        "words": len(latencies),
        "latency_median_s": _round(quantile(latencies, 0.5)),
        "latency_p90_s": _round(p90),
        "latency_max_s": _round(max(latencies, default=None)),
        "end_lag_max_s": _round(max(lags, default=None)),
        "sessions_ok": sum(r.ok for r in runs),
        "errors": [e.get("code") or e.get("message") for r in runs for e in r.errors][:10],
        "keeps_up": ok and p90 is not None and p90 <= bound_s,
        "audio_s": audio_s,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass(frozen=True)
class Setup:
    label: str
    backend: str
    precision: str


SETUPS = (
    Setup("MAX fp32", "max", "fp32"),
    Setup("MAX int8", "max", "int8"),
    Setup("faster-whisper fp32", "faster", "fp32"),
    Setup("faster-whisper int8", "faster", "int8"),
)
TARGET = 1.5  # MAX's sessions kept up / faster-whisper's, at least


def main_realtime(run: RealtimeRun, out_dir) -> int:
    """Each setup served in turn; N sessions for each N of --sessions until one does not keep
    up; writes realtime-<machine>-tiny.en.{json,md}."""
    import ray
    from ray import serve

    from ..api import BackendError
    from ..audio import load_audio
    from ..registry import installed_backend
    from ..scoring import wer
    from ..service.deployments import APP_NAME, ServiceConfig
    from .clips import audio_dir, pseudo_reference
    from .machine import device_tag, machine_info, versions
    from .serve import deployed

    setups = [
        s
        for s in SETUPS
        if (not run.backends or s.backend in run.backends) and (not run.precisions or s.precision in run.precisions)
    ]
    if not setups:
        raise BackendError("nothing to measure: the realtime mode serves " + ", ".join(s.label for s in SETUPS))
    for backend in dict.fromkeys(s.backend for s in setups):  # a missing one is said before Ray starts
        installed_backend(backend)
    machine, vers = machine_info(), versions()
    audio = load_audio(audio_dir() / "physicsworks.flac")
    if run.seconds:
        audio = audio[: round(run.seconds * SAMPLE_RATE)]
    audio_s = len(audio) / SAMPLE_RATE
    reference = None if run.seconds else pseudo_reference("physicsworks.flac")
    data = pcm16(audio)
    port = _free_port()
    url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"
    ray.init(num_cpus=max(2, int(run.cpus)), include_dashboard=False, log_to_driver=False)
    runs, failures = [], []
    try:
        serve.start(proxy_location="Disabled")
        for setup in setups:
            log.info(f"--- {setup.label} ---")
            config = ServiceConfig(
                backends=(setup.backend,),
                models=("tiny.en",),
                device="cpu",
                precision=setup.precision,
                cpus_per_replica=run.cpus,
                host="127.0.0.1",
                port=port,
                max_sessions=max(run.sessions),
            )
            if not deployed(config, setup.label, failures):
                continue
            asyncio.run(run_sessions(url, data[: 10 * RATE * 2], 1))  # warm-up: one session of 10 s
            rows, alone = [], None
            for n in run.sessions:
                start = time.perf_counter()
                sessions = asyncio.run(run_sessions(url, data, n))
                row = {**summary(sessions, audio_s, run.p90), "wall_s": round(time.perf_counter() - start, 1)}
                alone = alone or next((s.text for s in sessions if s.ok), None)
                for key, text in (("wer_vs_whisper_medium", reference), ("wer_vs_first_n", alone)):
                    scores = [wer(text, s.text) for s in sessions if s.ok] if text else []
                    row[key] = round(sum(scores) / len(scores), 4) if scores else None
                rows.append(row)
                log.info(
                    f"{setup.label}, {n} sessions: latency median {row['latency_median_s']} s, p90 "
                    f"{row['latency_p90_s']} s, {row['sessions_ok']} of {n} ended normally: "
                    f"{'keeps up' if row['keeps_up'] else 'does not keep up'} ({row['wall_s']} s)"
                )
                if not row["keeps_up"]:
                    break
            kept = [r["sessions"] for r in rows if r["keeps_up"]]
            runs.append(
                {
                    "setup": setup.label,
                    "backend": setup.backend,
                    "precision": setup.precision,
                    "rows": rows,
                    "most_sessions_kept_up": max(kept, default=0),
                }
            )
            serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        ray.shutdown()
    command = "python -m maxwhisper bench realtime " + shlex.join(
        [
            "--backends",
            ",".join(dict.fromkeys(s.backend for s in setups)),
            "--precisions",
            ",".join(dict.fromkeys(s.precision for s in setups)),
            "--sessions",
            ",".join(map(str, run.sessions)),
            "--cpus",
            f"{run.cpus:g}",
            "--p90",
            f"{run.p90:g}",
        ]
        + (["--seconds", f"{run.seconds:g}"] if run.seconds else [])
    )
    doc = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "machine": machine,
        "versions": vers,
        "options": {
            "clip": "physicsworks.flac" + (f", first {run.seconds:g} s" if run.seconds else ""),
            "audio_s": round(audio_s, 2),
            "sessions": run.sessions,
            "p90_bound_s": run.p90,
            "chunk_s": CHUNK_S,
            "rate": RATE,
            "cpus_per_replica": run.cpus,
            "replicas": 1,
            "max_batch": ServiceConfig().max_batch,
            "model": "tiny.en",
            "turn_detection": "server_vad, OpenAI's defaults",
        },
        "runs": runs,
        "failures": failures,
    }
    stem = f"realtime-{device_tag('cpu', machine)}-tiny.en" + ("" if run.p90 == P90_BOUND_S else f"-p90-{run.p90:g}s")
    write_mode_report(doc, realtime_markdown(doc), out_dir, stem)
    return int(bool(failures))


def realtime_targets(doc: dict) -> list[str]:
    """The realtime mode's aim: MAX's sessions kept up against faster-whisper's better precision."""
    most = {r["setup"]: r["most_sessions_kept_up"] for r in doc["runs"]}
    faster = max((n for s, n in most.items() if s.startswith("faster")), default=None)
    lines = []
    for setup in ("MAX fp32", "MAX int8"):
        if setup not in most or faster is None:
            continue
        if not faster:  # no ratio: faster-whisper kept up with no N
            lines.append(f"- {setup}: {most[setup]} sessions kept up, faster-whisper none: no ratio to judge")
            continue
        ratio = most[setup] / faster
        lines.append(
            f"- {setup}: {most[setup]} sessions kept up against faster-whisper's {faster} "
            f"({ratio_text(ratio, TARGET)}x; aim {TARGET:g}x): {'met' if ratio >= TARGET else 'not met'}"
        )
    return lines


def realtime_markdown(doc: dict) -> str:
    m, o = doc["machine"], doc["options"]
    cpu = ", ".join(str(x) for x in (m.get("cpu_family_model"), f"{m.get('cores')} cores", m.get("vector_isa")) if x)
    lines = [
        f"# Realtime sessions on one replica: tiny.en on {m.get('cpu')} ({cpu})",
        "",
        f"`{doc['command']}` ({doc['created']}): N sessions of "
        f"`/v1/realtime?intent=transcription` at once, each streaming {o['clip']} ({o['audio_s']:g} s) at "
        f"{o['rate']} Hz in {o['chunk_s']:g} s appends as it would be spoken, server VAD with OpenAI's defaults, "
        f"against one model replica of {o['cpus_per_replica']:g} CPUs (MAX decoding up to {o['max_batch']} "
        "updates together); the clients on the same machine, starting 1/N s apart. Latency: when a word's delta "
        f"arrived minus when its audio ended, over every session's words. N keeps up when every session "
        f"ended normally and the p90 is at most {o['p90_bound_s']:g} s. WER vs the first N's: each session's "
        "transcript against the first session's of the setup's first N (at N = 1, a session alone). Versions: "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v)
        + ".",
        "",
        "| setup | sessions | words | median s | p90 s | max s | last transcript after the audio, s | "
        "ended normally | WER vs whisper-medium % | WER vs the first N's % | keeps up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for run in doc["runs"]:
        for r in run["rows"]:
            scores = " | ".join(
                "–" if r.get(k) is None else f"{100 * r[k]:.1f}" for k in ("wer_vs_whisper_medium", "wer_vs_first_n")
            )
            lines.append(
                f"| {run['setup']} | {r['sessions']} | {r['words']} | {r['latency_median_s']} | "
                f"{r['latency_p90_s']} | {r['latency_max_s']} | {r['end_lag_max_s']} | "
                f"{r['sessions_ok']} of {r['sessions']} | {scores} | {'yes' if r['keeps_up'] else 'no'} |"
            )
    lines += [
        "",
        "Most sessions kept up: " + ", ".join(f"{r['setup']} {r['most_sessions_kept_up']}" for r in doc["runs"]) + ".",
        "",
        "Aims:",
        *realtime_targets(doc),
    ]
    for f in doc["failures"]:
        lines.append(f"- FAILED: {f['setup']}: {f['error']}")
    return "\n".join(lines) + "\n"
