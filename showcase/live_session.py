"""One microphone stream transcribed as it arrives (`LiveSession`, over `maxwhisper.streaming`),
without Gradio: the Live tab races one per implementation on the same audio.

A session runs its updates in a thread of its own. Each update waits for `min_new_s` of new audio
(the pacing: a second, as `bench --streaming` feeds its streams) and takes all the audio that
arrived meanwhile, so a slow update makes the next one longer instead of letting chunks pile up,
and an engine that is done early leaves the CPU to the others racing beside it.
"""

from __future__ import annotations

import html
import logging
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

from maxwhisper.api import SAMPLE_RATE
from maxwhisper.audio import StreamResampler
from maxwhisper.streaming import Streamer, StreamWord

from .formatting import error_message

log = logging.getLogger(__name__)

LIVE_THREAD = "maxwhisper-live"  # the name of a live stream's thread

IDLE_S = 30.0  # a session that receives nothing for this long ends (its visitor left)
MIN_NEW_S = 1.0  # the new audio an update waits for
PACE_SLACK_S = 0.01  # short of it by this much will do: a resampler holds back a millisecond of the first chunk
BEHIND_S = 3.0  # a stream with more audio than this waiting is falling behind
CAUGHT_UP_S = 1.5  # ... and it keeps up again once no more than this waits
SLOW, FAST = 1.05, 0.95  # computing per second of speech beyond which it falls behind, below which it keeps up again
HOLD_S = 2.0  # the pace a panel shows changes at most this often: no flicker between two readings
TENTATIVE_STYLE = "color:#6b7280"  # grey, yet 4.8:1 on white


