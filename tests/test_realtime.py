"""OpenAI's realtime transcription as a library (`maxwhisper.realtime`): the session's events for
both configuration shapes, bad events answered with error events, turns by commit and by server
VAD, failures, limits, and MAX streaming jfk through a session."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import numpy as np
import pytest
from scripted import TurnScriptedTranscriber

from maxwhisper.api import SAMPLE_RATE, MaxWhisperError
from maxwhisper.realtime import EventError, Limits, RealtimeSession, run_session
from maxwhisper.realtime.protocol import WORDS

SCRIPT = "one two three four five six seven eight nine ten"
MANUAL_16K = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
    },
}


def at_24k(audio: np.ndarray) -> np.ndarray:
    """16 kHz samples at OpenAI's 24 kHz (FFmpeg's resampler)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=24000)
    frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    return np.concatenate([f.to_ndarray()[0] for f in resampler.resample(frame) + resampler.resample(None)])


def pcm16(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def append(samples: np.ndarray) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": pcm16(samples)})


def session_for(transcriber, **kwargs) -> RealtimeSession:
    def transcriber_for(model: str):
        if model not in ("whisper-1", "tiny.en"):
            raise EventError(f"unknown model {model!r}", "session.audio.input.transcription.model")
        return transcriber

    return RealtimeSession(transcriber_for, **kwargs)


def run(session: RealtimeSession, *messages) -> list[dict]:
    """Each message's answer, then the transcription work it makes, as a client would see them."""
    events = []
    for message in messages:
        events += session.receive(message if isinstance(message, str) else json.dumps(message))
        while session.has_work():
            events += session.work()
    return events


def chunks(audio: np.ndarray, seconds: float = 0.1):
    step = round(seconds * SAMPLE_RATE)
    return [append(audio[i : i + step]) for i in range(0, len(audio), step)]


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def test_session_created_and_updated_in_the_shape_the_client_speaks():
    session = session_for(TurnScriptedTranscriber(SCRIPT))
    created = session.created()
    assert created["type"] == "session.created" and created["event_id"].startswith("event_")
    vad = created["session"]["audio"]["input"]["turn_detection"]
    assert vad == {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
    [updated] = run(
        session,
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 16000},
                        "noise_reduction": {"type": "near_field"},
                        "transcription": {"model": "tiny.en", "language": "English", "prompt": "Counting."},
                        "turn_detection": None,
                    }
                },
                "include": [WORDS, "item.input_audio_transcription.logprobs"],
            },
        },
    )
    assert updated["type"] == "session.updated"
    audio = updated["session"]["audio"]["input"]
    assert audio["format"] == {"type": "audio/pcm", "rate": 16000} and audio["turn_detection"] is None
    assert audio["transcription"] == {"model": "tiny.en", "prompt": "Counting.", "language": "en"}
    assert audio["noise_reduction"] is None and updated["session"]["include"] == [WORDS]  # what it applies

    beta = session_for(TurnScriptedTranscriber(SCRIPT), beta=True)
    assert beta.created()["type"] == "transcription_session.created"
    [updated] = run(
        beta,
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 300},
                "input_audio_noise_reduction": None,
            },
        },
    )
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "pcm16"
    assert updated["session"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.6,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 300,
    }


