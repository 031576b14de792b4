"""The contract every backend speaks: decoding options in, a typed transcription out.

Nothing here imports a backend; `app.py`, the CLI and the benchmark only see these types.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SAMPLE_RATE = 16000


class MaxWhisperError(Exception):
    """An error caused by the user's input or environment; its message is shown as is."""


class AudioError(MaxWhisperError):
    """Empty, unreadable, unsupported or too long audio."""


class AudioTooLong(AudioError):
    """Audio longer than a limit of `limit` seconds; `seconds` is its length, or None where decoding
    stopped at the limit (the container did not say, or said less)."""

    def __init__(self, seconds: float | None, limit: float):
        super().__init__(
            f"the audio is {seconds:.1f} s long, more than the {limit:g} s limit"
            if seconds is not None
            else f"the audio is longer than the {limit:g} s limit (decoding stopped there)"
        )
        self.seconds, self.limit = seconds, limit


class InvalidSamples(AudioError):
    """Audio whose samples are not numbers a recording holds: NaN or infinite."""


class NothingToTranscribe(AudioError):
    """Audio that holds nothing to transcribe (`audio.check_transcribable`); `reason` is "no_samples",
    "too_short" or "silent"."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class OptionError(MaxWhisperError):
    """A decoding option no backend can decode with; `field` is its DecodeOptions name."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ModelError(MaxWhisperError):
    """A model that is not installed, not found, or not a Whisper checkpoint."""


class BackendError(MaxWhisperError):
    """An unknown backend, or one that cannot do what was asked (device, precision)."""


MIN_TEMPERATURE = 0.01  # below it, sampling is greedy decoding in all but name, and 1e-40 overflows float32 logits
VOCABULARY_LIMIT = 51866  # the largest Whisper vocabulary (large-v3's): no model has a token id at or above it

