"""The Live tab: a microphone stream transcribed as it arrives (`maxwhisper.streaming`).

A recording is one Gradio stream event, which calls `LiveStreams.chunk` with each piece the browser
sends (about every 0.1 s with Gradio 6, whatever `stream_every` says). The recording's
`LiveSession` runs the updates in a thread of its own, each taking all the audio that arrived
while the previous one ran, so a slow update makes the next one longer instead of letting chunks
pile up. Live streams do not queue behind the comparisons: they run beside them on transcribers
of their own (`Transcriptions.transcriber`), so both share the CPU's cores; at most
`LIVE_STREAMS` run at once, and streams on the same transcriber take turns update by update.
"""
from __future__ import annotations

import html
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import gradio as gr
import numpy as np

from maxwhisper.api import SAMPLE_RATE, MaxWhisperError
from maxwhisper.audio import StreamResampler
from maxwhisper.streaming import Streamer, StreamWord

from ..choices import Choices
from ..formatting import error_message, label
from ..transcriptions import Transcriptions

log = logging.getLogger(__name__)

LIVE_STREAMS = 2  # live sessions computing at once; one more is told to wait
IDLE_S = 30.0  # a session that receives nothing for this long ends (its visitor left)
STOP_WAIT_S = 120.0  # how long a stop shows the session catching up before leaving it to finish alone
LATE_S = 2.0  # a chunk this soon after a stop is that recording's last one arriving late: it starts nothing
TENTATIVE_STYLE = "color:#9ca3af"


class LiveSession:
    """One visitor's microphone stream. `add` takes chunks (Gradio's (sample rate, samples)),
    `stop` ends the stream and waits for the last words; `render` tells where it stands.

    `load` returns the transcriber (it may take a while: the first MAX compile); `lock` is held
    around each update (a transcriber shared by several sessions runs one update at a time). The
    stream's clock starts when the server receives the first chunk, so a word's commit latency
    counts the wait for the load but not the chunk's way from the browser."""

    def __init__(self, load: Callable[[], object], lock: threading.Lock | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._load, self._lock, self._clock = load, lock or threading.Lock(), clock
        self._cond = threading.Condition()
        self._pending: list[np.ndarray] = []  # 16 kHz samples not yet given to the streamer
        self._resampler: StreamResampler | None = None
        self._stopped = False
        self.stopped_at: float | None = None  # clock time of `stop`
        self.started: float | None = None  # clock time at which the stream's first sample was spoken
        self.received_s = 0.0  # seconds of audio received
        self.transcribed_s = 0.0  # of which the updates done so far have transcribed
        self.committed: list[StreamWord] = []
        self.tentative: list[StreamWord] = []
        self.latencies: list[float] = []
        self.compute_s = 0.0
        self.updates = 0
        self.state = "loading the model"
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="maxwhisper-live", daemon=True)
        self._thread.start()

    def add(self, chunk: tuple[int, np.ndarray]) -> None:
        """Raises AudioError for samples that are not audio (bad rate, NaN, wrong shape)."""
        sample_rate, samples = chunk
        with self._cond:
            if self._stopped or np.size(samples) == 0:
                return
            if self._resampler is None:
                self._resampler = StreamResampler(sample_rate)
            audio = self._resampler(samples)
            now = self._clock()
            if self.started is None:
                self.started = now - len(audio) / SAMPLE_RATE
            self._pending.append(audio)
            self.received_s += len(audio) / SAMPLE_RATE
            self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """End the stream: the words still tentative are committed once the audio received is done."""
        with self._cond:
            if not self._stopped and self._resampler is not None:
                self._pending.append(self._resampler.flush())
            self._stopped = True
            self.stopped_at = self._clock() if self.stopped_at is None else self.stopped_at
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def just_stopped(self) -> bool:
        """Stopped less than LATE_S ago: a chunk now is the stopped recording's last, sent late."""
        return self.stopped_at is not None and self._clock() - self.stopped_at < LATE_S

    @property
    def ended(self) -> bool:
        """Stopped or idle, not failed: the next chunk belongs to a new recording."""
        return self._stopped and not self.error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def behind_s(self) -> float:
        """How far behind the stream is: seconds of audio received and not yet transcribed (waiting,
        or in the update under way)."""
        with self._cond:
            return self.received_s - self.transcribed_s

    def _run(self) -> None:
        try:
            streamer = Streamer(self._load())
            self.state = "listening"
            while True:
                with self._cond:
                    if not self._cond.wait_for(lambda: self._pending or self._stopped, IDLE_S):
                        self._stopped = True  # nothing for IDLE_S: the visitor left
                    audio = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
                    self._pending.clear()
                    last = self._stopped
                if len(audio):
                    steps = streamer.feed(audio)
                    while True:
                        with self._lock:  # one step at a time: another stream on the model waits one update
                            update = next(steps, None)
                        if update is None:
                            break
                        self.compute_s += update.compute_s
                        self.updates += 1
                        self._commit(update.committed)  # committed as each step ends
                        self.tentative = update.tentative
                    with self._cond:
                        self.transcribed_s += len(audio) / SAMPLE_RATE
                if last:
                    self.state = "finishing"  # the end may hear the buffer once more (`Streamer.finish`)
                    with self._lock:
                        update = streamer.finish()
                    self.compute_s += update.compute_s
                    self._commit(update.committed)
                    self.tentative = []
                    self.state = "stopped"
                    log.info("live stream ended: %.1f s heard, %d updates, %d words committed", self.received_s,
                             self.updates, len(self.committed))
                    return
        except Exception as e:  # noqa: BLE001 - the visitor sees it in the tab
            log.exception("live stream failed")
            self.error, self.state = error_message(e), "failed"
            with self._cond:
                self._stopped = True

    def _commit(self, words: list[StreamWord]) -> None:
        now = self._clock() - self.started if self.started is not None else 0.0
        self.committed += words
        self.latencies += [now - w.end for w in words]

    def render(self) -> tuple[str, str]:
        """(HTML of the committed text and the tentative tail, one Markdown line of figures)."""
        committed = html.escape("".join(w.text for w in self.committed).strip())
        tentative = html.escape("".join(w.text for w in self.tentative))
        text = (f"<div id='live-text' style='font-size:1.25em;line-height:1.6'><span id='live-committed'>"
                f"{committed}</span><span id='live-tentative' style='{TENTATIVE_STYLE}'>{tentative}</span></div>")
        if self.error:
            return text, f"Live transcription stopped: {self.error}"
        parts = [self.state]
        if self.latencies:
            parts.append(f"commit latency: last word {self.latencies[-1]:.1f} s, median "
                         f"{statistics.median(self.latencies):.1f} s")
        if self.received_s:
            parts.append(f"{self.received_s:.0f} s heard, {self.behind_s:.1f} s behind; computing "
                         f"{self.compute_s / self.received_s:.2f} s per second of audio")
        return text, " · ".join(parts)


