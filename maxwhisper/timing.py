"""Word-level timestamps from cross-attention, in numpy: a port of `whisper.timing` (openai-whisper
20250625) with the same steps and heuristics.

The decoder is run once more over the window's text (`WhisperModel.alignment`); the
cross-attention scores of the alignment heads, softmaxed over the audio frames, normalised per
frame, median-filtered and averaged over the heads, give a token x frame similarity; dynamic time
warping finds the monotonic path through it, and each word starts at the frame where its first
token's row of the path begins. A word's probability is the mean of its tokens' probabilities.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND
from .decoding import WhisperModel, softmax, softmax_at
from .tokenizer import Tokenizer

PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def default_alignment_heads(n_text_layer: int, n_text_head: int) -> np.ndarray:
    """openai's choice for a checkpoint without a list: every head of the last half of the layers."""
    layers, heads = np.meshgrid(np.arange(n_text_layer // 2, n_text_layer), np.arange(n_text_head), indexing="ij")
    return np.stack([layers.ravel(), heads.ravel()], axis=1)


def median_filter(x: np.ndarray, filter_width: int) -> np.ndarray:
    """Median over a window of `filter_width` (odd) along the last axis, reflect-padded. The window's
    values sorted by an odd-even transposition network of elementwise minima and maxima (NaN taken
    as the largest, as a sort puts it last), the middle one kept."""
    pad_width = filter_width // 2
    if x.shape[-1] <= pad_width:  # too short to reflect
        return x
    assert filter_width > 0 and filter_width % 2 == 1, "`filter_width` should be an odd number"
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad_width, pad_width)], mode="reflect")
    nan = np.isnan(x)
    has_nan = bool(nan.any())
    if has_nan:
        x = np.where(nan, np.inf, x).astype(x.dtype, copy=False)
    n = x.shape[-1] - 2 * pad_width
    values = [x[..., i : i + n] for i in range(filter_width)]
    for round_ in range(filter_width):
        for i in range(round_ % 2, filter_width - 1, 2):
            values[i], values[i + 1] = np.minimum(values[i], values[i + 1]), np.maximum(values[i], values[i + 1])
    median = values[pad_width]
    return np.where(np.isposinf(median), np.nan, median).astype(x.dtype, copy=False) if has_nan else median


def backtrace(trace: np.ndarray) -> np.ndarray:
    """The path from the DTW trace (0 diagonal, 1 up, 2 left): [2, path length] (text, time) indices."""
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    result = []
    while i > 0 or j > 0:
        result.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(result[::-1]).T


