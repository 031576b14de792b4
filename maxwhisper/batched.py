"""Batched long-form transcription, faster-whisper's `BatchedInferencePipeline` on the MAX graphs:
Silero VAD packs the speech into chunks of at most 30 s, each chunk is a window of its own without the
previous text as prompt, and `batch_size` windows (any number, 1 included) are encoded and decoded
together under `maxwhisper.windows`' rules. Text only by default, one segment per chunk; with
timestamps, a chunk whose window stops at an unfinished segment gets another window from there, as
the sequential loop would (docs/usage.md says why text only stays the default). The text is not the
sequential loop's: the windows start elsewhere and hear no previous text.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from .api import CloseCall, DecodeOptions, Segment, check_options
from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from .decoding import DecodingResult, DecodingTask, WhisperModel, detect_language
from .extras import require
from .tokenizer import tokenizer_for
from .transcribe import TranscribeOutput, model_limits
from .windows import (
    decoding_failed,
    fallback_close_calls,
    is_silence,
    segments_of_window,
    silence_close_calls,
    window_options,
)

CHUNK_SECONDS = 30
MIN_SILENCE_MS = 160  # faster-whisper's BatchedInferencePipeline default: cut at short pauses


class SpeechTimeline:
    """Maps a time in the speech-only timeline (the speech regions put end to end) back to the
    recording, in whole samples (a float round trip may fall into the previous region)."""

    def __init__(self, regions: list[dict]):
        lengths = [r["end"] - r["start"] for r in regions]
        self.starts = [sum(lengths[:i]) for i in range(len(regions))]  # each region's start in speech samples
        self.shift = [r["start"] - s for r, s in zip(regions, self.starts)]  # the silence before it

    def original(self, seconds: float, is_end: bool = False) -> float:
        """The recording's time of `seconds` of speech; an end exactly between two regions stays in
        the first."""
        sample = round(seconds * SAMPLE_RATE)
        i = (bisect.bisect_left if is_end else bisect.bisect_right)(self.starts, sample) - 1
        return (sample + self.shift[max(i, 0)]) / SAMPLE_RATE


def speech_chunks(audio: np.ndarray) -> tuple[list[np.ndarray], list[dict], SpeechTimeline | None]:
    """The speech of `audio` packed into chunks of at most 30 s.

    Returns (chunk samples, chunk metadata {"offset": s, "duration": s} in the speech-only
    timeline, the map from that timeline back to the recording)."""
    require("batched", "batched transcription (a batch size)")
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    regions = get_speech_timestamps(
        audio, VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=MIN_SILENCE_MS)
    )
    if not regions:
        return [], [], None
    chunks, _ = collect_chunks(audio, regions, SAMPLE_RATE, max_duration=CHUNK_SECONDS)
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])  # in whole samples
    metadata = [{"offset": int(o) / SAMPLE_RATE, "duration": len(c) / SAMPLE_RATE} for o, c in zip(offsets, chunks)]
    return chunks, metadata, SpeechTimeline(regions)


def transcribe_batched(
    model: WhisperModel,
    audio: np.ndarray,
    options: DecodeOptions,
    progress: Callable[[float], None] | None = None,
) -> TranscribeOutput:
    """Transcribe float32 16 kHz samples in batches of `options.batch_size` windows.

    Each chunk is transcribed as the sequential loop transcribes a recording, without a prompt: its
    first window starts at the chunk's start, and a window whose decoding stops at an unfinished
    segment (Whisper's sign that speech runs on past the window: the chunk was cut in the middle
    of speech) is followed by a window from that segment's start to the chunk's end. Windows of
    any chunk fill the batches together.

    progress: called after each batch with the fraction of the speech done (0..1)."""
    check_options(options, **model_limits(model))
    t_start = time.perf_counter()
    chunks, metadata, time_map = speech_chunks(audio)
    encode_s = 0.0

    def encode(batch: np.ndarray):
        nonlocal encode_s
        t = time.perf_counter()
        features = model.encode(np.ascontiguousarray(batch, dtype=np.float32))
        encode_s += time.perf_counter() - t
        return features

    def window_mels(windows: list[tuple[int, int]]) -> np.ndarray:
        """The log-Mel of each (chunk, seek) window: the chunk's samples from `seek` on, as a recording."""
        return np.stack(
            [
                log_mel_spectrogram(chunks[i][seek * HOP_LENGTH :], model.dims.n_mels, padding=N_SAMPLES)[:, :N_FRAMES]
                for i, seek in windows
            ]
        )

    language, language_probability = _language(
        model, options.language, (lambda: encode(window_mels([(0, 0)]))) if chunks else None
    )
    tokenizer = tokenizer_for(
        model.is_multilingual, num_languages=model.num_languages, language=language, task=options.task
    )
    prompt = tuple(tokenizer.encode(" " + options.initial_prompt.strip())) if options.initial_prompt else ()
    rng = np.random.default_rng(0)
    frames = [len(c) // HOP_LENGTH for c in chunks]
    pieces: list[list[Segment]] = [[] for _ in chunks]  # each chunk's segments, in its own time
    close_calls: list[CloseCall] = []
    pending = deque((i, 0) for i in range(len(chunks)))  # windows to decode: (chunk, first frame)
    done_frames = 0
    while pending:
        windows = [pending.popleft() for _ in range(min(options.batch_size, len(pending)))]
        starts = [time_map.original(metadata[i]["offset"] + seek / FRAMES_PER_SECOND) for i, seek in windows]
        results = _decode_with_fallback(
            model, options, language, prompt, window_mels(windows), encode, rng, starts, close_calls
        )
        for (i, seek), result in zip(windows, results):
            next_seek = _window_segments(result, tokenizer, seek, min(frames[i] - seek, N_FRAMES), options, pieces[i])
            if seek < next_seek < frames[i]:
                pending.append((i, next_seek))
            done_frames += min(next_seek, frames[i]) - seek
        if progress is not None:
            progress(min(done_frames / sum(frames), 1.0))
    if progress is not None and not chunks:
        progress(1.0)  # no speech: nothing to decode

    segments = []
    for i, chunk_segments in enumerate(pieces):
        segments += [_in_recording(s, len(segments) + n, metadata[i], time_map) for n, s in enumerate(chunk_segments)]
    return TranscribeOutput(
        segments=segments,
        text="".join(s.text for s in segments),
        language=language,
        language_probability=language_probability,
        close_calls=close_calls,
        encode_s=encode_s,
        decode_s=time.perf_counter() - t_start - encode_s,
    )


def _language(
    model: WhisperModel, requested: str | None, first_window: Callable[[], Any] | None
) -> tuple[str, float | None]:
    """The requested language (a code); English on English-only models; else detected on the first window
    (`first_window()`: its encoder features; None without speech)."""
    if requested is not None:
        return requested, None
    if not model.is_multilingual or first_window is None:
        return "en", None
    _, probs = detect_language(model, first_window())
    language = max(probs[0], key=probs[0].get)
    return language, probs[0][language]


def _decode_with_fallback(
    model: WhisperModel,
    options: DecodeOptions,
    language: str,
    prompt: tuple[int, ...],
    mels: np.ndarray,
    encode,
    rng: np.random.Generator,
    starts: list[float],
    close_calls: list[CloseCall],
) -> list[DecodingResult]:
    """Decode a batch at the first temperature, then each window that looks like a failure at the
    next one, together, as `transcribe._SeekLoop` does one window at a time."""
    results: list[DecodingResult | None] = [None] * len(mels)
    pending = list(range(len(mels)))
    for step, temperature in enumerate(options.temperature):
        task = DecodingTask(model, window_options(options, temperature, language, prompt), rng)
        decoded = task.run(encode(mels[pending]), n_audio=len(pending))
        last = step == len(options.temperature) - 1
        still = []
        for i, result in zip(pending, decoded):
            results[i] = result
            if last:
                continue
            close_calls += fallback_close_calls(result, options, model.dims.n_vocab, starts[i])
            if decoding_failed(result, options):
                still.append(i)
        pending = still
        if not pending:
            break
    for i, result in enumerate(results):
        close_calls += silence_close_calls(result, options, model.dims.n_vocab, starts[i])
    return results


def _window_segments(
    result: DecodingResult, tokenizer, seek: int, size: int, options: DecodeOptions, segments: list[Segment]
) -> int:
    """Add the segments of a window's decoding to its chunk's `segments` (times in the chunk);
    returns the frame where the chunk's next window starts (past the chunk: none)."""
    if is_silence(result, options):
        return seek + size
    pieces, next_seek, _ = segments_of_window(list(result.tokens), tokenizer, seek, size, 2)
    for start, end, tokens in pieces:
        text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
        if text.strip():
            segments.append(
                Segment(
                    id=0,
                    seek=0,
                    start=start,
                    end=end,
                    text=text,
                    tokens=tuple(tokens),
                    temperature=result.temperature,
                    avg_logprob=result.avg_logprob,
                    compression_ratio=result.compression_ratio,
                    no_speech_prob=result.no_speech_prob,
                )
            )
    return next_seek


def _in_recording(segment: Segment, id: int, chunk: dict, time_map: SpeechTimeline) -> Segment:
    """A chunk's segment in the recording's time; `seek` is where the chunk starts."""
    # a timestamp in the chunk's zero padding would map into the next chunk's speech
    start = time_map.original(chunk["offset"] + min(segment.start, chunk["duration"]))
    end = max(start, time_map.original(chunk["offset"] + min(segment.end, chunk["duration"]), is_end=True))
    return dataclasses.replace(
        segment, id=id, seek=round(time_map.original(chunk["offset"]) * FRAMES_PER_SECOND), start=start, end=end
    )
