"""Server VAD for a realtime session: Silero VAD (the ONNX model faster-whisper ships, as
`maxwhisper.batched` uses it) run frame by frame over a live stream, and OpenAI's `server_vad` turns
on top of it.

Silero rather than the energy check of `audio.check_transcribable`: its speech probability is what
OpenAI's `threshold` (0 to 1) means, and it tells speech from steady noise, where a level would
hold a turn open through the noise and its transcript back until the session ends. It costs about
5 ms of one core per second of audio, and decides within one 32 ms frame; the stream's updates
never wait for it (docs/service.md, Realtime transcription).
"""

from __future__ import annotations

import numpy as np

from ..extras import require
from .protocol import ServerVad

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame each frame is given, as faster-whisper's batched call does
STOP_MARGIN = 0.15  # a frame is silence below threshold - STOP_MARGIN (Silero's own hysteresis)


class SpeechProbability:
    """Silero's speech probability for each 512-sample frame of a stream at 16 kHz, its recurrent state
    carried from one call to the next (the same values as one call over the whole stream)."""

    def __init__(self):
        require("batched", "a realtime session's server VAD")
        from faster_whisper.vad import get_vad_model  # one ONNX session per process, shared by the sessions

        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames float32 [n, FRAME] -> probabilities [n]."""
        if not len(frames):
            return np.zeros(0, np.float32)
        before = np.concatenate([self._context[None], frames[:-1, -CONTEXT:]])
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([before, frames], axis=1), "h": self._h, "c": self._c}
        )
        self._context = frames[-1, -CONTEXT:].copy()
        return out.reshape(-1)


class TurnDetector:
    """OpenAI's server VAD over a stream: a turn starts at the first frame whose speech probability
    reaches the threshold (its audio from `prefix_padding_ms` before that frame), and stops once
    `silence_duration_ms` of frames in a row fall below threshold - STOP_MARGIN. Samples are counted
    from the stream's start; audio that does not fill a frame waits for the next call."""

    def __init__(self, vad: ServerVad, first: int = 0):
        """`first`: the stream's sample at which the detector starts (it may be turned on mid-stream)."""
        self.vad = vad
        self.probability = SpeechProbability()
        self.in_speech = False
        self._silent = 0  # frames in a row below the stop level, in a turn
        self._pending = np.zeros(0, np.float32)
        self._seen = first  # the stream's samples framed so far

    def configure(self, vad: ServerVad) -> None:
        self.vad = vad

    def feed(self, samples: np.ndarray) -> list[tuple[str, int]]:
        """The turn changes in `samples` (the stream's next samples), in order: ("start", the turn's
        first sample, `prefix_padding_ms` before its first speech frame) or ("stop", the sample after
        the frame that ended it), counted from the stream's start."""
        audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(audio) // FRAME * FRAME
        self._pending = audio[n:].copy()
        probs = self.probability(audio[:n].reshape(-1, FRAME))
        changes = []
        stop_level = max(self.vad.threshold - STOP_MARGIN, 0.01)
        silence_frames = self.vad.silence_duration_ms * 16 / FRAME
        for i, p in enumerate(probs):
            start = self._seen + i * FRAME
            if not self.in_speech and p >= self.vad.threshold:
                self.in_speech, self._silent = True, 0
                changes.append(("start", max(0, start - self.vad.prefix_padding_ms * 16)))
            elif self.in_speech:
                self._silent = self._silent + 1 if p < stop_level else 0
                if self._silent >= silence_frames:
                    self.in_speech = False
                    changes.append(("stop", start + FRAME))
        self._seen += n
        return changes

    def reset(self) -> None:
        """A turn ended by hand (a commit): the next speech frame starts a new one."""
        self.in_speech, self._silent = False, 0
