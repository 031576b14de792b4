"""The transcription service (`maxwhisper.service`) on a real local Ray instance: OpenAI's client
against it, bad input of every kind, requests decoded together, a killed replica, the command."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import AUDIO
from maxwhisper.scoring import normalize

JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = httpx.Timeout(180.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def service(ray_local):
    """MAX (2 replicas, 4 requests decoded together each) and faster-whisper (2 replicas) serving
    tiny.en on the session's Ray instance, with the app at /; half a CPU per replica leaves room
    on 2 CPUs."""
    from ray import serve

    from maxwhisper.service.deployments import APP_NAME, ServiceConfig, application

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServiceConfig(backends=("max", "faster"), models=("tiny.en",), device="cpu", replicas=2, max_batch=4,
                           cpus_per_replica=0.5, max_seconds=60.0, max_upload_mb=2.0, request_timeout_s=300.0,
                           ui=True)
    serve.run(application(config), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    # as `serve` does before it says ready: the ingress learns that the replicas are up from Serve's
    # status, read once a second, so for a moment after serve.run it still answers 503
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/health", timeout=TIMEOUT).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(service):
    from openai import OpenAI

    return OpenAI(base_url=f"{service}/v1", api_key="not needed", max_retries=0, timeout=180)


def test_the_openai_client_gets_jfk_in_every_format(client):
    jfk = (AUDIO / "jfk.flac").read_bytes()
    text = client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", jfk)).text
    assert normalize(text) == normalize(JFK)
    plain = client.audio.transcriptions.create(model="tiny.en", file=("jfk.flac", jfk), response_format="text")
    assert normalize(plain) == normalize(JFK)
    srt = client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", jfk), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "ask what you can do for your country" in srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", jfk), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00.000 --> ")
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", jfk),
                                                 response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and verbose.duration == pytest.approx(11.0)
    assert normalize(" ".join(w.word for w in verbose.words)) == normalize(JFK)
    assert verbose.segments[0].start == 0 and verbose.segments[-1].end <= 11.0 and verbose.segments[0].tokens
    faster = client.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", jfk),
                                                extra_body={"backend": "faster"})
    assert normalize(faster.text) == normalize(JFK)


def test_models_health_and_an_english_only_model_asked_to_translate(client, service):
    models = client.models.list()
    assert [m.id for m in models.data] == ["whisper-1", "tiny.en"]
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and {m["backend"] for m in health["models"]} == {"max", "faster"}
    from openai import UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError, match="English-only"):
        client.audio.translations.create(model="whisper-1", file=("jfk.flac", (AUDIO / "jfk.flac").read_bytes()))


def test_a_burst_of_bad_requests_gets_openai_errors_then_a_good_one_succeeds(service):
    """Every kind of bad input at once: each gets its status and OpenAI's error shape, no
    traceback and no server path; the service then transcribes as before."""
    jfk = (AUDIO / "jfk.flac").read_bytes()
    rng = np.random.default_rng(0)
    cases = [  # (what, files, data, expected status, the field blamed)
        ("no file", None, {"model": "whisper-1"}, 400, "file"),
        ("empty file", {"file": ("a.wav", b"")}, {"model": "whisper-1"}, 400, "file"),
        ("not audio", {"file": ("a.mp3", b"this is a text file, not audio" * 50)}, {"model": "whisper-1"}, 415, "file"),
        ("too long", {"file": ("long.wav", _wav((rng.standard_normal(61 * 16000) * 0.1).astype(np.float32)))},
         {"model": "whisper-1"}, 413, "file"),
        ("oversized", {"file": ("big.wav", os.urandom(3 * 2**20))}, {"model": "whisper-1"}, 413, None),
        ("silent", {"file": ("s.wav", _wav(np.zeros(32000, np.float32)))}, {"model": "whisper-1"}, 400, "file"),
        ("too short", {"file": ("t.wav", _wav(np.full(800, 0.3, np.float32)))}, {"model": "whisper-1"}, 400, "file"),
        ("unknown model", {"file": ("j.flac", jfk)}, {"model": "whisper-9"}, 404, "model"),
        ("no model", {"file": ("j.flac", jfk)}, {}, 400, "model"),
        ("unknown backend", {"file": ("j.flac", jfk)}, {"model": "whisper-1", "backend": "torch"}, 400, "backend"),
        ("unknown format", {"file": ("j.flac", jfk)}, {"model": "whisper-1", "response_format": "xml"}, 400,
         "response_format"),
        ("nan temperature", {"file": ("j.flac", jfk)}, {"model": "whisper-1", "temperature": "nan"}, 400,
         "temperature"),
        ("negative temperature", {"file": ("j.flac", jfk)}, {"model": "whisper-1", "temperature": "-1"}, 400,
         "temperature"),
        ("words without verbose_json", {"file": ("j.flac", jfk)},
         {"model": "whisper-1", "timestamp_granularities[]": "word"}, 422, "timestamp_granularities[]"),
        ("unknown field", {"file": ("j.flac", jfk)}, {"model": "whisper-1", "speed": "2"}, 400, "speed"),
        ("bad beam size", {"file": ("j.flac", jfk)}, {"model": "whisper-1", "beam_size": "0"}, 400, "beam_size"),
    ]

    def send(case):
        what, files, data, _, _ = case
        return what, httpx.post(f"{service}/v1/audio/transcriptions", files=files, data=data, timeout=TIMEOUT)

    with ThreadPoolExecutor(len(cases) + 2) as pool:
        replies = list(pool.map(send, cases))
        odd = [pool.submit(httpx.post, f"{service}/v1/audio/transcriptions", json={"model": "whisper-1"}),
               pool.submit(httpx.get, f"{service}/v1/audio/transcriptions")]
        odd = [f.result() for f in odd]
    for (what, reply), (_, _, _, status, param) in zip(replies, cases):
        error = reply.json()["error"]
        assert (what, reply.status_code, error["param"]) == (what, status, param), error
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert "Traceback" not in reply.text and str(ROOT) not in reply.text and "/root" not in reply.text
    assert [r.status_code for r in odd] == [400, 405] and all("error" in r.json() for r in odd)

    good = httpx.post(f"{service}/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk)},
                      data={"model": "whisper-1"}, timeout=TIMEOUT)
    assert good.status_code == 200 and normalize(good.json()["text"]) == normalize(JFK)


def _tokens(service, audio: bytes, **fields) -> list[list[int]]:
    reply = httpx.post(f"{service}/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                       data={"model": "whisper-1", "response_format": "verbose_json", **fields}, timeout=TIMEOUT)
    reply.raise_for_status()
    return [s["tokens"] for s in reply.json()["segments"]]


def test_requests_sent_together_are_decoded_together_with_their_own_tokens(service):
    """Eight requests at once (jfk, a lecture minute, jfk with a prompt, the lecture from 7 s) give
    the tokens each gives alone, and the MAX replicas stepped several of them in one call."""
    from ray import serve

    from maxwhisper.audio import load_audio

    lecture = load_audio(AUDIO / "physicsworks.flac")[: 60 * 16000]
    clips = [((AUDIO / "jfk.flac").read_bytes(), {}), (_wav(lecture), {}),
             ((AUDIO / "jfk.flac").read_bytes(), {"prompt": "President Kennedy's inaugural address."}),
             (_wav(lecture[7 * 16000:]), {})]
    alone = [_tokens(service, audio, **fields) for audio, fields in clips]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: _tokens(service, job[0], **job[1]), clips * 2))
    assert together == alone * 2

    handle = serve.get_deployment_handle("max-tiny.en-cpu", app_name="maxwhisper")
    stats = {}
    for _ in range(40):  # each call reaches one replica: ask until both have answered
        s = handle.stats.remote().result()
        stats[s["replica"]] = s
        if len(stats) == 2:
            break
    assert sum(s["rows_stepped"] for s in stats.values()) > sum(s["steps"] for s in stats.values())


def test_the_app_beside_the_api_transcribes_through_the_model_deployments(service):
    """`serve --ui`: the Gradio app at /, in Chromium: its status line is the service's, and a
    comparison of jfk runs on the model deployments (the ingress loads no model of its own)."""
    from playwright.sync_api import expect, sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"{service}/", timeout=120_000)
            expect(page.locator("#status")).to_contain_text("Service (2 replica(s) per model", timeout=60_000)
            page.set_input_files("input[type=file]", str(AUDIO / "jfk.flac"))
            expect(page.locator("audio, #waveform, .waveform-container").first).to_be_attached(timeout=60_000)
            page.click("#run")
            expect(page.locator("#message")).to_contain_text("Finished:", timeout=300_000)
            for backend in ("max", "faster"):
                assert normalize(page.locator(f"#text-{backend} textarea").input_value()) == normalize(JFK)
        finally:
            browser.close()
    assert httpx.get(f"{service}/health").json()["status"] == "ok"  # the API beside it


def test_a_killed_replica_is_replaced_and_nothing_hangs(service):
    """One of the two MAX replicas is killed while requests run: each request either succeeds or
    gets a 503 to retry, within its timeout; requests sent after it succeed; Serve brings the
    deployment back to two running replicas."""
    import ray
    from ray import serve

    jfk = (AUDIO / "jfk.flac").read_bytes()

    def request():
        return httpx.post(f"{service}/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk)},
                          data={"model": "whisper-1"}, timeout=TIMEOUT)

    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and "max-tiny.en-cpu" in a["name"] and "REPLICA" in a["name"]]
    assert len(replicas) == 2, replicas
    with ThreadPoolExecutor(6) as pool:
        during = [pool.submit(request) for _ in range(6)]
        time.sleep(0.5)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        during = [f.result() for f in during]
    assert all(r.status_code in (200, 503) for r in during) and any(r.status_code == 200 for r in during)
    assert all(normalize(r.json()["text"]) == normalize(JFK) for r in during if r.status_code == 200)
    assert all(r.headers.get("retry-after") for r in during if r.status_code == 503)

    after = [request() for _ in range(3)]
    assert [r.status_code for r in after] == [200] * 3
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        deployment = serve.status().applications["maxwhisper"].deployments["max-tiny.en-cpu"]
        if deployment.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(2)
    assert deployment.replica_states.get("RUNNING", 0) == 2


def test_the_serve_command_answers_the_openai_client_and_stops_on_ctrl_c(tmp_path):
    """`python -m maxwhisper serve` as a user starts it: a Ray instance of its own, the URL
    printed, the openai client gets the JFK sentence, Ctrl-C ends it with exit status 0."""
    from openai import OpenAI

    port = _free_port()
    env = {**os.environ, "MODULAR_TELEMETRY_ENABLED": "0", "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "maxwhisper", "serve", "--port", str(port), "--max-batch", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready"):
                break
        assert any(f"http://127.0.0.1:{port}/v1" in line for line in lines), "".join(lines)
        assert lines[-1].startswith("ready"), "".join(lines)
        with (AUDIO / "jfk.flac").open("rb") as f:
            text = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0).audio.transcriptions \
                .create(model="whisper-1", file=f).text
        assert normalize(text) == normalize(JFK)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_a_replica_warms_up_as_the_app_s_models_do(monkeypatch):
    """Before its first request a model replica's transcriber has had the app's untimed first call
    (`registry.create_warmed_up`: one transcription of 1 s of silence), so that no first-call cost
    lands in the first comparison of `serve --ui`."""
    import maxwhisper.registry
    from maxwhisper.service.deployments import ModelServer
    from showcase.transcriptions import LocalTranscriptions

    heard = []

    class Recorder:
        load_s = compile_s = 0.0
        device = "cpu"

        def __init__(self, backend):
            self.backend = backend

        def transcribe(self, audio, *args, **kwargs):
            heard.append((self.backend, len(audio), float(np.abs(audio).max())))

    monkeypatch.setattr(maxwhisper.registry, "create_transcriber", lambda backend, **kw: Recorder(backend))
    server = ModelServer("faster", "tiny.en", "cpu", "fp32", 1)
    server.pool.shutdown()
    LocalTranscriptions().models.get("faster", "tiny.en", "cpu")  # the app's
    assert heard == [("faster", 16000, 0.0)] * 2


def test_replicas_that_ray_has_no_room_for_are_refused_with_what_to_change():
    """Three backends at a CPU a replica on two CPUs: Serve would leave one waiting and the service
    would say "loading" for ever; `serve` says so before it starts (on a cluster, a warning)."""
    from maxwhisper.service.cli import replicas_short_of
    from maxwhisper.service.deployments import ServiceConfig

    three = ServiceConfig(backends=("max", "faster", "openai"), device="cpu")
    assert replicas_short_of(three, {"CPU": 2.0}) == (
        "3 model replica(s) (3 deployment(s) x 1) need 3 CPU(s), and Ray has 2: serve fewer backends or models, "
        "or fewer --replicas, or lower --cpus-per-replica (to 0.6)")
    assert replicas_short_of(three, {"CPU": 3.0}) is None
    assert replicas_short_of(ServiceConfig(backends=("max", "faster"), replicas=2, cpus_per_replica=0.5),
                             {"CPU": 2.0}) is None  # the tests' service
    gpu = replicas_short_of(ServiceConfig(models=("tiny.en", "base"), device="gpu"), {"CPU": 16.0, "GPU": 1.0})
    assert gpu.startswith("2 model replica(s) (2 deployment(s) x 1) need 2 GPU(s), and Ray has 1: ")
    assert "cpus-per-replica" not in gpu


def test_audio_and_options_are_refused_as_the_command_line_refuses_them():
    """The library's checks (`audio.check_transcribable`, `DecodeOptions`) as OpenAI errors: the
    reason becomes the code, the option at fault the param."""
    from maxwhisper.service.http import _check_speech
    from maxwhisper.service.openai_api import ApiError, Served, parse_form

    for samples, code in [(np.zeros(0, np.float32), "audio_no_samples"),
                          (np.full(800, 0.3, np.float32), "audio_too_short"),
                          (np.zeros(32000, np.float32), "audio_silent")]:
        with pytest.raises(ApiError) as error:
            _check_speech(samples)
        assert (error.value.status, error.value.param, error.value.code) == (400, "file", code)
    with pytest.raises(ApiError, match="at least 0.01, got 0.001") as error:
        parse_form({"model": ["whisper-1"], "temperature": ["0.001"]}, "transcribe", Served((("max", "tiny.en"),)))
    assert (error.value.status, error.value.param) == (422, "temperature")