class TooManyStreams(Exception):
    pass


class LiveStreams:
    """The app's live sessions: at most `limit` running; their transcribers come from
    `transcriptions.transcriber`, apart from those of the comparisons. `chunk` and `stop` are the
    Live tab's handlers."""

    def __init__(self, transcriptions: Transcriptions, limit: int = LIVE_STREAMS):
        self.transcriptions, self.limit = transcriptions, limit
        self._lock = threading.Lock()
        self._sessions: list[LiveSession] = []
        self._model_locks: dict[tuple[str, str, str], threading.Lock] = {}

    def start(self, backend: str, model: str, device: str) -> LiveSession:
        """A new session; raises TooManyStreams when `limit` sessions run already."""
        with self._lock:
            self._sessions = [s for s in self._sessions if s.running]
            if len(self._sessions) >= self.limit:
                raise TooManyStreams(f"{self.limit} live streams are running already: try again in a minute")
            lock = self._model_locks.setdefault((backend, model, device), threading.Lock())
            session = LiveSession(lambda: self.transcriptions.transcriber(backend, model, device), lock)
            self._sessions.append(session)
            log.info("live stream started: %s %s on %s (%d running)", backend, model, device, len(self._sessions))
        return session

    def chunk(self, chunk, session: LiveSession | None, backend: str, model: str,
              device: str) -> tuple[LiveSession | None, str, str]:
        """A piece of a recording -> (the session, its text, its figures)."""
        if session is not None and session.just_stopped:  # the stopped recording's last chunk, arriving late
            return session, *session.render()
        if session is None or session.ended:  # the first chunk of a recording
            try:
                session = self.start(backend, model, device)
            except TooManyStreams as e:
                return None, "", str(e)
        if chunk is not None:
            try:
                session.add(chunk)
            except MaxWhisperError as e:
                session.stop(timeout=0)
                return session, session.render()[0], f"Live transcription stopped: {error_message(e)}"
        return session, *session.render()

    def stop(self, session: LiveSession | None) -> Iterator[tuple[LiveSession | None, str, str]]:
        """The recording stopped: its session finishes the audio it has, shown as it goes. It stays
        the tab's session, so that a chunk the browser sent just before the stop and that arrives
        after it is recognised as late (`chunk`); the next recording starts a new one."""
        if session is None:
            yield None, "", ""
            return
        session.stop(timeout=0)
        deadline = time.monotonic() + STOP_WAIT_S
        while session.running and time.monotonic() < deadline:
            yield session, *session.render()
            time.sleep(0.5)
        yield session, *session.render()


def build(transcriptions: Transcriptions, choices: Choices, max_seconds: float) -> None:
    """The tab and its handlers, inside the page's gr.Blocks: its streams get their transcribers from
    `transcriptions.transcriber`."""
    live = LiveStreams(transcriptions)
    with gr.Tab("Live"):
        gr.Markdown("Speak into the microphone: the text appears as you talk. Words turn black once two "
                    "consecutive transcriptions of the audio so far agree on them (LocalAgreement-2) and never "
                    "change after that; the grey tail may still change. Each transcription is decoded once, "
                    "greedily, without the temperature fallback of a file's transcription: a stretch that looks "
                    "like a repetition loop is not committed but waits for more audio (when you stop, the last "
                    "of it is heard once more with the fallback). Live streams run beside "
                    "the comparisons on models of their own, sharing the CPU with them.")
        with gr.Row():
            live_backend = gr.Radio([(label(b), b) for b in choices.backends], value=choices.backends[0],
                                    label="Implementation", elem_id="live-backend")
            live_model = gr.Dropdown(choices.models, value=choices.models[0] if choices.models else None,
                                     label="Model (installed)")
        mic = gr.Audio(sources=["microphone"], type="numpy", streaming=True, label="Microphone",
                       elem_id="live-mic", waveform_options=gr.WaveformOptions(show_recording_waveform=False))
        live_text = gr.HTML(elem_id="live-output")
        live_stats = gr.Markdown(elem_id="live-stats")
        live_session = gr.State(None, delete_callback=lambda s: s.stop(0) if s else None)
    mic.stream(lambda chunk, session, backend, model: live.chunk(chunk, session, backend, model,
                                                                 choices.default_device),
               [mic, live_session, live_backend, live_model], [live_session, live_text, live_stats],
               stream_every=1.0, time_limit=int(max_seconds), show_progress="hidden", concurrency_limit=None)
    mic.stop_recording(live.stop, live_session, [live_session, live_text, live_stats], show_progress="hidden",
                       concurrency_limit=None)