# what each threshold's value can mean (None switches it off)
THRESHOLDS = {
    "compression_ratio_threshold": (lambda v: 0 < v < math.inf, "a finite number above 0 (a gzip compression ratio)"),
    "logprob_threshold": (lambda v: -math.inf < v <= 0, "a finite number of at most 0 (an average log probability)"),
    "no_speech_threshold": (lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
    "hallucination_silence_threshold": (lambda v: 0 <= v < math.inf, "a finite number of seconds, 0 or more"),
}


def _is_number(value: Any) -> bool:
    """A real number (numpy's included), not a bool or a string; NaN and infinities are numbers here."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    """`value` as a message quotes it: numpy scalars as the plain Python value."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _language_code(language: Any) -> str:
    """A language code or name, any case ("de", "German") -> its code, as whisper takes them."""
    from .tokenizer import normalize_language  # tiktoken: imported only when a language is given

    try:
        return normalize_language(language)
    except (ValueError, AttributeError):
        raise OptionError(
            "language",
            f"unknown language {_shown(language)}; use a code such as en, de or fr, or a name such as German",
        ) from None


@dataclass(frozen=True)
class DecodeOptions:
    """openai-whisper's `transcribe()` options, with its defaults except `beam_size` (greedy),
    plus `batch_size`.

    Every backend receives all of them explicitly, never relying on its own defaults
    (faster-whisper would otherwise use beam 5).

    A batch_size switches to batched long-form transcription (`maxwhisper.batched`; on the faster
    backend its `BatchedInferencePipeline`): speech chunks found by Silero VAD, decoded that many at a
    time, without the previous text as prompt and without word timestamps. There `without_timestamps`
    defaults to text only, one segment per chunk, as in faster-whisper's pipeline (docs/usage.md).
    """

    language: str | None = None  # None: English for .en models, detected otherwise
    task: str = "transcribe"  # or "translate"
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback schedule
    beam_size: int = 1  # 1 = greedy at temperature 0
    best_of: int = 5  # samples drawn at temperature > 0
    patience: float = 1.0
    without_timestamps: bool | None = None  # None: timestamps in the sequential loop, text only when batched
    word_timestamps: bool = False
    initial_prompt: str | None = None
    condition_on_previous_text: bool = True
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    hallucination_silence_threshold: float | None = None
    suppress_tokens: str = "-1"  # comma-separated ids; -1 = the non-speech symbol set
    suppress_blank: bool = True
    batch_size: int | None = None  # None: the sequential loop, as openai-whisper; N: batched (see above)

    def __post_init__(self):
        """Refuses, with one line naming the field and its range, every value no backend can decode
        with; numbers and ids are stored in their plain Python types, the language as its code."""
        if self.task not in ("transcribe", "translate"):
            raise OptionError("task", f"task must be 'transcribe' or 'translate', not {self.task!r}")
        if self.language is not None:
            object.__setattr__(self, "language", _language_code(self.language))
        temperatures = self.temperature
        if not isinstance(temperatures, (tuple, list, np.ndarray)):  # one temperature: no fallback
            temperatures = (temperatures,)
        if len(temperatures) == 0:
            raise OptionError("temperature", "temperature schedule is empty")
        for t in temperatures:
            if not (_is_number(t) and (t == 0 or MIN_TEMPERATURE <= t < math.inf)):
                raise OptionError(
                    "temperature",
                    "temperature must be 0 (greedy) or a finite number of at least "
                    f"{MIN_TEMPERATURE:g}, got {_shown(t)}",
                )
        object.__setattr__(self, "temperature", tuple(float(t) for t in temperatures))
        for name in ("beam_size", "best_of", "batch_size"):
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            if not (_is_number(value) and value >= 1 and float(value).is_integer()):
                raise OptionError(name, f"{name} must be a whole number of at least 1, got {_shown(value)}")
            object.__setattr__(self, name, int(value))
        if not (_is_number(self.patience) and 0 < self.patience < math.inf):
            raise OptionError("patience", f"patience must be a finite number above 0, got {_shown(self.patience)}")
        if self.beam_size > 1 and self.beam_size * self.patience < 1:  # greedy decoding ignores patience
            raise OptionError(
                "patience",
                f"patience must be at least 1/beam_size ({1 / self.beam_size:g} with "
                f"beam_size {self.beam_size}: beam search waits for beam_size x patience finished "
                f"candidates, at least 1), got {_shown(self.patience)}",
            )
        object.__setattr__(self, "patience", float(self.patience))
        for name, (in_range, meaning) in THRESHOLDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not (_is_number(value) and in_range(value)):
                raise OptionError(name, f"{name} must be {meaning}, or None (off), got {_shown(value)}")
            object.__setattr__(self, name, float(value))
        for name in ("without_timestamps", "word_timestamps", "condition_on_previous_text", "suppress_blank"):
            value = getattr(self, name)
            if value is None and name == "without_timestamps":  # the mode's default (text_only)
                continue
            if not isinstance(value, (bool, np.bool_)):
                raise OptionError(name, f"{name} must be True or False, got {_shown(value)}")
            object.__setattr__(self, name, bool(value))
        if self.initial_prompt is not None and not isinstance(self.initial_prompt, str):
            raise OptionError(
                "initial_prompt", f"initial_prompt must be text or None, got {_shown(self.initial_prompt)}"
            )
        if self.batch_size is not None and self.word_timestamps:
            raise OptionError(
                "word_timestamps", "word timestamps are not available with batched transcription (a batch size is set)"
            )
        if not isinstance(self.suppress_tokens, str):  # an iterable of ids, as openai-whisper takes too
            try:
                object.__setattr__(self, "suppress_tokens", ",".join(str(int(t)) for t in self.suppress_tokens))
            except (TypeError, ValueError):
                raise OptionError(
                    "suppress_tokens",
                    "suppress_tokens must be comma-separated integers or a list "
                    f"of them, not {_shown(self.suppress_tokens)}",
                ) from None
        self.check_vocabulary(VOCABULARY_LIMIT, "any Whisper model")

    def suppress_token_ids(self) -> list[int]:
        """`suppress_tokens` as a fresh list of ints ('-1' / '1,2,3' / '')."""
        try:
            return [int(t) for t in self.suppress_tokens.split(",") if t.strip()]
        except ValueError:
            raise OptionError(
                "suppress_tokens", f"suppress_tokens must be comma-separated integers, not {self.suppress_tokens!r}"
            ) from None

    def check_vocabulary(self, n_vocab: int, whose: str = "this model") -> None:
        """Refuses a suppressed token id outside a vocabulary of `n_vocab` tokens; every backend calls it
        with its model's before it decodes (an id valid in large-v3 may be beyond a smaller vocabulary)."""
        for token in self.suppress_token_ids():
            if not -1 <= token < n_vocab:
                raise OptionError(
                    "suppress_tokens",
                    f"suppress_tokens: {token} is not a token id of {whose} "
                    f"(0 to {n_vocab - 1}, or -1 for the non-speech symbols)",
                )

    @property
    def text_only(self) -> bool:
        """Whether windows are decoded without timestamps: as asked, else only when batched."""
        return self.batch_size is not None if self.without_timestamps is None else self.without_timestamps

    def replace(self, **changes) -> "DecodeOptions":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "DecodeOptions":
        """The options as people give them, by field name (the CLI's and the benchmark's parsed
        flags, the app's controls): other names are ignored, a missing field keeps its default.
        A language of "" or "auto" means detect, an empty prompt none and a batch size of 0 the
        sequential loop; temperatures may come in groups (repeated --temperature flags) that make
        one schedule, None meaning the default schedule."""
        chosen = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        groups = chosen.pop("temperature", None)
        if groups is not None:
            groups = groups if isinstance(groups, (list, tuple)) else [groups]
            chosen["temperature"] = tuple(t for g in groups for t in (g if isinstance(g, (list, tuple)) else [g]))
        if chosen.get("language") in ("", "auto"):
            chosen["language"] = None
        if chosen.get("initial_prompt") == "":
            chosen["initial_prompt"] = None
        if chosen.get("batch_size") == 0:
            chosen["batch_size"] = None
        return cls(**chosen)


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int  # where its 30 s window (batched: its speech chunk) starts, in mel frames (10 ms)
    start: float  # seconds
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class CloseCall:
    """A threshold decision too close to call: `value` lies within `tolerance` of `threshold`, the
    difference another implementation's float32 sums may make (`maxwhisper.decoding`'s numerics),
    and the decision would go the other way at the far side of that band. Reported, not hidden:
    here this run's `decision` was taken, another implementation may take the other."""

    start: float  # seconds: the start of the 30 s window
    temperature: float  # of the decoding whose value was compared
    quantity: str  # "avg_logprob" or "no_speech_prob"
    value: float
    threshold: float
    tolerance: float
    decision: str  # what this run did, e.g. "fell back to a higher temperature"

    def __str__(self) -> str:
        name = {"avg_logprob": "logprob_threshold", "no_speech_prob": "no_speech_threshold"}[self.quantity]
        return (
            f"window at {self.start:.2f} s, temperature {self.temperature:g}: {self.quantity} {self.value:.6g} "
            f"is within {self.tolerance:.1e} of {name} {self.threshold:g}; this run {self.decision}, "
            "an implementation that rounds differently may not"
        )


@dataclass
class Timings:
    """Seconds. `load_s` and `compile_s` are one-time costs of the loaded model; the rest are
    this transcription's, with `total_s` the wall time of the whole call (model already loaded).
    A stage a backend cannot observe separately is None."""

    load_s: float = 0.0
    compile_s: float = 0.0
    features_s: float | None = None
    encode_s: float | None = None
    decode_s: float | None = None
    total_s: float = 0.0


@dataclass
class TranscriptionResult:
    text: str
    segments: list[Segment]
    language: str
    backend: str
    model: str
    device: str
    precision: str
    audio_s: float
    timings: Timings
    options: DecodeOptions
    language_probability: float | None = None
    close_calls: tuple[CloseCall, ...] = ()  # threshold decisions within rounding of the threshold

    @property
    def rtfx(self) -> float:
        """RTFx, the inverse real-time factor (as the Open ASR Leaderboard names it): seconds of audio
        per second of processing, higher is faster; the real-time factor (RTF) is its inverse."""
        return self.audio_s / self.timings.total_s if self.timings.total_s > 0 else float("inf")

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.tokens]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["timings"]["audio_s"] = self.audio_s
        d["timings"]["rtfx"] = self.rtfx
        d["options"]["temperature"] = list(self.options.temperature)
        return d


