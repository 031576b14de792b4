"""The app's Live tab without a browser: a session (showcase/live_session.py) over a scripted transcriber
(commits, the tentative tail, the pacing, latency on a fake clock, stop, errors, a visitor who leaves),
the tab's race (showcase/tabs/live.py: a recording's chunks to every implementation, its stop, one race
at a time, sessions sharing a transcriber), and MAX on jfk sent as a browser sends it (48 kHz int16
chunks)."""

from __future__ import annotations

import dataclasses
import re
import threading
import time

import av
import numpy as np
import pytest
import soundfile
from scripted import ScriptedTranscriber

from maxwhisper.api import SAMPLE_RATE, DecodeOptions, MaxWhisperError, ModelError
from maxwhisper.registry import BACKENDS
from showcase import live_session
from showcase.live_session import LiveSession
from showcase.tabs import live
from showcase.transcriptions import LocalTranscriptions

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
    session = LiveSession(lambda: model, clock=lambda: clock[0])
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # each sample holds its stream time
    for i in range(4):
        clock[0] += 1.0
        session.add(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE], SAMPLE_RATE)
        wait_for(lambda: len(model.calls) == i + 1 and session.behind_s == 0)
    wait_for(lambda: len(session.committed) >= 4)
    text, figures = session.text_html(), session.figures()
    assert "<span class='live-committed'>w0 w1 w2 w3" in text
    assert f"style='{live_session.TENTATIVE_STYLE}'> w" in text  # the last hypothesis's tail, in grey
    assert re.fullmatch(
        r"listening · keeps up: 0\.40 s of computing per second of speech · "
        r"words final [\d.]+ s after they are said \(median\) · 4 s heard",
        figures,
    ), figures
    assert all(lat >= 0 for lat in session.latencies)

    clock[0] += 1.0
    session.add(audio[4 * SAMPLE_RATE : 5 * SAMPLE_RATE], SAMPLE_RATE)
    session.stop(timeout=60)
    assert not session.running
    assert " ".join(w.text.strip() for w in session.committed) == " ".join(f"w{i}" for i in range(10))
    text = session.text_html()
    assert "w9</span>" in text and f"style='{live_session.TENTATIVE_STYLE}'></span>" in text
    assert session.figures().startswith("stopped")
    session.add(audio[:SAMPLE_RATE], SAMPLE_RATE)  # a chunk after the stop is ignored
    assert session.received_s == 5.0 and session.ended