class LiveSession:
    """One stream of one implementation. `add` takes chunks (Gradio's (sample rate, samples)),
    `stop` ends the stream and waits for the last words; `render` tells where it stands.

    `load` returns the transcriber (it may take a while: the first MAX compile); `lock` is held
    around each update (a transcriber shared by several sessions runs one update at a time). The
    stream's clock starts when the server receives the first chunk, so a word's commit latency
    counts the wait for the load but not the chunk's way from the browser. `release`, if given, is
    called once when the stream ends (a service's session slot given back)."""

    def __init__(
        self,
        load: Callable[[], object],
        lock: threading.Lock | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_new_s: float = MIN_NEW_S,
        release: Callable[[], None] | None = None,
    ):
        self._load, self._lock, self._clock, self._min_new_s = load, lock or threading.Lock(), clock, min_new_s
        self._release = release
        self._cond = threading.Condition()
        self._pending: list[np.ndarray] = []  # 16 kHz samples not yet given to the streamer
        self._resampler: StreamResampler | None = None
        self._stopped = False
        self.stopped_at: float | None = None  # clock time of `stop`
        self.started: float | None = None  # clock time at which the stream's first sample was spoken
        self._received = 0  # samples of audio received
        self._transcribed = 0  # of which the updates done so far have transcribed
        self.committed: list[StreamWord] = []
        self.tentative: list[StreamWord] = []
        self.latencies: list[float] = []
        self.compute_s = 0.0
        self.updates = 0
        self.worst_behind_s = 0.0  # the most audio that waited at once
        self.falls_behind = False  # the pace it shows (`pace`), with hysteresis
        self._pace_since = -HOLD_S  # clock time of its last change
        self.state = "loading the model"
        self.error = ""
        self._thread = threading.Thread(target=self._run, name=LIVE_THREAD, daemon=True)
        self._thread.start()

    def add(self, samples: np.ndarray, sample_rate: int) -> None:
        """Raises AudioError for samples that are not audio (bad rate, NaN, wrong shape)."""
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
            self._received += len(audio)
            self.worst_behind_s = max(self.worst_behind_s, (self._received - self._transcribed) / SAMPLE_RATE)
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
    def ended(self) -> bool:
        """Stopped or idle, not failed: the next chunk belongs to a new recording."""
        return self._stopped and not self.error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def received_s(self) -> float:
        """Seconds of audio received."""
        return self._received / SAMPLE_RATE

    @property
    def behind_s(self) -> float:
        """How far behind the stream is: seconds of audio received and not yet transcribed (waiting,
        or in the update under way)."""
        with self._cond:
            return (self._received - self._transcribed) / SAMPLE_RATE

    def _pending_s(self) -> float:
        return sum(len(a) for a in self._pending) / SAMPLE_RATE

    def _run(self) -> None:
        try:
            streamer = Streamer(self._load())
            self.state = "listening"
            while True:
                with self._cond:
                    if not self._cond.wait_for(
                        lambda: self._pending_s() >= self._min_new_s - PACE_SLACK_S or self._stopped, IDLE_S
                    ):
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
                        self.tentative = update.tentative or self._unconfirmed()
                    with self._cond:
                        self._transcribed += len(audio)
                if last:
                    self.state = "finishing"  # the end may hear the buffer once more (`Streamer.finish`)
                    with self._lock:
                        update = streamer.finish()
                    self.compute_s += update.compute_s
                    self._commit(update.committed)
                    self.tentative = []
                    self.state = "stopped"
                    log.info(
                        "live stream ended: %.1f s heard, %d updates, %d words committed",
                        self.received_s,
                        self.updates,
                        len(self.committed),
                    )
                    return
        except Exception as e:  # noqa: BLE001 - the visitor sees it in the tab
            log.exception("live stream failed")
            self.error, self.state = error_message(e), "failed"
            with self._cond:
                self._stopped = True
        finally:
            if self._release:
                self._release()

    def _unconfirmed(self) -> list[StreamWord]:
        """The grey words shown after an update that heard none (its hypothesis held back): the last
        ones that are not committed since, so that no text vanishes until an update hears words again."""
        end = self.committed[-1].end if self.committed else float("-inf")
        return [w for w in self.tentative if w.start >= end]

    def _commit(self, words: list[StreamWord]) -> None:
        now = self._clock() - self.started if self.started is not None else 0.0
        self.committed += words
        self.latencies += [now - w.end for w in words if w.spoken]

    def text_html(self) -> str:
        """The committed words, then the tentative tail in grey."""
        committed = html.escape("".join(w.text for w in self.committed).strip())
        tentative = html.escape("".join(w.text for w in self.tentative))
        return (
            f"<div class='live-text'><span class='live-committed'>{committed}</span>"
            f"<span class='live-tentative' style='{TENTATIVE_STYLE}'>{tentative}</span></div>"
        )

    @property
    def share(self) -> float:
        """Seconds of computing per second of speech heard (above 1 it cannot keep up)."""
        return self.compute_s / self.received_s if self.received_s else 0.0

    def pace(self) -> bool:
        """Whether it falls behind, with hysteresis: it falls behind once more than BEHIND_S of audio
        waits or its computing exceeds SLOW per second, and keeps up again once no more than
        CAUGHT_UP_S waits and its computing is under FAST; a change shows HOLD_S at least."""
        behind, share, now = self.behind_s, self.share, self._clock()
        flips = (behind <= CAUGHT_UP_S and share < FAST) if self.falls_behind else (behind > BEHIND_S or share > SLOW)
        if flips and now - self._pace_since >= HOLD_S:
            self.falls_behind, self._pace_since = not self.falls_behind, now
        return self.falls_behind

    def figures(self) -> str:
        """One line for people: the state, whether it keeps up, how soon words become final."""
        if self.error:
            return f"stopped: {self.error}"
        parts = [self.state]
        if self.received_s:
            behind = self.behind_s
            computing = f"{self.share:.2f} s of computing per second of speech"
            if not self.pace():  # above 1 s a second it still keeps up, within SLOW, for now
                again = self.worst_behind_s > BEHIND_S  # it fell behind before: the race's result says so
                pace = " again" if again else ", just" if self.share > 1 else ""
                worst = f", {self.worst_behind_s:.0f} s of speech waited at worst" if again else ""
                parts.append(f"keeps up{pace}: {computing}{worst}")
            else:
                parts.append(
                    f"falls behind: {behind:.0f} s of speech waiting"
                    if behind > CAUGHT_UP_S
                    else f"falls behind: {computing}"
                )
        if self.latencies:
            parts.append(f"words final {statistics.median(self.latencies):.1f} s after they are said (median)")
        parts.append(f"{self.received_s:.0f} s heard")
        return " · ".join(parts)