@pytest.mark.parametrize(
    "message, param, code",
    [
        ("not json", None, "invalid_json"),
        ({"no": "type"}, "type", "missing_required_parameter"),
        ({"type": "response.create"}, "type", "invalid_value"),
        ({"type": "input_audio_buffer.append"}, "audio", "missing_required_parameter"),
        ({"type": "input_audio_buffer.append", "audio": "%%%"}, "audio", "invalid_value"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}, "audio", "invalid_value"),
        ({"type": "input_audio_buffer.commit"}, None, "input_audio_buffer_commit_empty"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "session.type", "invalid_value"),
        (
            {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
            "session.audio.input.format.type",
            "invalid_value",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
            },
            "session.audio.input.format.rate",
            "invalid_value",
        ),
        (
            {"type": "session.update", "session": {"audio": {"input": {"transcription": {"model": "gpt-9"}}}}},
            "session.audio.input.transcription.model",
            "invalid_value",
        ),
        (
            {"type": "session.update", "session": {"audio": {"input": {"transcription": {"language": "xx"}}}}},
            "session.audio.input.transcription.language",
            "invalid_value",
        ),
        (
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}},
            "session.audio.input.turn_detection.type",
            "invalid_value",
        ),
        (
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": 2}}}}},
            "session.audio.input.turn_detection.threshold",
            "invalid_value",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"turn_detection": {"silence_duration_ms": -1}}}},
            },
            "session.audio.input.turn_detection.silence_duration_ms",
            "invalid_value",
        ),
        ({"type": "session.update", "session": {"audio": {"output": {}}}}, "session.audio.output", "unknown_parameter"),
        (
            {"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}},
            "session.input_audio_format",
            "invalid_value",
        ),
        ({"type": "transcription_session.update", "session": "x"}, "session", "invalid_value"),
    ],
)
def test_a_bad_event_gets_an_error_event_and_the_session_goes_on(message, param, code):
    transcriber = TurnScriptedTranscriber(SCRIPT)
    session = session_for(transcriber)
    client_event = {**message, "event_id": "evt_1"} if isinstance(message, dict) else message
    [error] = run(session, client_event)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert (error["error"]["param"], error["error"]["code"]) == (param, code)
    assert error["error"]["event_id"] == ("evt_1" if isinstance(message, dict) else None)
    assert error["error"]["message"] and "Traceback" not in error["error"]["message"]
    assert session.closed is None
    before = session.config
    # the update was refused whole, and the session still streams
    events = run(
        session, MANUAL_16K, *chunks(np.zeros(2 * SAMPLE_RATE, np.float32)), {"type": "input_audio_buffer.commit"}
    )
    assert before.turn_detection is not None and of(events, "conversation.item.input_audio_transcription.completed")


def test_a_committed_turn_streams_its_words_as_deltas_then_completes():
    transcriber = TurnScriptedTranscriber(SCRIPT)
    session = session_for(transcriber)
    audio = np.zeros(4 * SAMPLE_RATE, np.float32)
    events = run(session, MANUAL_16K, {"type": "session.update", "session": {"include": [WORDS]}}, *chunks(audio))
    deltas = of(events, "conversation.item.input_audio_transcription.delta")
    assert deltas and not of(events, "input_audio_buffer.committed")  # words are committed while the turn goes on
    events += run(session, {"type": "input_audio_buffer.commit", "event_id": "c1"})
    [committed] = of(events, "input_audio_buffer.committed")
    [completed] = of(events, "conversation.item.input_audio_transcription.completed")
    deltas = of(events, "conversation.item.input_audio_transcription.delta")
    assert committed["previous_item_id"] is None
    assert {d["item_id"] for d in deltas} == {committed["item_id"]} == {completed["item_id"]}
    assert completed["transcript"] == "".join(d["delta"] for d in deltas) == "one two three four five six seven eight"
    assert completed["usage"] == {"type": "duration", "seconds": 4.0}
    assert events.index(committed) < events.index(completed)
    words = [w for d in deltas for w in d["words"]]
    assert [(w["word"], w["start_ms"], w["end_ms"]) for w in words[:2]] == [(" one", 0, 500), (" two", 500, 1000)]

    # the next turn follows the first: its prompt is the text before it, its commit names the item before
    events = run(session, *chunks(np.zeros(SAMPLE_RATE, np.float32)), {"type": "input_audio_buffer.commit"})
    [second] = of(events, "input_audio_buffer.committed")
    assert second["previous_item_id"] == committed["item_id"]
    assert transcriber.prompts[-1] == completed["transcript"]
    assert of(events, "conversation.item.input_audio_transcription.completed")[0]["transcript"] == "one two"
    # deltas carry words in the session's time: the second turn starts at 4 s
    assert of(events, "conversation.item.input_audio_transcription.delta")[0]["words"][0]["start_ms"] == 4000


