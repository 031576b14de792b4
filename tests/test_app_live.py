"""The app's Live tab (showcase/tabs/live.py) without a browser: a session over a scripted transcriber (commits,
the tentative tail, latency on a fake clock, stop, errors, a visitor who leaves), the tab's handlers
(a recording's chunks, its stop, the limit on streams at once, sessions sharing a transcriber),
and MAX on jfk sent as a browser sends it (48 kHz int16 chunks)."""
from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest

from maxwhisper.api import SAMPLE_RATE, ModelError
from scripted import ScriptedTranscriber
from showcase.tabs import live

SCRIPT = " ".join(f"w{i}" for i in range(20))  # 10 s of "speech": word i spans [i / 2, (i + 1) / 2) s
JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_words_are_committed_as_they_agree_and_the_rest_at_stop():
    clock = [100.0]
    model = ScriptedTranscriber(SCRIPT)
    session = live.LiveSession(lambda: model, clock=lambda: clock[0])
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # each sample holds its stream time
    for i in range(4):
        clock[0] += 1.0
        session.add((SAMPLE_RATE, audio[i * SAMPLE_RATE:(i + 1) * SAMPLE_RATE]))
        wait_for(lambda: len(model.calls) == i + 1 and session.behind_s == 0)
    wait_for(lambda: len(session.committed) >= 4)
    text, figures = session.render()
    assert "<span id='live-committed'>w0 w1 w2 w3" in text
    assert f"style='{live.TENTATIVE_STYLE}'> w" in text  # the last hypothesis's tail, in grey
    assert "listening" in figures and "commit latency: last word" in figures and "4 s heard, 0.0 s behind" in figures
    assert all(lat >= 0 for lat in session.latencies)

    clock[0] += 1.0
    session.add((SAMPLE_RATE, audio[4 * SAMPLE_RATE:5 * SAMPLE_RATE]))
    session.stop(timeout=60)
    assert not session.running
    assert " ".join(w.text.strip() for w in session.committed) == " ".join(f"w{i}" for i in range(10))
    text, figures = session.render()
    assert "w9</span>" in text and f"style='{live.TENTATIVE_STYLE}'></span>" in text
    assert figures.startswith("stopped")
    session.add((SAMPLE_RATE, audio[:SAMPLE_RATE]))  # a chunk after the stop is ignored
    assert session.received_s == 5.0 and session.ended


