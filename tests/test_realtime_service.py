"""OpenAI's realtime transcription on the service (`/v1/realtime?intent=transcription`), on a real
local Ray instance: the official `openai` client's realtime connections (GA and beta), plain
WebSocket clients (two sessions at once, over two replicas), the API key in each way a client sends
it, refusals (no key, no intent, an unknown model, no room) and the idle limit."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import httpx
import pytest
from conftest import AUDIO
from test_service import _free_port, _wav, replica_stats

from maxwhisper.scoring import normalize, wer

JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
KEY = "realtime-key-0123456789"
SESSIONS = 2  # per replica
IDLE_S = 4.0


@pytest.fixture(scope="module")
def service(ray_local):
    """MAX (2 replicas decoding 4 updates together each) and faster-whisper (2 replicas) serving tiny.en
    with an API key, 2 realtime sessions per replica and a 4 s idle limit; the ingress serves HTTP."""
    from ray import serve

    from maxwhisper.realtime import Limits
    from maxwhisper.service.access import AccessPolicy
    from maxwhisper.service.deployments import APP_NAME, ServiceConfig, application

    port = _free_port()
    serve.start(proxy_location="Disabled")
    config = ServiceConfig(
        backends=("max", "faster"),
        models=("tiny.en",),
        device="cpu",
        replicas=2,
        max_batch=4,
        cpus_per_replica=0.5,
        host="127.0.0.1",
        port=port,
        access=AccessPolicy.create("127.0.0.1", keys=[KEY]),
        max_sessions=SESSIONS,
        session_limits=Limits(idle_s=IDLE_S),
    )
    serve.run(application(config), name=APP_NAME, route_prefix=None)
    deadline = time.monotonic() + 180
    while httpx.get(f"http://127.0.0.1:{port}/health", timeout=60).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    yield port
    serve.shutdown()


@pytest.fixture(scope="module")
def jfk_24k():
    from maxwhisper.audio import load_audio
    from maxwhisper.bench.realtime import pcm16

    return pcm16(load_audio(AUDIO / "jfk.flac"))


def _chunks(data: bytes, rate: int = 24000, seconds: float = 0.1):
    step = round(seconds * rate) * 2
    return [base64.b64encode(data[i : i + step]).decode() for i in range(0, len(data), step)]


def _until_completed(events, sent_all) -> list:
    """The events until every committed turn has completed or failed, once the audio is all sent."""
    seen, committed, done = [], set(), set()
    for event in events:
        seen.append(event)
        if event.type == "input_audio_buffer.committed":
            committed.add(event.item_id)
        elif event.type in (
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.input_audio_transcription.failed",
        ):
            done.add(event.item_id)
        if sent_all() and committed and committed <= done:
            return seen
    return seen


def test_the_openai_client_streams_jfk_in_real_time(service, jfk_24k):
    """openai's GA realtime connection (`client.realtime.connect`, the intent as a query parameter), jfk
    at 24 kHz in 100 ms appends as it is spoken, server VAD: deltas as words are committed, each turn
    completed with its deltas joined, and the turns together are jfk's sentence."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{service}/v1", api_key=KEY, max_retries=0)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        first = conn.recv()
        assert first.type == "session.created" and first.session.type == "transcription"
        conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
                    }
                },
            }
        )
        sent = threading.Event()

        def speak():
            start = time.perf_counter()
            for k, chunk in enumerate(_chunks(jfk_24k + bytes(48000))):  # jfk, then 1 s of silence
                time.sleep(max(0.0, start + (k + 1) * 0.1 - time.perf_counter()))
                conn.input_audio_buffer.append(audio=chunk)
            sent.set()
            conn.input_audio_buffer.commit()  # a turn still open; with none, an error says the buffer is empty

        threading.Thread(target=speak, daemon=True).start()
        threading.Timer(120, conn.close).start()  # a test that fails, not one that hangs
        events = _until_completed(conn, sent.is_set)
    kinds = [e.type for e in events]
    assert "session.updated" in kinds
    assert {e.error.code for e in events if e.type == "error"} <= {"input_audio_buffer_commit_empty"}
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert deltas and completed
    for c in completed:
        assert c.transcript == "".join(d.delta for d in deltas if d.item_id == c.item_id)
        assert kinds.index("input_audio_buffer.speech_started") < events.index(c)
    assert normalize(" ".join(c.transcript for c in completed)) == normalize(JFK)