def test_a_commit_of_less_than_100_ms_is_refused_and_24_khz_is_resampled():
    session = session_for(TurnScriptedTranscriber(SCRIPT))
    run(session, {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
    [error] = run(session, append(np.zeros(1200, np.float32)), {"type": "input_audio_buffer.commit"})  # 50 ms
    assert (
        error["error"]["code"] == "input_audio_buffer_commit_empty" and "buffer too small" in error["error"]["message"]
    )
    events = run(
        session,
        *chunks(np.zeros(2 * 24000, np.float32), 0.1 * SAMPLE_RATE / 24000),
        {"type": "input_audio_buffer.commit"},
    )
    [completed] = of(events, "conversation.item.input_audio_transcription.completed")
    assert completed["usage"]["seconds"] == pytest.approx(2.05, abs=0.02)  # 24 kHz audio counted at 16 kHz
    assert completed["transcript"] == "one two three four"


def test_clear_drops_the_turn_in_progress():
    session = session_for(TurnScriptedTranscriber(SCRIPT))
    events = run(
        session,
        MANUAL_16K,
        *chunks(np.zeros(3 * SAMPLE_RATE, np.float32)),
        {"type": "input_audio_buffer.clear"},
        *chunks(np.zeros(SAMPLE_RATE, np.float32)),
        {"type": "input_audio_buffer.commit"},
    )
    assert of(events, "input_audio_buffer.cleared")
    [completed] = of(events, "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == "one two" and completed["usage"]["seconds"] == 1.0  # the cleared audio is gone


def test_server_vad_makes_turns_of_speech(jfk_audio):
    """jfk, then 1.5 s of silence, at 16 kHz with server VAD: every turn starts with speech and stops at
    a silence, each committed and completed in order, its audio within the clip; silence alone makes none."""
    session = session_for(TurnScriptedTranscriber(SCRIPT))
    silence = np.zeros(round(1.5 * SAMPLE_RATE), np.float32)
    events = run(
        session,
        {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
        *chunks(np.concatenate([silence, jfk_audio, silence])),
    )
    started = of(events, "input_audio_buffer.speech_started")
    stopped = of(events, "input_audio_buffer.speech_stopped")
    assert started and len(started) == len(stopped) == len(of(events, "input_audio_buffer.committed"))
    assert len(of(events, "conversation.item.input_audio_transcription.completed")) == len(started)
    for start, stop in zip(started, stopped):
        assert start["item_id"] == stop["item_id"]
        order = [events.index(e) for e in (start, stop)]
        completed = [
            e
            for e in events
            if e.get("item_id") == start["item_id"]
            and e["type"] == "conversation.item.input_audio_transcription.completed"
        ]
        assert order == sorted(order) and events.index(completed[0]) > order[1]
        assert start["audio_start_ms"] < stop["audio_end_ms"]
    assert 1200 - 300 <= started[0]["audio_start_ms"] <= 1500 + 1000  # speech begins in jfk, less the prefix padding
    assert stopped[-1]["audio_end_ms"] <= 1500 + len(jfk_audio) * 1000 // SAMPLE_RATE + 1500

    quiet = session_for(TurnScriptedTranscriber(SCRIPT))
    assert run(quiet, *chunks(np.zeros(3 * 24000, np.float32))) == []


@pytest.mark.parametrize(
    "failure, kind",
    [
        (MaxWhisperError("tiny.en transcribes English only"), "invalid_request_error"),
        (RuntimeError("/secret/path exploded"), "server_error"),
    ],
)
def test_a_failed_transcription_fails_its_turn_and_the_session_goes_on(failure, kind):
    transcriber = TurnScriptedTranscriber(SCRIPT, fail=failure)
    session = session_for(transcriber)
    events = run(
        session, MANUAL_16K, *chunks(np.zeros(2 * SAMPLE_RATE, np.float32)), {"type": "input_audio_buffer.commit"}
    )
    [failed] = of(events, "conversation.item.input_audio_transcription.failed")
    assert failed["error"]["type"] == kind and "/secret" not in failed["error"]["message"]
    if kind == "invalid_request_error":
        assert failed["error"]["message"] == "tiny.en transcribes English only"
    assert not of(events, "conversation.item.input_audio_transcription.completed")
    transcriber.fail = None
    events = run(session, *chunks(np.zeros(SAMPLE_RATE, np.float32)), {"type": "input_audio_buffer.commit"})
    assert of(events, "conversation.item.input_audio_transcription.completed")[0]["transcript"] == "one two"


def _drive(session: RealtimeSession, messages: list, pause_s: float = 0.0, keep_open: float = 0.0):
    """run_session over queues: the client's messages (pause_s apart), then it waits keep_open seconds and
    leaves; returns (why it ended, the events sent)."""
    sent = []

    async def main():
        inbox: asyncio.Queue = asyncio.Queue()

        async def client():
            for m in messages:
                await inbox.put(m if isinstance(m, str) else json.dumps(m))
                await asyncio.sleep(pause_s)
            await asyncio.sleep(keep_open)
            await inbox.put(None)

        async def send(event):
            sent.append(event)

        task = asyncio.create_task(client())
        why = await run_session(session, inbox.get, send)
        task.cancel()
        return why

    return asyncio.run(main()), sent


def test_run_session_streams_and_keeps_to_its_limits():
    session = session_for(TurnScriptedTranscriber(SCRIPT))
    why, sent = _drive(
        session,
        [MANUAL_16K, *chunks(np.zeros(2 * SAMPLE_RATE, np.float32)), {"type": "input_audio_buffer.commit"}],
        keep_open=0.5,
    )
    assert why == "closed" and sent[0]["type"] == "session.created"
    assert of(sent, "conversation.item.input_audio_transcription.completed")[0]["transcript"] == "one two three four"

    idle = session_for(TurnScriptedTranscriber(SCRIPT), limits=Limits(idle_s=0.3))
    why, sent = _drive(idle, [MANUAL_16K], keep_open=2.0)
    assert why == "idle" and sent[-1]["error"]["code"] == "session_idle"

    short = session_for(TurnScriptedTranscriber(SCRIPT), limits=Limits(max_session_s=0.5))
    why, sent = _drive(short, [MANUAL_16K] * 10, pause_s=0.1, keep_open=2.0)
    assert why == "expired" and sent[-1]["error"]["code"] == "session_expired"

    behind = session_for(TurnScriptedTranscriber(SCRIPT), limits=Limits(max_backlog_s=2.0))
    events = [
        e for m in [json.dumps(MANUAL_16K), *chunks(np.zeros(3 * SAMPLE_RATE, np.float32))] for e in behind.receive(m)
    ]  # a model that never gets to this session's audio
    assert events[-1]["error"]["code"] == "session_behind" and behind.closed is not None


def test_max_streams_jfk_through_a_session(max_tiny_en, jfk_audio):
    """jfk at 24 kHz in 100 ms appends with server VAD, then silence: the turns' transcripts together
    are jfk's sentence, each the join of its deltas, and words were committed before their turn ended."""
    audio = np.concatenate([at_24k(jfk_audio), np.zeros(24000, np.float32)])
    session = RealtimeSession(lambda model: max_tiny_en)
    events = run(session, *chunks(audio, 0.1 * SAMPLE_RATE / 24000))
    completed = of(events, "conversation.item.input_audio_transcription.completed")
    deltas = of(events, "conversation.item.input_audio_transcription.delta")
    assert completed and not of(events, "conversation.item.input_audio_transcription.failed")
    for c in completed:
        assert c["transcript"] == "".join(d["delta"] for d in deltas if d["item_id"] == c["item_id"])
    text = " ".join(c["transcript"] for c in completed)
    normal = re.sub(r"[^a-z ]", "", text.lower()).split()
    assert (
        normal
        == (
            "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
        ).split()
    )
    stops = {e["item_id"]: events.index(e) for e in of(events, "input_audio_buffer.speech_stopped")}
    assert any(events.index(d) < stops[d["item_id"]] for d in deltas)  # streamed, not all at the turn's end
    starts = of(events, "input_audio_buffer.speech_started")
    assert all(
        a["audio_end_ms"] <= b["audio_start_ms"]
        for a, b in zip(of(events, "input_audio_buffer.speech_stopped"), starts[1:])
    )  # turns do not overlap