def test_the_figures_say_how_far_behind_the_stream_is():
    lock = threading.Lock()
    session = live.LiveSession(lambda: ScriptedTranscriber(SCRIPT), lock)
    audio = np.arange(3 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    with lock:  # the model is busy with another stream's update
        for i in range(3):
            session.add((SAMPLE_RATE, audio[i * SAMPLE_RATE:(i + 1) * SAMPLE_RATE]))
        assert session.behind_s == 3.0 and "3 s heard, 3.0 s behind" in session.render()[1]
    wait_for(lambda: session.behind_s == 0)
    session.stop(timeout=10)


def test_a_failed_load_is_a_message_without_server_paths():
    def load():
        raise ModelError("model 'nope' is not installed in /root/.cache/secret/models")

    session = live.LiveSession(load)
    session.add((SAMPLE_RATE, np.zeros(SAMPLE_RATE, np.int16)))
    wait_for(lambda: not session.running)
    _, figures = session.render()
    assert figures.startswith("Live transcription stopped: model 'nope' is not installed")
    assert "/root" not in figures
    assert not session.ended  # failed: the recording's next chunks do not start it again
    session.stop(timeout=5)  # stopping a failed session is harmless


def test_a_session_that_hears_nothing_ends(monkeypatch):
    monkeypatch.setattr(live, "IDLE_S", 0.2)
    session = live.LiveSession(lambda: ScriptedTranscriber(SCRIPT))
    wait_for(lambda: not session.running, timeout=10)
    assert session.render()[1].startswith("stopped")


class OneTranscriber:
    """Transcriptions' `transcriber`, handing out one shared transcriber."""

    def __init__(self, transcriber):
        self.shared = transcriber

    def transcriber(self, backend, model, device):
        return self.shared


def test_a_recording_through_the_tab_s_handlers():
    streams = live.LiveStreams(OneTranscriber(ScriptedTranscriber(SCRIPT)))
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    session, text, figures = streams.chunk((SAMPLE_RATE, audio[:SAMPLE_RATE]), None, "max", "tiny.en", "cpu")
    assert session.running and "live-committed" in text
    for i in range(1, 4):
        wait_for(lambda: session.behind_s == 0)
        same, _, _ = streams.chunk((SAMPLE_RATE, audio[i * SAMPLE_RATE:(i + 1) * SAMPLE_RATE]), session, "max",
                                   "tiny.en", "cpu")
        assert same is session
    assert streams.chunk((SAMPLE_RATE, np.zeros(0, np.int16)), session, "max", "tiny.en", "cpu")[0] is session
    shown = list(streams.stop(session))
    assert all(state is session for state, _, _ in shown)
    assert shown[-1][2].startswith("stopped") and "w7</span>" in shown[-1][1]
    late = streams.chunk((SAMPLE_RATE, audio[:SAMPLE_RATE]), session, "max", "tiny.en", "cpu")
    assert late == (session, *session.render())  # sent before the stop, arrived after it: starts nothing
    assert len(streams._sessions) == 1
    time.sleep(live.LATE_S)
    later, _, _ = streams.chunk((SAMPLE_RATE, audio[:SAMPLE_RATE]), session, "max", "tiny.en", "cpu")
    assert later is not session and later.running  # the next recording
    later.stop(timeout=10)
    assert list(streams.stop(None)) == [(None, "", "")]
    bad, _, figures = streams.chunk((0, np.ones(100, np.int16)), None, "max", "tiny.en", "cpu")
    assert figures.startswith("Live transcription stopped: invalid sample rate")
    bad.stop(timeout=10)


def test_at_most_the_limit_of_streams_run_at_once():
    streams = live.LiveStreams(OneTranscriber(ScriptedTranscriber(SCRIPT)), limit=2)
    first, second = streams.start("max", "tiny.en", "cpu"), streams.start("max", "tiny.en", "cpu")
    with pytest.raises(live.TooManyStreams, match="2 live streams are running already"):
        streams.start("max", "tiny.en", "cpu")
    assert streams.chunk(None, None, "max", "tiny.en", "cpu") == (None, "", "2 live streams are running "
                                                                            "already: try again in a minute")
    first.stop(timeout=10)
    streams.start("max", "tiny.en", "cpu").stop(timeout=10)
    second.stop(timeout=10)


def test_sessions_on_one_transcriber_take_turns():
    class Slow(ScriptedTranscriber):
        def __init__(self, script):
            super().__init__(script)
            self.inside, self.most = 0, 0

        def transcribe(self, audio, options, progress=None):
            self.inside += 1
            self.most = max(self.most, self.inside)
            time.sleep(0.05)
            self.inside -= 1
            return super().transcribe(audio, options, progress)

    model = Slow(SCRIPT)
    streams = live.LiveStreams(OneTranscriber(model))
    sessions = [streams.start("max", "tiny.en", "cpu") for _ in range(2)]
    audio = np.arange(3 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    for i in range(3):
        for s in sessions:
            s.add((SAMPLE_RATE, audio[i * SAMPLE_RATE:(i + 1) * SAMPLE_RATE]))
        time.sleep(0.02)
    for s in sessions:
        s.stop(timeout=30)
    assert len(model.calls) >= 2 and model.most == 1


def as_browser_sends(audio: np.ndarray) -> np.ndarray:
    """16 kHz float samples -> 48 kHz int16, as gr.Audio(type="numpy") streams a microphone."""
    frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
    return np.concatenate([f.to_ndarray()[0] for f in resampler.resample(frame) + resampler.resample(None)])


def test_max_transcribes_jfk_from_browser_chunks(max_tiny_en, jfk_audio):
    from whisper.normalizers import EnglishTextNormalizer

    session = live.LiveSession(lambda: max_tiny_en)
    browser = as_browser_sends(jfk_audio)
    assert browser.dtype == np.int16 and len(browser) == 3 * len(jfk_audio)
    for i in range(0, len(browser), 48_000):  # a second at a time, each transcribed before the next
        done = session.updates
        session.add((48_000, browser[i:i + 48_000]))
        wait_for(lambda: session.updates == done + 1, timeout=300)
    assert session.updates == 11 and session.committed  # words agreed on while the audio came in
    session.stop(timeout=300)
    normalise = EnglishTextNormalizer()
    assert normalise("".join(w.text for w in session.committed)) == normalise(JFK)
    assert session.received_s == pytest.approx(len(jfk_audio) / SAMPLE_RATE, abs=0.01)
    assert session.compute_s > 0 and len(session.latencies) == len(session.committed)  # (sent faster than spoken)