def test_the_openai_beta_client_and_a_manual_commit(service, jfk_24k):
    """openai's beta realtime connection (`client.beta.realtime.connect`, OpenAI-Beta: realtime=v1; it
    always connects with wss:// unless given websocket_base_url): transcription_session.created and
    .updated in the beta shape; without turn detection, jfk sent at once and committed by the client
    is one turn with jfk's sentence."""
    from openai import OpenAI

    client = OpenAI(
        base_url=f"http://127.0.0.1:{service}/v1",
        websocket_base_url=f"ws://127.0.0.1:{service}/v1",
        api_key=KEY,
        max_retries=0,
    )
    with client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
        assert conn.recv().type == "transcription_session.created"
        conn.transcription_session.update(
            session={
                "input_audio_format": "pcm16",
                "turn_detection": None,
                "input_audio_transcription": {"model": "whisper-1"},
            }
        )
        updated = conn.recv()
        assert updated.type == "transcription_session.updated" and updated.session.turn_detection is None
        for chunk in _chunks(jfk_24k):
            conn.input_audio_buffer.append(audio=chunk)
        conn.input_audio_buffer.commit()
        threading.Timer(120, conn.close).start()
        events = _until_completed(conn, lambda: True)
    [completed] = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert normalize(completed.transcript) == normalize(JFK)


def test_two_plain_websocket_sessions_get_their_own_text_over_both_replicas(service):
    """Two `websockets` clients at once in real time, one with its key as the api_key query parameter,
    the other in an X-API-Key header: jfk's session gets jfk's sentence, the lecture's its own words
    (close to the service's offline transcript of the same audio), and both MAX replicas took updates."""
    from maxwhisper.audio import load_audio
    from maxwhisper.bench.realtime import pcm16, stream_session

    url = f"ws://127.0.0.1:{service}/v1/realtime?intent=transcription"
    lecture = load_audio(AUDIO / "physicsworks.flac")[: 12 * 16000]
    jfk = load_audio(AUDIO / "jfk.flac")

    async def both():
        return await asyncio.gather(
            stream_session(f"{url}&api_key={KEY}", pcm16(jfk)),
            stream_session(url, pcm16(lecture), 0.5, headers={"X-API-Key": KEY}),
        )

    jfk_run, lecture_run = asyncio.run(both())
    assert jfk_run.ok and lecture_run.ok, (jfk_run.errors, lecture_run.errors)
    assert normalize(jfk_run.text) == normalize(JFK)
    offline = httpx.post(
        f"http://127.0.0.1:{service}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {KEY}"},
        files={"file": ("lecture.wav", _wav(lecture))},
        data={"model": "whisper-1"},
        timeout=120,
    )
    assert wer(offline.json()["text"], lecture_run.text) < 0.25 and "americans" not in normalize(lecture_run.text)
    assert jfk_run.latencies and max(jfk_run.latencies) < 30

    stats = replica_stats()
    assert len(stats) == 2 and all(s["windows"] > 0 for s in stats.values())  # the sessions' updates spread


def test_the_realtime_benchmark_s_client_on_jfk(service, jfk_24k):
    """`bench --realtime`'s client and figures for N = 1 on jfk: the session ends normally with jfk's
    sentence and a latency for each committed word, and its row keeps up exactly when its p90 is
    within the bound."""
    from maxwhisper.bench.realtime import P90_BOUND_S, run_sessions, summary

    url = f"ws://127.0.0.1:{service}/v1/realtime?intent=transcription"
    (run,) = asyncio.run(run_sessions(url, jfk_24k, 1, headers={"Authorization": f"Bearer {KEY}"}))
    assert run.ok, run.errors
    assert normalize(run.text) == normalize(JFK)
    row = summary([run], 11.0)
    assert row["sessions_ok"] == 1 and row["words"] == len(run.latencies) >= len(JFK.split()) - 2
    assert 0 < row["latency_median_s"] <= row["latency_p90_s"] < 30 and row["end_lag_max_s"] is not None
    assert row["keeps_up"] == (row["latency_p90_s"] <= P90_BOUND_S)


