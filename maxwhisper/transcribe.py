"""Long-form transcription: the seek loop over 30 s windows of a log-Mel spectrogram.

It follows `whisper.transcribe.transcribe` (openai-whisper 20250625) rule for rule, so that with the
same model numbers it gives the same segments and tokens: each window decoded with fallback through
the temperature schedule and judged by `maxwhisper.windows`' rules, the text so far as the next
window's prompt, and with word timestamps (`maxwhisper.timing`) the hallucination rules.
`first_window_only` is a live stream's hypothesis (`maxwhisper.streaming`): the first window alone,
one encoder pass, its decoding beginning with the stream's last tokens as a draft.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .api import CloseCall, DecodeOptions, MaxWhisperError, Segment, Word, check_options
from .audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .decoding import DecodingResult, DecodingTask, WhisperModel, detect_language
from .timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, add_word_timestamps
from .tokenizer import model_languages, tokenizer_for
from .windows import (
    decoding_failed,
    fallback_close_calls,
    is_silence,
    segments_of_window,
    silence_close_calls,
    stream_sample_len,
    window_options,
)


@dataclass(frozen=True)
class TranscribeOutput:
    segments: list[Segment]
    text: str
    language: str
    language_probability: float | None  # None when the language was given, not detected
    close_calls: list[CloseCall]  # threshold decisions within rounding of the threshold
    encode_s: float  # seconds in model.encode
    decode_s: float  # seconds in the rest of the loop (decoding, segmenting)
    decoded: tuple[int, ...] = ()  # the last window's decoded tokens (`first_window_only`: the next draft)


def transcribe(
    model: WhisperModel,
    mel: np.ndarray,
    options: DecodeOptions,
    progress: Callable[[float], None] | None = None,
    *,
    on_segments: Callable[[list[Segment]], None] | None = None,
    clip_timestamps: Sequence[float] = (),
    rng: np.random.Generator | None = None,
    first_window_only: bool = False,
    draft: Sequence[int] = (),
    window_frames: int | None = None,
) -> TranscribeOutput:
    """Transcribe a whole recording.

    mel: float32 [n_mels, n_frames], the log-Mel spectrogram of the audio followed by 30 s of
    silence, as `log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)` computes it.
    progress: called after each window with the fraction of the audio done (0..1).
    on_segments: called after each window that added segments, with them.
    clip_timestamps: start, end, start, end, ... seconds of the parts to transcribe (whisper's
    option); an odd count means the last part runs to the end. Empty: everything.
    rng: the random numbers for sampling at temperature > 0 (default: seeded with 0).
    first_window_only: decode the first 30 s window only (clip_timestamps do not apply), greedily
    beginning with the `draft` tokens where the model chooses them; `window_frames`: the mel frames
    the encoder hears then, the window's audio and silence after it up to that many (never fewer
    than its audio's; None: 30 s, as the seek loop's windows).
    """
    _check_mel(model, mel)
    check_options(options, **model_limits(model))
    t_start = time.perf_counter()
    clock = _EncodeClock(model)
    language, language_probability = _language(model, mel, options.language, clock)
    loop = _SeekLoop(model, mel, options, language, clock, rng if rng is not None else np.random.default_rng(0))

    if first_window_only:
        loop.window(0, loop.content_frames, tuple(draft), window_frames)
    else:
        for clip_start, clip_end in _seek_clips(clip_timestamps, loop.content_frames):
            seek = clip_start
            while seek < clip_end:
                done = len(loop.segments)
                seek = loop.window(seek, clip_end)
                if on_segments is not None and len(loop.segments) > done:
                    on_segments(loop.segments[done:])
                if progress is not None:
                    progress(min(seek, loop.content_frames) / loop.content_frames)

    return TranscribeOutput(
        segments=loop.segments,
        text=loop.text(),
        language=language,
        language_probability=language_probability,
        close_calls=loop.close_calls,
        encode_s=clock.seconds,
        decode_s=time.perf_counter() - t_start - clock.seconds,
        decoded=loop.decoded,
    )


# --- setup -----------------------------------------------------------------------------------


def model_limits(model: WhisperModel) -> dict:
    """What `api.check_options` checks `model`'s options against: its vocabulary, its languages,
    translation where it is multilingual."""
    return {
        "n_vocab": model.dims.n_vocab,
        "languages": model_languages(model.is_multilingual, model.num_languages),
        "translates": model.is_multilingual,
    }


def _check_mel(model: WhisperModel, mel: np.ndarray) -> None:
    if mel.ndim != 2 or mel.shape[0] != model.dims.n_mels or mel.shape[1] < N_FRAMES:
        raise MaxWhisperError(
            f"expected a log-Mel spectrogram [{model.dims.n_mels}, n_frames >= {N_FRAMES}] including 30 s of "
            f"padding, got shape {tuple(mel.shape)}"
        )


class _EncodeClock:
    """Runs model.encode, adding up its time; keeps the last window's features, so the first
    window can reuse those computed for language detection when its mel is the same."""

    def __init__(self, model: WhisperModel):
        self.model = model
        self.seconds = 0.0
        self._key: tuple[int, int, int] | None = None
        self._features: Any = None

    def encode(self, mel: np.ndarray, key: tuple[int, int, int]) -> Any:
        """mel [n_mels, frames]; key (first frame, frames of content, frames) identifies it."""
        if key != self._key:
            t = time.perf_counter()
            self._features = self.model.encode(np.ascontiguousarray(mel[None], dtype=np.float32))
            self.seconds += time.perf_counter() - t
            self._key = key
        return self._features


def _language(
    model: WhisperModel, mel: np.ndarray, requested: str | None, clock: _EncodeClock
) -> tuple[str, float | None]:
    """The requested language (a code); English on English-only models; else detected on the first 30 s."""
    if requested is not None:
        return requested, None
    if not model.is_multilingual:
        return "en", None
    features = clock.encode(mel[:, :N_FRAMES], (0, N_FRAMES, N_FRAMES))
    _, probs = detect_language(model, features)
    language = max(probs[0], key=probs[0].get)
    return language, probs[0][language]


def _seek_clips(clip_timestamps: Sequence[float], content_frames: int) -> list[tuple[int, int]]:
    """(start, end) frame ranges to transcribe; ends past the audio are cut to it."""
    seek_points = [round(ts * FRAMES_PER_SECOND) for ts in clip_timestamps]
    if len(seek_points) == 0:
        seek_points.append(0)
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    return [(start, min(end, content_frames)) for start, end in zip(seek_points[::2], seek_points[1::2])]


# --- the windows ------------------------------------------------------------------------------


class _SeekLoop:
    """The segments so far and what carries over from one window to the next (the prompt)."""

    def __init__(
        self,
        model: WhisperModel,
        mel: np.ndarray,
        options: DecodeOptions,
        language: str,
        clock: _EncodeClock,
        rng: np.random.Generator,
    ):
        self.model, self.mel, self.options, self.language = model, mel, options, language
        self.clock, self.rng = clock, rng
        self.content_frames = mel.shape[-1] - N_FRAMES
        self.input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per timestamp step: 2
        self.tokenizer = tokenizer_for(
            model.is_multilingual, num_languages=model.num_languages, language=language, task=options.task
        )
        self.segments: list[Segment] = []
        self.close_calls: list[CloseCall] = []
        self.all_tokens: list[int] = []  # the initial prompt, then every segment's tokens
        if options.initial_prompt is not None:
            self.all_tokens.extend(self.tokenizer.encode(" " + options.initial_prompt.strip()))
        self.initial_prompt_length = len(self.all_tokens)
        self.prompt_reset_since = 0  # the next window's prompt is all_tokens[prompt_reset_since:]
        self.last_speech_timestamp = 0.0  # the end of the last word (word timestamps)
        self.decoded: tuple[int, ...] = ()  # the last window's decoded tokens

    def text(self) -> str:
        return self.tokenizer.decode(self.all_tokens[self.initial_prompt_length :])

    def window(self, seek: int, clip_end: int, draft: tuple[int, ...] = (), frames: int | None = None) -> int:
        """Decode the window starting at frame `seek` (greedily beginning with `draft` where the
        model chooses it; the encoder hearing `frames` mel frames, None: N_FRAMES), add its segments;
        returns the next seek."""
        segment_size = min(N_FRAMES, self.content_frames - seek, clip_end - seek)
        frames = N_FRAMES if frames is None else max(segment_size, min(frames, N_FRAMES))
        mel_segment = _pad_frames(self.mel[:, seek : seek + segment_size], frames)
        features = self.clock.encode(mel_segment, (seek, segment_size, frames))

        prompt = tuple(self.all_tokens[self.prompt_reset_since :])
        start = seek * HOP_LENGTH / SAMPLE_RATE
        # a stream's short window stops a repetition loop early (`windows.stream_sample_len`)
        sample_len = stream_sample_len(segment_size / FRAMES_PER_SECOND) if frames < N_FRAMES else None
        result = self._decode_with_fallback(features, prompt, start, draft, sample_len)
        self.decoded = tuple(result.tokens)
        self.close_calls += silence_close_calls(result, self.options, self.model.dims.n_vocab, start)
        if is_silence(result, self.options):
            return seek + segment_size  # skip the whole window

        pieces, next_seek, single_timestamp_ending = segments_of_window(
            result.tokens, self.tokenizer, seek, segment_size, self.input_stride
        )
        segments = [dict(seek=seek, start=start, end=end, tokens=tokens, words=[]) for start, end, tokens in pieces]
        if self.options.word_timestamps:
            next_seek, skip = self._word_timestamps(
                segments, features, seek, segment_size, single_timestamp_ending, next_seek
            )
            if skip:
                return next_seek

        for seg in segments:
            text = self.tokenizer.decode([t for t in seg["tokens"] if t < self.tokenizer.eot])
            if seg["start"] == seg["end"] or text.strip() == "":  # instantaneous or textless: kept, but emptied
                text, seg["tokens"], seg["words"] = "", [], []
            words = None
            if self.options.word_timestamps:
                words = tuple(
                    Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"])) for w in seg["words"]
                )
            self.segments.append(
                Segment(
                    id=len(self.segments),
                    seek=seek,
                    start=seg["start"],
                    end=seg["end"],
                    text=text,
                    tokens=tuple(seg["tokens"]),
                    temperature=result.temperature,
                    avg_logprob=result.avg_logprob,
                    compression_ratio=result.compression_ratio,
                    no_speech_prob=result.no_speech_prob,
                    words=words,
                )
            )
            self.all_tokens.extend(seg["tokens"])

        if not self.options.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset_since = len(self.all_tokens)  # no prompt after a high temperature
        return next_seek

    def _decode_with_fallback(
        self,
        features: Any,
        prompt: tuple[int, ...],
        start: float,
        draft: tuple[int, ...] = (),
        sample_len: int | None = None,
    ) -> DecodingResult:
        """Decode at each temperature of the schedule in turn until the result is not a failure."""
        temperatures = self.options.temperature
        for i, temperature in enumerate(temperatures):
            decoding = window_options(self.options, temperature, self.language, prompt, draft, sample_len)
            result = DecodingTask(self.model, decoding, self.rng).run(features)[0]
            if i == len(temperatures) - 1:
                break  # the last temperature's result is kept, whatever it looks like
            self.close_calls += fallback_close_calls(result, self.options, self.model.dims.n_vocab, start)
            if not decoding_failed(result, self.options):
                break
        return result

    def _word_timestamps(
        self,
        segments: list[dict],
        features: Any,
        seek: int,
        segment_size: int,
        single_timestamp_ending: bool,
        next_seek: int,
    ) -> tuple[int, bool]:
        """Add words to the window's segments (dicts, changed in place); with a
        hallucination_silence_threshold drop suspected hallucinations. Returns the next seek, and
        whether to skip the window's segments altogether."""
        add_word_timestamps(
            segments=segments,
            model=self.model,
            tokenizer=self.tokenizer,
            features=features,
            num_frames=segment_size,
            alignment_heads=self.model.alignment_heads,
            last_speech_timestamp=self.last_speech_timestamp,
        )
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        if not single_timestamp_ending:  # the next window starts after the last word
            last_word_end = _last_end(segments)
            if last_word_end is not None and last_word_end > time_offset:
                next_seek = round(last_word_end * FRAMES_PER_SECOND)

        if self.options.hallucination_silence_threshold is not None:
            next_seek, skip = self._skip_hallucinations(
                segments, seek, segment_size, single_timestamp_ending, next_seek
            )
            if skip:
                return next_seek, True

        last_word_end = _last_end(segments)
        if last_word_end is not None:
            self.last_speech_timestamp = last_word_end
        return next_seek, False

    def _skip_hallucinations(
        self, segments: list[dict], seek: int, segment_size: int, single_timestamp_ending: bool, next_seek: int
    ) -> tuple[int, bool]:
        """whisper's hallucination_silence_threshold rules: skip a long silence before a suspected
        hallucination (improbable, very short or very long words) and drop the hallucination."""
        threshold = self.options.hallucination_silence_threshold
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        window_end_time = (seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
        if not single_timestamp_ending:
            last_word_end = _last_end(segments)
            if last_word_end is not None and last_word_end > time_offset:
                remaining_duration = window_end_time - last_word_end
                next_seek = (
                    round(last_word_end * FRAMES_PER_SECOND) if remaining_duration > threshold else seek + segment_size
                )

        # a possible hallucination first in the window: skip the silence before it, decode again from there
        first_segment = _next_words_segment(segments)
        if first_segment is not None and _is_segment_anomaly(first_segment):
            gap = first_segment["start"] - time_offset
            if gap > threshold:
                return seek + round(gap * FRAMES_PER_SECOND), True

        # drop a possible hallucination surrounded by silence or more hallucinations, and what follows it
        content_duration = self.content_frames * HOP_LENGTH / SAMPLE_RATE
        hal_last_end = self.last_speech_timestamp
        for si, segment in enumerate(segments):
            if not segment["words"]:
                continue
            if _is_segment_anomaly(segment):
                next_segment = _next_words_segment(segments[si + 1 :])
                hal_next_start = (
                    next_segment["words"][0]["start"]
                    if next_segment is not None
                    else time_offset + segment_size * HOP_LENGTH / SAMPLE_RATE
                )
                silence_before = (
                    segment["start"] - hal_last_end > threshold
                    or segment["start"] < threshold
                    or segment["start"] - time_offset < 2.0
                )
                silence_after = (
                    hal_next_start - segment["end"] > threshold
                    or _is_segment_anomaly(next_segment)
                    or window_end_time - segment["end"] < 2.0
                )
                if silence_before and silence_after:
                    next_seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                    if content_duration - segment["end"] < threshold:
                        next_seek = self.content_frames
                    del segments[si:]
                    break
            hal_last_end = segment["end"]
        return next_seek, False


def _last_end(segments: list[dict]) -> float | None:
    """The end of the last word, else of the last segment; None without segments."""
    return next(
        (w["end"] for s in reversed(segments) for w in reversed(s["words"])), segments[-1]["end"] if segments else None
    )


_PUNCTUATION = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS


def _word_anomaly_score(word: dict) -> float:
    """How unlike a real word: improbable, very short or very long."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_segment_anomaly(segment: dict | None) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def _pad_frames(mel: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
    """Zero-pad (never trim) a mel slice to `frames` frames, as whisper's pad_or_trim."""
    if mel.shape[-1] < frames:
        mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[-1])))
    return mel