def test_an_update_waits_for_a_second_of_new_audio():
    """The pacing: chunks of 0.1 s, as a browser sends them, make one update per second of audio."""
    model = ScriptedTranscriber(SCRIPT)
    session = LiveSession(lambda: model)
    audio = np.arange(3 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    step = SAMPLE_RATE // 10
    for i in range(25):
        session.add(audio[i * step : (i + 1) * step], SAMPLE_RATE)
        if i in (9, 19):  # a second more has arrived: one update hears it
            wait_for(lambda: session.behind_s == 0)
        else:
            time.sleep(0.02)
            assert len(model.calls) == (i > 9) + (i > 19)  # nothing heard before the second is full
    assert [round(n, 1) for n, _ in model.calls] == [1.0, 2.0]
    session.stop(timeout=10)
    assert len(model.calls) == 3 and session.received_s == pytest.approx(2.5)


def test_the_figures_say_when_the_stream_falls_behind_without_flickering():
    """Falls behind once more than BEHIND_S of audio waits (or its computing exceeds the audio), keeps
    up again once it has caught up: each change holds HOLD_S, so a reading that crosses the line and
    back within a second changes nothing."""
    clock = [100.0]
    lock = threading.Lock()
    session = LiveSession(lambda: ScriptedTranscriber(SCRIPT), lock, clock=lambda: clock[0])
    audio = np.arange(5 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    with lock:  # the model is busy with another stream's update
        for i in range(5):
            session.add(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE], SAMPLE_RATE)
        wait_for(lambda: session.state == "listening")
        assert session.behind_s == 5.0 and "falls behind: 5 s of speech waiting · 5 s heard" in session.figures()
        assert session.worst_behind_s == 5.0
    wait_for(lambda: session.behind_s == 0)
    clock[0] += live_session.HOLD_S / 2  # caught up within the hold: still shown behind
    assert re.search(r"falls behind: 0\.\d\d s of computing per second of speech", session.figures())
    clock[0] += live_session.HOLD_S / 2
    # caught up, and says how far behind it fell, as the race's result does
    assert re.search(
        r"keeps up again: 0\.\d\d s of computing per second of speech, 5 s of speech waited at worst", session.figures()
    )
    session.worst_behind_s = 0.0  # from here as a stream that never fell behind
    session.compute_s = 6.0  # more computing than audio heard: behind soon, whatever waits now
    assert "keeps up, just: 1.20 s of computing per second" in session.figures()  # within the hold
    clock[0] += live_session.HOLD_S
    assert "falls behind: 1.20 s of computing per second of speech" in session.figures()
    session.compute_s = 5.0  # back to 1.0 per second: not clearly under, so still behind
    clock[0] += live_session.HOLD_S
    assert "falls behind: 1.00 s" in session.figures()
    session.stop(timeout=10)


def test_an_update_that_hears_no_words_leaves_the_grey_words_shown():
    """An update whose hypothesis is held back (the offline rules) commits nothing and has no tail:
    the panel keeps the previous update's grey words rather than going blank."""

    class Hiccup(ScriptedTranscriber):
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            return dataclasses.replace(result, segments=[], text="") if len(self.calls) == 2 else result

    model = Hiccup(SCRIPT)
    session = LiveSession(lambda: model)
    audio = np.arange(3 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    session.add(audio[:SAMPLE_RATE], SAMPLE_RATE)
    wait_for(lambda: len(model.calls) == 1 and session.behind_s == 0)
    shown = session.text_html()
    assert "w0 w1" in shown and not session.committed
    session.add(audio[SAMPLE_RATE : 2 * SAMPLE_RATE], SAMPLE_RATE)
    wait_for(lambda: len(model.calls) == 2 and session.behind_s == 0)
    assert session.text_html() == shown  # nothing heard: the grey words stay
    session.stop(timeout=10)


def test_a_failed_load_is_a_message_without_server_paths():
    def load():
        raise ModelError("model 'nope' is not installed in /root/.cache/secret/models")

    session = LiveSession(load)
    session.add(np.zeros(SAMPLE_RATE, np.int16), SAMPLE_RATE)
    wait_for(lambda: not session.running)
    assert session.figures().startswith("stopped: model 'nope' is not installed")
    assert "/root" not in session.figures()
    assert not session.ended  # failed: the recording's next chunks do not start it again
    session.stop(timeout=5)  # stopping a failed session is harmless


def test_a_session_that_hears_nothing_ends(monkeypatch):
    monkeypatch.setattr(live_session, "IDLE_S", 0.2)
    session = LiveSession(lambda: ScriptedTranscriber(SCRIPT))
    wait_for(lambda: not session.running, timeout=10)
    assert session.figures().startswith("stopped")


class Scripts:
    """Transcriptions' live sessions, one race at a time: one scripted transcriber per implementation."""

    live_races = 1

    def __init__(self):
        self.made = {}

    def live_session(self, backend, model, device):
        return LiveSession(lambda: self.made.setdefault(backend, ScriptedTranscriber(SCRIPT)))


def test_a_race_through_the_tab_s_handlers():
    """Each chunk of a recording reaches every implementation raced; the stop finishes them all; a
    chunk that arrives just after the stop starts nothing, a later one starts the next race."""
    scripts = Scripts()
    races = live.LiveRaces(scripts)
    audio = np.arange(10 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    race, message, *panels = races.chunk((SAMPLE_RATE, audio[:SAMPLE_RATE]), None, ["faster", "max"], "tiny.en", "cpu")
    assert list(race.sessions) == ["max", "faster"] and message == "" and len(panels) == len(BACKENDS)
    assert "MAX Graph (this project)" in panels[0] and "waiting for the microphone" in panels[1]
    for i in range(1, 4):
        wait_for(lambda: all(s.behind_s == 0 for s in race.sessions.values()))
        same, *_ = races.chunk(
            (SAMPLE_RATE, audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE]), race, ["max"], "tiny.en", "cpu"
        )
        assert same is race
    shown = list(races.stop(race))
    assert all(state is race for state, *_ in shown)
    # the end, for a room: the same script heard as fast by both, a tie
    assert shown[-1][1] == live.race_result(race) and re.fullmatch(
        r"<div class='live-result'><div class='live-winner'>A tie: MAX and faster-whisper kept up, their words "
        r"final -?[\d.]+ s after they were said\.</div></div>",
        shown[-1][1],
    )  # (fed faster than said)
    last = dict(zip(BACKENDS, shown[-1][2:]))
    for backend in ("max", "faster"):
        assert len(scripts.made[backend].calls) >= 4
        assert race.sessions[backend].figures().startswith("stopped") and "w7</span>" in last[backend]
    late = races.chunk((SAMPLE_RATE, audio[:SAMPLE_RATE]), race, ["max"], "tiny.en", "cpu")
    assert late[0] is race  # sent before the stop, arrived after it: starts nothing
    time.sleep(live.LATE_S)
    later, *_ = races.chunk((SAMPLE_RATE, audio[:SAMPLE_RATE]), race, ["max"], "tiny.en", "cpu")
    assert later is not race and list(later.sessions) == ["max"] and later.running  # the next recording
    later.stop(timeout=10)
    assert list(races.stop(None))[0][0] is None
    assert races.chunk(None, None, [], "tiny.en", "cpu")[1] == "⚠ Choose at least one implementation to race."
    bad, message, *_ = races.chunk((0, np.ones(100, np.int16)), None, ["max"], "tiny.en", "cpu")
    assert message.startswith("⚠ Live transcription stopped: invalid sample rate")
    bad.stop(timeout=10)


def test_one_race_at_a_time():
    races = live.LiveRaces(Scripts())
    first = races.start(["max", "faster"], "tiny.en", "cpu")
    with pytest.raises(MaxWhisperError, match="another visitor's live race is running"):
        races.start(["max"], "tiny.en", "cpu")
    assert races.chunk(None, None, ["max"], "tiny.en", "cpu")[1] == (
        "⚠ another visitor's live race is running: try again in a minute"
    )
    first.stop(timeout=10)
    races.start(["max"], "tiny.en", "cpu").stop(timeout=10)


def test_a_race_with_no_room_for_one_of_its_sessions_is_refused_and_stops_the_others():
    """Where the transcriptions refuse a session (the service's session slots are taken), the race does
    not start, the panel says why, and the sessions already made end (giving their slots back). The
    recording's later chunks keep the refusal without asking for sessions again; once it stops, the
    next recording asks again."""

    class Full(Scripts):
        def __init__(self):
            super().__init__()
            self.sessions = []

        def live_session(self, backend, model, device):
            if backend == "faster":
                raise MaxWhisperError("tiny.en on faster has its 2 realtime sessions (1 per replica): try again later")
            self.sessions.append(super().live_session(backend, model, device))
            return self.sessions[-1]

    full = Full()
    races = live.LiveRaces(full)
    refusal = "⚠ tiny.en on faster has its 2 realtime sessions (1 per replica): try again later"
    race, message, *panels = races.chunk(None, None, ["max", "faster"], "tiny.en", "cpu")
    assert race.refusal == message == refusal and not race.sessions and not race.running
    assert all("waiting for the microphone" in p for p in panels)
    wait_for(lambda: not full.sessions[0].running)
    assert full.sessions[0].ended
    chunk = (SAMPLE_RATE, np.zeros(SAMPLE_RATE // 10, np.float32))
    for _ in range(3):  # the same recording's next chunks
        same, message, *_ = races.chunk(chunk, race, ["max", "faster"], "tiny.en", "cpu")
        assert same is race and message == refusal
    assert len(full.sessions) == 1  # no session made and stopped again
    assert list(races.stop(race))[-1][:2] == [race, refusal]
    time.sleep(live.LATE_S)
    again, message, *_ = races.chunk(chunk, race, ["max", "faster"], "tiny.en", "cpu")
    assert again is not race and again.refusal == message == refusal and len(full.sessions) == 2


def test_an_example_plays_as_the_microphone(tmp_path):
    """A visitor without a microphone plays a clip instead: its pieces reach every implementation at
    the clip's own pace, the progress line says how far, then the stop finishes them. Meanwhile the
    microphone waits: its chunks are refused and its stop leaves the example playing. A refused race
    shows why and plays nothing; a race that runs refuses the example."""
    clip = tmp_path / "two.wav"
    soundfile.write(clip, np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    scripts = Scripts()
    races = live.LiveRaces(scripts)
    started = time.monotonic()
    play = races.play(str(clip), None, ["max", "faster"], "tiny.en", "cpu")
    race, message, *_ = next(play)
    assert message == "Playing two.wav as the microphone: 0 of 2 s" and list(race.sessions) == ["max", "faster"]
    mic, refused, *_ = races.chunk((SAMPLE_RATE, np.zeros(4800, np.int16)), race, ["max"], "tiny.en", "cpu")
    assert mic is race and refused == "⚠ two.wav plays as the microphone: record once it has ended."
    assert [state for state, *_ in races.stop(race)] == [race] and race.stopped_at is None  # still playing
    shown = list(play)
    assert time.monotonic() - started >= 2 - live.PLAY_CHUNK_S  # not faster than the clip
    assert [m for _, m, *_ in shown[:3]] == [f"Playing two.wav as the microphone: {s} of 2 s" for s in (1, 1, 2)]
    assert all(state is race for state, *_ in shown)
    assert not race.running and all(s.figures().startswith("stopped") for s in race.sessions.values())
    assert shown[-1][1] == live.race_result(race)  # the race's end: its result
    assert all(scripts.made[b].calls for b in ("max", "faster"))

    recording = races.start(["max"], "tiny.en", "cpu")
    (busy,) = races.play(str(clip), recording, ["max"], "tiny.en", "cpu")
    assert busy[0] is recording and busy[1] == "⚠ A race is running: stop the recording before playing an example."
    recording.stop(timeout=10)

    class Busy(Scripts):
        def live_session(self, backend, model, device):
            raise MaxWhisperError("another visitor's live race is running: try again in a minute")

    (refused,) = live.LiveRaces(Busy()).play(str(clip), None, ["max"], "tiny.en", "cpu")
    assert refused[1] == "⚠ another visitor's live race is running: try again in a minute"
    assert refused[0].ended  # stopped: the microphone's next recording asks again


def test_a_visitor_who_leaves_ends_the_example_s_race(tmp_path):
    clip = tmp_path / "two.wav"
    soundfile.write(clip, np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    play = live.LiveRaces(Scripts()).play(str(clip), None, ["max"], "tiny.en", "cpu")
    race, *_ = next(play)
    play.close()  # what Gradio does with a stream whose page has gone
    wait_for(lambda: not race.running, timeout=10)


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
    transcriptions = LocalTranscriptions(lambda backend, **kw: model)
    transcriptions.live_races = 2
    races = live.LiveRaces(transcriptions)
    sessions = [races.start(["max"], "tiny.en", "cpu").sessions["max"] for _ in range(2)]
    audio = np.arange(3 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    for i in range(3):
        for s in sessions:
            s.add(audio[i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE], SAMPLE_RATE)
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

    session = LiveSession(lambda: max_tiny_en)
    browser = as_browser_sends(jfk_audio)
    assert browser.dtype == np.int16 and len(browser) == 3 * len(jfk_audio)
    for i in range(0, len(browser), 48_000):  # a second at a time, each transcribed before the next
        session.add(browser[i : i + 48_000], 48_000)
        wait_for(lambda: session.behind_s == 0, timeout=300)  # in one update, or two (`Streamer.feed`)
    assert session.updates >= 11 and session.committed  # words agreed on while the audio came in
    session.stop(timeout=300)
    normalise = EnglishTextNormalizer()
    assert normalise("".join(w.text for w in session.committed)) == normalise(JFK)
    assert session.received_s == pytest.approx(len(jfk_audio) / SAMPLE_RATE, abs=0.01)
    assert session.compute_s > 0 and len(session.latencies) == len(session.committed)  # (sent faster than spoken)


def test_a_race_ends_with_who_was_first():
    """The result names the implementation that kept up (or fell behind least) and made its words
    final soonest, then how each other did: one that fell behind, one that failed."""

    def session(latencies, compute_s=4.0, behind=1.0, error=""):
        s = LiveSession(lambda: ScriptedTranscriber(SCRIPT))
        s.stop(timeout=10)
        s.latencies, s.compute_s, s.worst_behind_s, s.error, s._received = (
            latencies,
            compute_s,
            behind,
            error,
            10 * SAMPLE_RATE,
        )
        return s

    race = live.LiveRace(
        {
            "max": session([1.0, 1.2, 1.4]),
            "openai": session([5.0], compute_s=14.0, behind=7.0),
            "faster": session([], error="no memory"),
        }
    )
    assert live.race_result(race) == (
        "<div class='live-result'><div class='live-winner'>MAX was first: it kept up, its words final 1.2 s after "
        "they were said.</div><div>openai-whisper fell behind (7 s of speech waited at worst), its words final 5.0 s "
        "after they were said.</div><div>faster-whisper stopped: no memory</div></div>"
    )
    slow = live.LiveRace({"max": session([3.5], behind=4.0), "faster": session([3.9], behind=4.2)})
    assert live.race_result(slow).startswith(  # a first that fell behind does not read as one that kept up
        "<div class='live-result'><div class='live-winner'>MAX was first, though it fell behind (4 s of speech "
        "waited at worst), its words final 3.5 s after they were said.</div>"
    )
    behind_less = live.LiveRace({"max": session([3.5], behind=4.0), "faster": session([3.9], behind=3.4)})
    assert live.race_result(behind_less).startswith(  # where all fell behind, who fell behind least was first
        "<div class='live-result'><div class='live-winner'>faster-whisper was first, though it fell behind (3 s of "
        "speech waited at worst), its words final 3.9 s after they were said.</div>"
    )
    close = live.LiveRace({"max": session([2.9], behind=4.0), "faster": session([3.0], behind=4.2)})
    assert live.race_result(close).startswith(  # 0.1 s apart: no one is first
        "<div class='live-result'><div class='live-winner'>A tie: MAX and faster-whisper fell behind, their words "
        "final 2.9 and 3.0 s after they were said.</div>"
    )
    alone = live.LiveRace({"faster": session([2.0])})
    assert live.race_result(alone) == (
        "<div class='live-result'><div>faster-whisper kept up, its words final 2.0 s after they were said.</div></div>"
    )