def _connect(port: int, query: str = "intent=transcription", **kwargs):
    from websockets.sync.client import connect

    return connect(f"ws://127.0.0.1:{port}/v1/realtime?{query}", **kwargs)


def test_the_socket_refuses_with_an_error_event_and_never_hangs(service):
    """No key: the handshake is refused (403). The key as OpenAI's browser subprotocol: accepted, with
    the realtime subprotocol. A bad event gets an error event and the session goes on. No intent, an
    unknown model: an error event, then the close. Past 2 sessions per replica: too_many_sessions
    and 1013. A session without events for 4 s: session_idle, then the close."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        _connect(service)
    assert refused.value.response.status_code == 403

    with _connect(service, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        ws.send("not json")
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "invalid_json"
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"

    headers = {"Authorization": f"Bearer {KEY}"}
    for query, code in (("", "invalid_intent"), ("intent=transcription&model=gpt-9", "model_not_found")):
        with _connect(service, query, additional_headers=headers) as ws:
            assert json.loads(ws.recv(timeout=30))["error"]["code"] == code
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008

    opened = time.monotonic()
    held = [_connect(service, additional_headers=headers) for _ in range(2 * SESSIONS)]  # two replicas' worth
    try:
        for ws in held:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        with _connect(service, additional_headers=headers) as extra:
            assert json.loads(extra.recv(timeout=30))["error"]["code"] == "too_many_sessions"
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=30)
            assert closed.value.rcvd.code == 1013
        assert json.loads(held[0].recv(timeout=30))["error"]["code"] == "session_idle"
        assert IDLE_S <= time.monotonic() - opened < IDLE_S + 20
        with pytest.raises(ConnectionClosed):
            held[0].recv(timeout=30)
    finally:
        for ws in held:
            ws.close()


def test_every_event_gets_an_answer_and_the_socket_outlives_the_bad_ones(service):
    """What dropped the socket once, each answered with a short error event while the session goes
    on: a number past a float's range in turn_detection, JSON nested past Python's recursion limit,
    an append of 16 MiB of audio (over the 15 MiB an append holds), an unknown event type of 1 MB and
    a 1 MB event id (quoted in part). A message over the 32 MiB a message may hold is not read: the
    close 1009 with its reason."""
    from websockets.exceptions import ConnectionClosed

    from maxwhisper.realtime.session import MAX_MESSAGE_BYTES

    huge = 10**400
    bad = [
        (
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": huge}}},
                },
            },
            "invalid_value",
        ),
        (
            {"type": "transcription_session.update", "session": {"turn_detection": {"silence_duration_ms": huge}}},
            "invalid_value",
        ),
        ("[" * 100_000, "invalid_json"),
        ('{"type": "input_audio_buffer.append", "audio": ' + "[" * 50_000 + "]" * 50_000 + "}", "invalid_json"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(16 * 2**20)).decode()}, "invalid_value"),
        ({"type": "x" * 2**20}, "invalid_value"),
        ({"type": "input_audio_buffer.commit", "event_id": "e" * 2**20}, "input_audio_buffer_commit_empty"),
        ({"type": "session.update", "session": {"type": "transcription", "y" * 2**20: 1}}, "unknown_parameter"),
    ]
    with _connect(service, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        for message, code in bad:
            ws.send(message if isinstance(message, str) else json.dumps(message))
            reply = ws.recv(timeout=60)
            event = json.loads(reply)
            assert (event["type"], event["error"]["code"]) == ("error", code), reply[:300]
            assert len(reply) < 1000 and event["error"]["type"] == "invalid_request_error", reply[:300]
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"  # the session went on
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1009 and closed.value.rcvd.reason, closed.value