def dtw(x: np.ndarray) -> np.ndarray:
    """Dynamic time warping of the cost matrix x [N, M] (whisper's `dtw_cpu`, same tie rules and
    float32 accumulated cost). Vectorised over anti-diagonals: in the flattened (N+1) x (M+1)
    cost array, cell (i, k - i) of diagonal k is at i * M + k, so each diagonal and its three
    predecessors are strided slices; x is laid out once by diagonals (row k - 2 of `by_diagonal`
    holds x[i - 1, k - i - 1] at column i - 1), so each diagonal's x is a slice too."""
    N, M = x.shape
    cost = np.full((N + 1) * (M + 1), np.inf, dtype=np.float32)
    trace = np.full((N + 1) * (M + 1), -1, dtype=np.int8)
    cost[0] = 0
    skewed = np.zeros((N, M + N), dtype=np.float64)  # row i shifted right by i in the flat array below
    skewed[:, :M] = x
    by_diagonal = skewed.ravel()[: N * (M + N - 1)].reshape(N, M + N - 1).T.copy()
    for k in range(2, N + M + 1):
        i0, i1 = max(1, k - M), min(N, k - 1)  # rows of this diagonal's cells
        c0 = cost[(i0 - 1) * M + k - 2 : (i1 - 1) * M + k - 1 : M]  # (i - 1, j - 1)
        c1 = cost[(i0 - 1) * M + k - 1 : (i1 - 1) * M + k : M]  # (i - 1, j)
        c2 = cost[i0 * M + k - 1 : i1 * M + k : M]  # (i, j - 1)
        # whisper's rules: c0 if below both others, else c1 if below both others, else c2 (ties
        # included); a NaN compares below nothing, as in `dtw_cpu`
        t = np.where(c0 < np.minimum(c1, c2), 0, np.where(c1 < np.minimum(c0, c2), 1, 2))
        here = slice(i0 * M + k, i1 * M + k + 1, M)
        cost[here] = by_diagonal[k - 2, i0 - 1 : i1] + np.choose(t, (c0, c1, c2))
        trace[here] = t
    return backtrace(trace.reshape(N + 1, M + 1))


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def find_alignment(
    model: WhisperModel,
    tokenizer: Tokenizer,
    text_tokens: list[int],
    features,
    num_frames: int,
    alignment_heads: np.ndarray | None,
    *,
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
) -> list[WordTiming]:
    """Words of `text_tokens` with start/end times (seconds from the window start) and probabilities.

    features: the window's `model.encode` output; num_frames: its mel frames of real audio;
    alignment_heads: [k, 2] (layer, head), None for openai's default."""
    if len(text_tokens) == 0:
        return []
    if alignment_heads is None:
        alignment_heads = default_alignment_heads(model.dims.n_text_layer, model.dims.n_text_head)
    tokens = [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    logits, scores = model.alignment(np.array(tokens, dtype=np.int64), features)

    sampled_logits = logits[len(tokenizer.sot_sequence) :, : tokenizer.eot]
    text_token_probs = softmax_at(sampled_logits[: len(text_tokens)], np.array(text_tokens)).tolist()

    weights = scores[alignment_heads[:, 0], alignment_heads[:, 1]]  # heads x tokens x frames
    weights = softmax(weights[:, :, : num_frames // 2] * np.float32(qk_scale))
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a frame no token attends to: nan, as in torch
        weights = median_filter((weights - mean) / std, medfilt_width)

    matrix = weights.mean(axis=0)[len(tokenizer.sot_sequence) : -1]
    text_indices, time_indices = dtw(-matrix.astype(np.float64))

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:  # eot only
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))

    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    word_probabilities = [np.mean(text_token_probs[i:j]) for i, j in zip(word_boundaries[:-1], word_boundaries[1:])]
    return [WordTiming(*w) for w in zip(words, word_tokens, start_times, end_times, word_probabilities)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the previous one."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1

    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(
    *,
    segments: list[dict],
    model: WhisperModel,
    tokenizer: Tokenizer,
    features,
    num_frames: int,
    alignment_heads: np.ndarray | None,
    last_speech_timestamp: float,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
) -> None:
    """Set segment["words"] (dicts: word, start, end, probability) on one window's segments and
    adjust the segments' start/end to their words, as whisper does. Segments are dicts with at
    least seek, start, end, tokens."""
    if len(segments) == 0:
        return
    text_tokens_per_segment = [[t for t in segment["tokens"] if t < tokenizer.eot] for segment in segments]
    text_tokens = list(itertools.chain.from_iterable(text_tokens_per_segment))
    alignment = find_alignment(model, tokenizer, text_tokens, features, num_frames, alignment_heads)
    word_durations = np.array([t.end - t.start for t in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = np.median(word_durations) if len(word_durations) > 0 else 0.0
    median_duration = min(0.7, float(median_duration))
    max_duration = median_duration * 2

    # truncate long words at sentence boundaries (whisper's hack, pending a VAD-based segmentation)
    if len(word_durations) > 0:
        sentence_end_marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in sentence_end_marks:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in sentence_end_marks:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, text_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words = []
        while word_index < len(alignment) and saved_tokens < len(text_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append(
                    dict(
                        word=timing.word,
                        start=round(time_offset + timing.start, 2),
                        end=round(time_offset + timing.end, 2),
                        probability=timing.probability,
                    )
                )
            saved_tokens += len(timing.tokens)
            word_index += 1

        # truncate long words at segment boundaries (the same hack)
        if len(words) > 0:
            # the first and second word after a pause are not longer than twice the median duration
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                words[0]["end"] - words[0]["start"] > max_duration
                or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)
            ):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)

            # prefer the segment-level start timestamp if the first word is too long
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]

            # prefer the segment-level end timestamp if the last word is too long
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]

            last_speech_timestamp = segment["end"]

        segment["words"] = words
