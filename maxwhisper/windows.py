"""The rules one 30 s window is decoded and judged by, as openai-whisper's `transcribe()` applies
them: its decoding at one temperature (`window_options`), whether that decoding failed and falls
back to the next temperature (`decoding_failed`) or heard silence (`is_silence`), the threshold
decisions too close to call (`fallback_close_calls`, `silence_close_calls`) and its cut into
segments (`segments_of_window`). The seek loop (`transcribe`), batched transcription (`batched`) and
live streaming (`streaming`) share them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Iterator

from .api import CloseCall, DecodeOptions
from .audio import HOP_LENGTH, SAMPLE_RATE
from .decoding import DecodingResult, WindowOptions, logprob_tolerance, probability_tolerance
from .tokenizer import Tokenizer

# a stream's short window holds at most this many tokens per second of its audio, and this many more:
# speech says fewer, so a longer decoding is a repetition loop (docs/streaming.md)
STREAM_TOKENS_PER_S, STREAM_TOKENS_MORE = 10, 16


def stream_sample_len(audio_s: float) -> int:
    """The most tokens a stream's short window decodes, for `audio_s` seconds of audio in it."""
    return STREAM_TOKENS_MORE + math.ceil(STREAM_TOKENS_PER_S * audio_s)


def window_options(
    options: DecodeOptions,
    temperature: float,
    language: str,
    prompt: tuple[int, ...],
    draft: tuple[int, ...] = (),
    sample_len: int | None = None,
) -> WindowOptions:
    """The decoding of one window at one temperature: beam search (beam_size > 1) only at
    temperature 0, best_of samples only above it; the `draft` (`WindowOptions.draft`) is checked by
    greedy decoding only; at most `sample_len` tokens (None: the model's n_text_ctx // 2)."""
    greedy = temperature == 0
    beam = options.beam_size if greedy and options.beam_size > 1 else None
    return WindowOptions(
        task=options.task,
        language=language,
        temperature=temperature,
        best_of=None if greedy else options.best_of,
        beam_size=beam,
        patience=options.patience if beam is not None else None,
        prompt=prompt,
        suppress_tokens=tuple(options.suppress_token_ids()),
        suppress_blank=options.suppress_blank,
        without_timestamps=options.text_only,
        draft=draft,
        sample_len=sample_len,
    )


def needs_fallback(compression_ratio: float, avg_logprob: float, no_speech_prob: float, options: DecodeOptions) -> bool:
    """A decoding that looks like a failure: too compressible (a repetition loop) or too
    improbable, unless it looks like silence."""
    too_repetitive = (
        options.compression_ratio_threshold is not None and compression_ratio > options.compression_ratio_threshold
    )
    too_improbable = options.logprob_threshold is not None and avg_logprob < options.logprob_threshold
    silence = (
        options.no_speech_threshold is not None and no_speech_prob > options.no_speech_threshold and too_improbable
    )
    return (too_repetitive or too_improbable) and not silence


def decoding_failed(result: DecodingResult, options: DecodeOptions) -> bool:
    """`needs_fallback` of a window's decoding."""
    return needs_fallback(result.compression_ratio, result.avg_logprob, result.no_speech_prob, options)


def is_silence(result: DecodingResult, options: DecodeOptions) -> bool:
    """No voice: no-speech probability above the threshold, unless the text is probable enough."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return not (options.logprob_threshold is not None and result.avg_logprob > options.logprob_threshold)


def fallback_close_calls(result: DecodingResult, options: DecodeOptions, n_vocab: int, start: float) -> list[CloseCall]:
    """`decoding_failed`'s decisions too close to call, for a window starting at `start` seconds."""
    return _close_calls(
        decoding_failed, result, options, n_vocab, start, ("kept this decoding", "fell back to the next temperature")
    )


def silence_close_calls(result: DecodingResult, options: DecodeOptions, n_vocab: int, start: float) -> list[CloseCall]:
    """`is_silence`'s decisions too close to call, for a window starting at `start` seconds."""
    return _close_calls(
        is_silence, result, options, n_vocab, start, ("kept the window", "skipped the window as silence")
    )


def _threshold_bands(
    result: DecodingResult, options: DecodeOptions, n_vocab: int
) -> Iterator[tuple[str, float, float]]:
    """(quantity, threshold, tolerance) of each threshold in use: how far another implementation's
    float32 value may be from this one's."""
    if options.logprob_threshold is not None:  # an average of len(tokens) + 1 summed log probabilities
        total = options.logprob_threshold * (len(result.tokens) + 1)
        yield "avg_logprob", options.logprob_threshold, logprob_tolerance(n_vocab, total)
    if options.no_speech_threshold is not None:  # a softmax probability: relative
        scale = max(result.no_speech_prob, options.no_speech_threshold)
        yield "no_speech_prob", options.no_speech_threshold, probability_tolerance(n_vocab) * scale


def _close_calls(
    decide: Callable[[DecodingResult, DecodeOptions], bool],
    result: DecodingResult,
    options: DecodeOptions,
    n_vocab: int,
    start: float,
    outcomes: tuple[str, str],
) -> list[CloseCall]:
    """The thresholds near which `decide(result, options)` would go the other way for a value at
    the other edge of its tolerance band; outcomes: what False and True mean."""
    decided = decide(result, options)
    calls = []
    for quantity, threshold, tolerance in _threshold_bands(result, options, n_vocab):
        value = getattr(result, quantity)
        if abs(value - threshold) <= tolerance and any(
            decide(replace(result, **{quantity: value + d}), options) != decided for d in (-tolerance, tolerance)
        ):
            calls.append(
                CloseCall(
                    start=start,
                    temperature=result.temperature,
                    quantity=quantity,
                    value=value,
                    threshold=threshold,
                    tolerance=tolerance,
                    decision=outcomes[decided],
                )
            )
    return calls


def segments_of_window(
    tokens: list[int], tokenizer: Tokenizer, seek: int, segment_size: int, input_stride: int
) -> tuple[list[tuple[float, float, list[int]]], int, bool]:
    """Cut a window's tokens into (start, end, tokens) segments; returns them, the next seek, and
    whether the window ends on a single timestamp.

    Segments end at consecutive timestamp tokens (<|t1|><|t2|>: the end of one and the start of
    the next). An unfinished last segment is dropped and decoded again from its start in the
    next window, unless the window ends with a single timestamp (no speech after it).
    """
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step: 0.02
    time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
    ts_begin = tokenizer.timestamp_begin

    is_timestamp = [t >= ts_begin for t in tokens]
    single_timestamp_ending = is_timestamp[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]

    if consecutive:
        slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
        pieces, last_slice = [], 0
        for current_slice in slices:
            sliced = tokens[last_slice:current_slice]
            start = time_offset + (sliced[0] - ts_begin) * time_precision
            end = time_offset + (sliced[-1] - ts_begin) * time_precision
            pieces.append((start, end, sliced))
            last_slice = current_slice
        if single_timestamp_ending:
            return pieces, seek + segment_size, True
        # seek to the last complete segment's end
        return pieces, seek + (tokens[last_slice - 1] - ts_begin) * input_stride, False

    # no segment boundary: one segment for the whole window, ending at its last timestamp if any
    duration = segment_size * HOP_LENGTH / SAMPLE_RATE
    timestamps = [t for t in tokens if t >= ts_begin]
    if timestamps and timestamps[-1] != ts_begin:
        duration = (timestamps[-1] - ts_begin) * time_precision
    return [(time_offset, time_offset + duration, tokens)], seek + segment_size, single_timestamp_ending