def empty_result(transcriber: "Transcriber", options: DecodeOptions) -> TranscriptionResult:
    """What every backend returns for audio without samples, as openai-whisper and faster-whisper do: no
    segments, no text. The model does not run: the language is the requested one, else English (what
    both detect in nothing)."""
    return TranscriptionResult(
        text="",
        segments=[],
        language=options.language or "en",
        backend=transcriber.backend,
        model=transcriber.model,
        device=transcriber.device,
        precision=transcriber.precision,
        audio_s=0.0,
        timings=Timings(load_s=transcriber.load_s, compile_s=transcriber.compile_s),
        options=options,
    )


def check_request(
    audio: np.ndarray,
    options: DecodeOptions,
    *,
    backend: str,
    n_vocab: int,
    languages: Collection[str],
    translates: bool = True,
    batched: bool = True,
) -> np.ndarray:
    """What every backend refuses before it transcribes: audio that is not mono samples, a batch size
    where it does not batch, and what `check_options` refuses. Returns the samples as float32; audio
    without samples then gets `empty_result`."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise AudioError(f"audio must be mono samples (1-D), got shape {samples.shape}")
    if options.batch_size is not None and not batched:
        raise BackendError(
            f"{backend} has no batched transcription; leave the batch size unset, or use the max or faster backend"
        )
    check_options(options, n_vocab=n_vocab, languages=languages, translates=translates)
    return samples


def check_options(options: DecodeOptions, *, n_vocab: int, languages: Collection[str], translates: bool = True) -> None:
    """Refuses options a model cannot decode with: a suppressed id beyond its `n_vocab` tokens, a
    language not in `languages` (the codes it decodes: "en" alone for an English-only model) and,
    where `translates` is False, translation."""
    options.check_vocabulary(n_vocab)
    language = options.language
    if language is not None and language not in languages:
        if tuple(languages) == ("en",):
            from .tokenizer import LANGUAGES

            raise MaxWhisperError(
                f"this model is English-only; it cannot transcribe {LANGUAGES[language].title()} "
                f"({language!r}). Use a multilingual model, or language 'en'."
            )
        raise MaxWhisperError(f"this model does not know the language {language!r}")
    if options.task == "translate" and not translates:
        raise MaxWhisperError("this model is English-only; it cannot translate. Use a multilingual model.")


@dataclass(frozen=True)
class Backend:
    """A backend's record in `maxwhisper.registry`: how to name, show and load it, and what it can
    do beyond the `Transcriber` protocol (its capabilities: the CLI, the service, bulk jobs, the
    benchmark and the app ask these, not its name). Importing `module` loads the implementation;
    nothing before that does."""

    name: str  # --backend's value
    label: str  # short, in the benchmark's tables: "MAX fp32"
    description: str  # in the app and in messages
    color: str  # the same in every chart
    module: str  # imported only when a model is loaded on it
    cls: str  # the Transcriber class in `module`
    package: str  # the module it needs installed
    extra: str | None  # the maxwhisper extra that installs `package` (None: the core install)
    precisions: dict[str, tuple[str, ...]]  # device it supports -> its precisions there, in the benchmark's order
    batched: bool = False  # takes DecodeOptions.batch_size (`bench batched`)
    # compiles graphs on a model's first load on a machine (minutes on a CPU), then loads them from a cache
    compiles: bool = False
    # has CPU kernels, and a portable plan without them: create_transcriber's kernels=False (--no-kernels)
    kernels: bool = False
    # decodes transcriptions called from several threads at once together: create_transcriber's max_batch
    # (the service's --max-batch; a bulk worker hands it several files at once)
    decodes_together: bool = False

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)


class Transcriber(Protocol):
    """A loaded model on one backend. Load once, transcribe many times."""

    backend: str  # "max", "openai" or "faster"
    model: str
    device: str  # "cpu" or "gpu"
    precision: str  # "fp32", "fp16", "bf16" or "int8"
    load_s: float
    compile_s: float

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        progress: Callable[[float], None] | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> TranscriptionResult:
        """`audio`: float32 mono samples at 16 kHz (see `maxwhisper.audio.load_audio`). `progress`, if
        given, is called as the work goes with the fraction of the audio done (0..1); `on_segments`
        with the segments decoded since its last call, in order, as they are decoded (all at the end
        where a backend decodes them together)."""
        ...


class WindowTranscriber(Transcriber, Protocol):
    """A transcriber that a live stream (`maxwhisper.streaming`) asks for one window per hypothesis."""

    def transcribe_window(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        draft: Sequence[int] = (),
        padding_s: float | None = ...,
    ) -> tuple[TranscriptionResult, tuple[int, ...]]:
        """The first 30 s window of `audio` decoded as `transcribe` decodes it, without the seek
        loop's next window: one encoder pass, which hears the window's audio and `padding_s` of
        silence after it (MAX and faster-whisper: by default `audio.STREAM_PADDING_S`; None: the
        30 s window) rather than 30 s, so its tokens may differ from the seek loop's first window's.
        `draft`: the tokens the stream's last hypothesis decoded, which a backend may check in one
        decoder pass. Returns the result and the tokens this window decoded, the next
        hypothesis's draft (empty where the backend takes none)."""
        ...
