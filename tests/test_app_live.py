"""The app's Live tab (app_live.py) without a browser: a session over a scripted transcriber (commits,
the tentative tail, latency on a fake clock, stop, errors, a visitor who leaves), the limit on
streams at once, and MAX on jfk sent as a browser sends it (48 kHz int16 chunks)."""
from __future__ import annotations

import time

import av
import numpy as np
import pytest

import app_live
from maxwhisper.api import SAMPLE_RATE, ModelError
from scripted import ScriptedTranscriber

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
    session = app_live.LiveSession(lambda: model, clock=lambda: clock[0])
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # each sample holds its stream time
    for i in range(4):
        clock[0] += 1.0
        session.add((SAMPLE_RATE, audio[i * SAMPLE_RATE:(i + 1) * SAMPLE_RATE]))
        wait_for(lambda: len(model.calls) == i + 1 and session.waiting_s == 0)
    wait_for(lambda: len(session.committed) >= 4)
    text, figures = session.render()
    assert "<span id='live-committed'>w0 w1 w2 w3" in text
    assert f"style='{app_live.TENTATIVE_STYLE}'> w" in text  # the last hypothesis's tail, in grey
    assert "listening" in figures and "commit latency: last word" in figures and "4 s heard" in figures
    assert all(lat >= 0 for lat in session.latencies)

    clock[0] += 1.0
    session.add((SAMPLE_RATE, audio[4 * SAMPLE_RATE:5 * SAMPLE_RATE]))
    session.stop(timeout=60)
    assert not session.running
    assert " ".join(w.text.strip() for w in session.committed) == " ".join(f"w{i}" for i in range(10))
    text, figures = session.render()
    assert "w9</span>" in text and f"style='{app_live.TENTATIVE_STYLE}'></span>" in text
    assert figures.startswith("stopped")
    session.add((SAMPLE_RATE, audio[:SAMPLE_RATE]))  # a chunk after the stop is ignored
    assert session.received_s == 5.0


def test_a_failed_load_is_a_message_without_server_paths():
    def load():
        raise ModelError("model 'nope' is not installed in /root/.cache/secret/models")

    session = app_live.LiveSession(load)
    session.add((SAMPLE_RATE, np.zeros(SAMPLE_RATE, np.int16)))
    wait_for(lambda: not session.running)
    _, figures = session.render()
    assert figures.startswith("Live transcription stopped: model 'nope' is not installed")
    assert "/root" not in figures
    session.stop(timeout=5)  # stopping a failed session is harmless


def test_a_session_that_hears_nothing_ends(monkeypatch):
    monkeypatch.setattr(app_live, "IDLE_S", 0.2)
    session = app_live.LiveSession(lambda: ScriptedTranscriber(SCRIPT))
    wait_for(lambda: not session.running, timeout=10)
    assert session.render()[1].startswith("stopped")


def test_at_most_the_limit_of_streams_run_at_once():
    class Cache:
        def get(self, backend, model, device):
            return ScriptedTranscriber(SCRIPT)

    streams = app_live.LiveStreams(Cache(), limit=2)
    first, second = streams.start("max", "tiny.en", "cpu"), streams.start("max", "tiny.en", "cpu")
    with pytest.raises(app_live.TooManyStreams, match="2 live streams are running already"):
        streams.start("max", "tiny.en", "cpu")
    first.stop(timeout=10)
    streams.start("max", "tiny.en", "cpu").stop(timeout=10)
    second.stop(timeout=10)


def as_browser_sends(audio: np.ndarray) -> np.ndarray:
    """16 kHz float samples -> 48 kHz int16, as gr.Audio(type="numpy") streams a microphone."""
    frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
    return np.concatenate([f.to_ndarray()[0] for f in resampler.resample(frame) + resampler.resample(None)])


def test_max_transcribes_jfk_from_browser_chunks(max_tiny_en, jfk_audio):
    from whisper.normalizers import EnglishTextNormalizer

    session = app_live.LiveSession(lambda: max_tiny_en)
    browser = as_browser_sends(jfk_audio)
    assert browser.dtype == np.int16 and len(browser) == 3 * len(jfk_audio)
    for i in range(0, len(browser), 48_000):
        session.add((48_000, browser[i:i + 48_000]))
    session.stop(timeout=300)
    normalise = EnglishTextNormalizer()
    assert normalise("".join(w.text for w in session.committed)) == normalise(JFK)
    assert session.received_s == pytest.approx(len(jfk_audio) / SAMPLE_RATE, abs=0.01)
    assert session.compute_s > 0 and len(session.latencies) == len(session.committed)  # (sent faster than spoken)
