"""Transcriptions timed by a fixed cost model instead of the clock. A stream's text depends on where
its hypotheses end, which moves with the machine and its load; replayed through `CostModelled`, a
stream hears the same windows on any machine. Used by benchmarks/streaming_replay.py,
benchmarks/realtime_replay.py and the streaming tests (docs/streaming.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ..api import SAMPLE_RATE, DecodeOptions, Segment, TranscriptionResult, WindowTranscriber
from ..audio import N_SAMPLES, STREAM_PADDING_S

# a transcription's seconds: COST_S, plus COST_PER_S per second its window heard (about MAX tiny.en
# fp32's on a 2-core AVX-512 Zen 4)
COST_S, COST_PER_S = 0.04, 0.011


class CostModelled:
    """A `WindowTranscriber` reporting each transcription's `timings.total_s` from the cost model, times
    `speed_factor` (2: a machine twice as slow); a seek loop over the whole buffer counts as one
    30 s window. `on_cost` is told each cost. Everything else is the transcriber's."""

    def __init__(
        self,
        transcriber: WindowTranscriber,
        on_cost: Callable[[float], None] = lambda cost: None,
        speed_factor: float = 1.0,
    ):
        if not hasattr(transcriber, "transcribe_window"):
            raise TypeError(f"{type(transcriber).__name__} hears no single window: a stream runs its whole seek loop")
        self.transcriber = transcriber
        self.on_cost = on_cost
        self.speed_factor = speed_factor

    def __getattr__(self, name: str):
        if name == "transcriber":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.transcriber, name)

    def transcribe_window(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        draft: Sequence[int] = (),
        padding_s: float | None = STREAM_PADDING_S,
    ) -> tuple[TranscriptionResult, tuple[int, ...]]:
        result, tokens = self.transcriber.transcribe_window(audio, options, draft, padding_s=padding_s)
        full = N_SAMPLES / SAMPLE_RATE
        heard = full if padding_s is None else min(full, len(audio) / SAMPLE_RATE + padding_s)
        return self._costed(result, heard), tokens

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        progress: Callable[[float], None] | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> TranscriptionResult:
        result = self.transcriber.transcribe(audio, options, progress=progress, on_segments=on_segments)
        return self._costed(result, N_SAMPLES / SAMPLE_RATE)

    def _costed(self, result: TranscriptionResult, heard_s: float) -> TranscriptionResult:
        cost = (COST_S + COST_PER_S * heard_s) * self.speed_factor
        self.on_cost(cost)
        return dataclasses.replace(result, timings=dataclasses.replace(result.timings, total_s=cost))
