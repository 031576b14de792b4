"""Batched long-form transcription: speech chunks found by a voice activity detector, decoded
`batch_size` at a time (any batch size, 1 included).

The sequential loop (`maxwhisper.transcribe`) decodes one 30 s window after another, each
prompted with the text before it, so it cannot batch. This mode, faster-whisper's
`BatchedInferencePipeline` on the MAX graphs, gives that up for throughput:

- Silero VAD (the ONNX model and code faster-whisper ships, run by onnxruntime) finds the speech
  regions, cut at silences so that none is longer than 30 s; consecutive regions are packed into
  chunks of at most 30 s of speech, the silence between them left out;
- each chunk is a window of its own: `batch_size` windows are encoded in one call and decoded
  together (one token step serves every window), with no prompt from the text before;
- a window whose decoding looks like a failure is decoded again at the next temperature of the
  schedule, those of a batch together; a window judged silent is skipped;
- segment times, measured in the chunk's speech-only timeline, are mapped back to the recording.
  faster-whisper's pipeline drops a chunk's tokens after its last complete segment; here they are
  a segment running to the chunk's end.

Same weights and the same per-window rules as the sequential loop, but not the same text: the
windows start elsewhere and see no previous text.
"""
from __future__ import annotations

import bisect
import time
from typing import Callable

import numpy as np

from .api import CloseCall, DecodeOptions, Segment
from .audio import FRAMES_PER_SECOND, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from .decoding import DecodingResult, DecodingTask, WhisperModel, detect_language
from .tokenizer import tokenizer_for
from .transcribe import (TranscribeOutput, _check_request, _close_calls, _is_silence, _needs_fallback,
                         _segments_of_window, _window_options)

CHUNK_SECONDS = 30
TIME_PRECISION = 0.02  # seconds per timestamp token
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
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    regions = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=CHUNK_SECONDS,
                                                      min_silence_duration_ms=MIN_SILENCE_MS))
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
    """Transcribe float32 16 kHz samples in batches of `options.batch_size` speech chunks.

    progress: called after each batch with the fraction of the speech done (0..1)."""
    requested = _check_request(model, np.zeros((model.dims.n_mels, N_FRAMES), np.float32), options)  # the options only
    t_start = time.perf_counter()
    chunks, metadata, time_map = speech_chunks(audio)
    mels = np.zeros((len(chunks), model.dims.n_mels, N_FRAMES), np.float32)
    for i, chunk in enumerate(chunks):
        mels[i] = log_mel_spectrogram(chunk, model.dims.n_mels, padding=N_SAMPLES)[:, :N_FRAMES]
    encode_s = 0.0

    def encode(batch: np.ndarray):
        nonlocal encode_s
        t = time.perf_counter()
        features = model.encode(np.ascontiguousarray(batch, dtype=np.float32))
        encode_s += time.perf_counter() - t
        return features

    language, language_probability = _language(model, requested, encode, mels)
    tokenizer = tokenizer_for(model.is_multilingual, num_languages=model.num_languages, language=language,
                              task=options.task)
    prompt = tuple(tokenizer.encode(" " + options.initial_prompt.strip())) if options.initial_prompt else ()
    rng = np.random.default_rng(0)
    segments: list[Segment] = []
    close_calls: list[CloseCall] = []
    speech_s = sum(m["duration"] for m in metadata)
    done_s = 0.0
    for first in range(0, len(chunks), options.batch_size):
        batch = range(first, min(first + options.batch_size, len(chunks)))
        results = _decode_with_fallback(model, options, language, prompt, mels[batch.start:batch.stop], encode, rng,
                                        [time_map.original(metadata[i]["offset"]) for i in batch],
                                        close_calls)
        for i, result in zip(batch, results):
            segments += _chunk_segments(result, tokenizer, metadata[i], time_map, len(segments), options)
            done_s += metadata[i]["duration"]
        if progress is not None:
            progress(done_s / speech_s)
    if progress is not None and not chunks:
        progress(1.0)  # no speech: nothing to decode

    return TranscribeOutput(
        segments=segments,
        text="".join(s.text for s in segments),
        language=language,
        language_probability=language_probability,
        close_calls=close_calls,
        encode_s=encode_s,
        decode_s=time.perf_counter() - t_start - encode_s,
    )


def _language(model: WhisperModel, requested: str | None, encode, mels: np.ndarray) -> tuple[str, float | None]:
    """The requested language (a code); English on English-only models; else detected on the first chunk."""
    if requested is not None:
        return requested, None
    if not model.is_multilingual or len(mels) == 0:
        return "en", None
    _, probs = detect_language(model, encode(mels[:1]))
    language = max(probs[0], key=probs[0].get)
    return language, probs[0][language]


def _decode_with_fallback(model: WhisperModel, options: DecodeOptions, language: str, prompt: tuple[int, ...],
                          mels: np.ndarray, encode, rng: np.random.Generator, starts: list[float],
                          close_calls: list[CloseCall]) -> list[DecodingResult]:
    """Decode a batch at the first temperature, then each window that looks like a failure at the
    next one, together, as `transcribe._SeekLoop` does one window at a time."""
    results: list[DecodingResult | None] = [None] * len(mels)
    pending = list(range(len(mels)))
    for step, temperature in enumerate(options.temperature):
        task = DecodingTask(model, _window_options(options, temperature, language, prompt), rng)
        decoded = task.run(encode(mels[pending]), n_audio=len(pending))
        last = step == len(options.temperature) - 1
        still = []
        for i, result in zip(pending, decoded):
            results[i] = result
            if last:
                continue
            close_calls += _close_calls(_needs_fallback, result, options, model.dims.n_vocab, starts[i],
                                        ("kept this decoding", "fell back to the next temperature"))
            if _needs_fallback(result, options):
                still.append(i)
        pending = still
        if not pending:
            break
    for i, result in enumerate(results):
        close_calls += _close_calls(_is_silence, result, options, model.dims.n_vocab, starts[i],
                                    ("kept the window", "skipped the window as silence"))
    return results


def _chunk_segments(result: DecodingResult, tokenizer, chunk: dict, time_map, first_id: int,
                    options: DecodeOptions) -> list[Segment]:
    """The segments of one chunk's decoding, in the recording's time."""
    if _is_silence(result, options):
        return []
    size = round(chunk["duration"] * FRAMES_PER_SECOND)
    pieces, _, _ = _segments_of_window(list(result.tokens), tokenizer, 0, size, 2)
    tail = list(result.tokens[sum(len(p[2]) for p in pieces):])
    if tail:  # after the last complete segment, from the timestamp that opened it, to the chunk's end
        pieces.append(((tail[0] - tokenizer.timestamp_begin) * TIME_PRECISION, chunk["duration"], tail))
    seek = round(time_map.original(chunk["offset"]) * FRAMES_PER_SECOND)  # where the chunk starts
    segments = []
    for start, end, tokens in pieces:
        text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
        if not text.strip():
            continue
        # a timestamp in the chunk's zero padding would map into the next chunk's speech
        start = time_map.original(chunk["offset"] + min(start, chunk["duration"]))
        end = max(start, time_map.original(chunk["offset"] + min(end, chunk["duration"]), is_end=True))
        segments.append(Segment(
            id=first_id + len(segments), seek=seek, start=start, end=end, text=text,
            tokens=tuple(tokens), temperature=result.temperature, avg_logprob=result.avg_logprob,
            compression_ratio=result.compression_ratio, no_speech_prob=result.no_speech_prob))
    return segments
