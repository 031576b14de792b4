"""faster-whisper (CTranslate2) behind the project's Transcriber contract.

It loads the CTranslate2 folder that `maxwhisper.checkpoint.load_checkpoint` resolved for the model
name, the very weights openai-whisper and MAX are built from (a .pt checkpoint has no such folder:
faster-whisper cannot load it). Every decoding option is passed explicitly; faster-whisper's own
defaults (beam 5, ...) are never used, and its VAD filter is off, except in batched transcription
(a batch_size), which is faster-whisper's `BatchedInferencePipeline` with its Silero VAD chunks.

Stage timings (seconds, summed over the whole call):
- features_s: the instance's `feature_extractor` (numpy log-mel), wrapped with a stopwatch;
- encode_s: the instance's `encode` (CTranslate2 encoder; language detection included);
- decode_s: total_s - features_s - encode_s (ctranslate2 generate, tokenizer, seek loop, word
  alignment, Python overhead).
faster-whisper's `transcribe()` returns a lazy generator: it is consumed inside the timed region.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

import ctranslate2
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES

from maxwhisper.api import (
    SAMPLE_RATE,
    BackendError,
    DecodeOptions,
    MaxWhisperError,
    Segment,
    Timings,
    TranscriptionResult,
    Word,
    check_request,
    empty_result,
)
from maxwhisper.audio import STREAM_PADDING_S, heard_frames
from maxwhisper.checkpoint import load_checkpoint
from maxwhisper.windows import stream_sample_len

COMPUTE_TYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


class _Stopwatch:
    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


class _TimedFeatureExtractor:
    """Proxy for faster-whisper's FeatureExtractor: times __call__, forwards every attribute."""

    def __init__(self, inner, stopwatch: _Stopwatch):
        self._inner = inner
        self._call = stopwatch.wrap(inner.__call__)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def load_cuda12_libraries() -> list[str]:
    """CTranslate2's CUDA 12 libraries (cuBLAS, cuDNN) from the `nvidia-*-cu12` pip packages, loaded
    into the process before it opens them: a CUDA 13 PyTorch brings no CUDA 12 libraries, and
    pip's are not on the loader's path. Returns the files loaded (none where the packages are not
    installed: then the system's libraries, if any, serve)."""
    import ctypes
    import importlib.util
    from pathlib import Path

    libraries = []
    for package, pattern in (("nvidia.cublas", "libcublas*.so.12"), ("nvidia.cudnn", "libcudnn*.so.9")):
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            libraries += sorted((Path(folder) / "lib").glob(pattern))
    loaded = []
    for _ in range(2):  # a library whose dependency was not loaded yet gets a second try
        for lib in [lib for lib in libraries if lib.name not in loaded]:
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                loaded.append(lib.name)
            except OSError:
                pass
    return loaded


def cublas12_loads() -> bool:
    """Whether the loader finds CUDA 12's cuBLAS: CTranslate2 finds a CUDA GPU without it and fails
    only at the first transcription. (cuDNN is optional since CTranslate2 4.6.3.)"""
    import ctypes

    try:
        ctypes.CDLL("libcublas.so.12")
    except OSError:
        return False
    return True


def _resolve_device(device: str) -> tuple[str, str | None]:
    """The device, and why "auto" took the CPU where there is a GPU (None otherwise)."""
    if device in ("auto", "gpu"):
        load_cuda12_libraries()
    gpus = ctranslate2.get_cuda_device_count()
    if device == "gpu" and gpus == 0:
        raise BackendError(
            f"faster backend: device 'gpu' requested but CTranslate2 {ctranslate2.__version__} "
            "sees no CUDA GPU; use --device cpu or auto"
        )
    if device in ("auto", "gpu") and gpus > 0 and not cublas12_loads():
        needs = (
            f"CTranslate2 {ctranslate2.__version__} runs on a GPU with CUDA 12's cuBLAS, and libcublas.so.12 "
            "cannot be loaded here: pip install nvidia-cublas-cu12 (bash setup.sh --gpu does)"
        )
        if device == "gpu":
            raise BackendError(f"faster backend: {needs}, or use --device cpu")
        return "cpu", needs
    if device == "auto":
        return ("gpu" if gpus > 0 else "cpu"), None
    if device not in ("cpu", "gpu"):
        raise BackendError(f"faster backend: unknown device {device!r}; valid devices: auto, cpu, gpu")
    return device, None


def _first_window_split(whisper: WhisperModel):
    """faster-whisper's `_split_segments_by_timestamps`, moving the seek past the window as after
    a single-timestamp ending, so that the seek loop ends after its first window (unless
    hallucination_silence_threshold skips a silence in it)."""
    split = type(whisper)._split_segments_by_timestamps

    def first_window(tokenizer, tokens, time_offset, segment_size, segment_duration, seek):
        segments, _, _ = split(whisper, tokenizer, tokens, time_offset, segment_size, segment_duration, seek)
        return segments, seek + segment_size, True

    return first_window


def _segment(i: int, s, word_timestamps: bool) -> Segment:
    """faster-whisper's segment as the contract's, `i` its id: faster-whisper counts from 1, the
    contract (like openai-whisper) from 0."""
    return Segment(
        id=i,
        seek=int(s.seek),
        start=float(s.start),
        end=float(s.end),
        text=s.text,
        tokens=tuple(int(t) for t in s.tokens),
        temperature=float(s.temperature or 0.0),
        avg_logprob=float(s.avg_logprob),
        compression_ratio=float(s.compression_ratio),
        no_speech_prob=float(s.no_speech_prob),
        words=tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in s.words)
        if word_timestamps
        else None,
    )


class FasterTranscriber:
    backend = "faster"

    def __init__(
        self, model: str = "tiny.en", device: str = "auto", precision: str = "fp32", threads: int | None = None
    ):
        self.device, self.device_note = _resolve_device(device)  # note: why "auto" took the CPU
        ct2_device = "cuda" if self.device == "gpu" else "cpu"
        if precision not in COMPUTE_TYPES:
            raise BackendError(f"faster backend: unknown precision {precision!r}; valid: {', '.join(COMPUTE_TYPES)}")
        supported = ctranslate2.get_supported_compute_types(ct2_device)
        if COMPUTE_TYPES[precision] not in supported:
            ours = [p for p, c in COMPUTE_TYPES.items() if c in supported]
            raise BackendError(
                f"faster backend: precision {precision!r} is not supported on {self.device} "
                f"by CTranslate2 here; supported: {', '.join(ours)}"
            )
        self.precision = precision
        self.threads = int(threads) if threads else (os.cpu_count() or 1)

        # resolve and validate the model (and learn its CTranslate2 folder); not part of load_s,
        # which is what faster-whisper itself spends reading that folder
        ckpt = load_checkpoint(model)
        if ckpt.ct2_dir is None:
            raise BackendError(
                f"faster backend: {model!r} is an openai-whisper .pt checkpoint; faster-whisper "
                "needs a CTranslate2 model folder (model.bin + config.json + tokenizer.json), "
                "e.g. an installed model name such as tiny.en"
            )
        self.model = ckpt.name
        self.source = ckpt.source
        self.ct2_dir = ckpt.ct2_dir
        self.n_vocab = ckpt.dims.n_vocab  # CTranslate2 ignores a suppressed id beyond it: refused instead
        del ckpt

        t0 = time.perf_counter()
        try:
            self.whisper = WhisperModel(
                str(self.ct2_dir),
                device=ct2_device,
                compute_type=COMPUTE_TYPES[precision],
                cpu_threads=self.threads,
                num_workers=1,
                local_files_only=True,
            )
        except (RuntimeError, ValueError) as e:
            raise BackendError(
                f"faster backend: CTranslate2 could not load {self.ct2_dir} on {self.device} "
                f"as {COMPUTE_TYPES[precision]}: {e}"
            ) from None
        self.load_s = time.perf_counter() - t0
        self.compile_s = 0.0

        self._lock = threading.Lock()  # one transcription at a time per model (the stopwatches)
        self._features = _Stopwatch()
        self._encode = _Stopwatch()
        # instance attributes shadow the class's: transcribe()/detect_language() call these
        self.whisper.feature_extractor = _TimedFeatureExtractor(self.whisper.feature_extractor, self._features)
        encode = self._encode.wrap(self.whisper.encode)
        self._frames: int | None = None  # the mel frames the encoder hears (a stream's window); None: all
        self.whisper.encode = lambda features: encode(
            features if self._frames is None else np.ascontiguousarray(features[..., : self._frames])
        )

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        progress: Callable[[float], None] | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> TranscriptionResult:
        return self._transcribe(audio, options, progress, on_segments=on_segments)

    def transcribe_window(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        draft: Sequence[int] = (),
        padding_s: float | None = STREAM_PADDING_S,
    ) -> tuple[TranscriptionResult, tuple[int, ...]]:
        """A live stream's hypothesis (`maxwhisper.api.WindowTranscriber`), as MAX's: the first 30 s
        window of `audio` decoded as `transcribe` decodes it, without the seek loop's next window, the
        encoder hearing its audio and `padding_s` of silence after it (CTranslate2 takes fewer than
        30 s of frames; None: the 30 s window), so its tokens may differ from that window's. No
        draft is checked: the tokens returned are none."""
        if options.batch_size is not None:
            raise MaxWhisperError("a stream's window is not transcribed in batches: leave batch_size unset")
        audio = np.asarray(audio)[: 30 * SAMPLE_RATE]
        frames = None if padding_s is None else heard_frames(len(audio), padding_s)
        return self._transcribe(audio, options, None, first_window_only=True, frames=frames), ()

    def _transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions,
        progress: Callable[[float], None] | None,
        first_window_only: bool = False,
        frames: int | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> TranscriptionResult:
        audio = check_request(audio, options, backend="faster-whisper", n_vocab=self.n_vocab, languages=_LANGUAGE_CODES)
        if audio.size == 0:
            return empty_result(self, options)
        suppress = options.suppress_token_ids()  # a fresh list: faster-whisper extends it
        with self._lock:
            self._features.seconds = self._encode.seconds = 0.0
            self._frames = frames
            t0 = time.perf_counter()
            common = dict(
                language=options.language,
                task=options.task,
                beam_size=options.beam_size,
                best_of=options.best_of,
                patience=options.patience,
                temperature=list(options.temperature),
                compression_ratio_threshold=options.compression_ratio_threshold,
                log_prob_threshold=options.logprob_threshold,
                no_speech_threshold=options.no_speech_threshold,
                initial_prompt=options.initial_prompt,
                word_timestamps=options.word_timestamps,
                without_timestamps=options.text_only,
                suppress_tokens=suppress,
                suppress_blank=options.suppress_blank,
                # openai-whisper's fixed behaviour, pinned rather than left to faster-whisper's defaults
                length_penalty=1,
                repetition_penalty=1,
                no_repeat_ngram_size=0,
                max_initial_timestamp=1.0,
                prefix=None,
                hotwords=None,
                multilingual=False,
                chunk_length=None,
                # a stream's short window stops a repetition loop early, as MAX's (`windows.stream_sample_len`)
                max_new_tokens=None if frames is None else stream_sample_len(len(audio) / SAMPLE_RATE),
                language_detection_segments=1,
            )
            if options.batch_size is not None:  # Silero VAD chunks, its default VAD settings, first temperature only
                segments_gen, info = BatchedInferencePipeline(self.whisper).transcribe(
                    audio, **common, batch_size=options.batch_size, vad_filter=True
                )
            else:
                if first_window_only:  # an instance attribute shadows the method, until the finally below
                    self.whisper._split_segments_by_timestamps = _first_window_split(self.whisper)
                segments_gen, info = self.whisper.transcribe(
                    audio,
                    **common,
                    condition_on_previous_text=options.condition_on_previous_text,
                    hallucination_silence_threshold=options.hallucination_silence_threshold,
                    prompt_reset_on_temperature=0.5,
                    vad_filter=False,
                    clip_timestamps="0",
                )
            report = progress or (lambda fraction: None)
            segments: list[Segment] = []
            try:
                for s in segments_gen:  # the lazy part: decoding happens here
                    segments.append(_segment(len(segments), s, options.word_timestamps))
                    if on_segments is not None:
                        on_segments(segments[-1:])
                    report(min(s.end * SAMPLE_RATE / audio.size, 1.0))
            finally:
                self.whisper.__dict__.pop("_split_segments_by_timestamps", None)
                self._frames = None
            report(1.0)
            total = time.perf_counter() - t0
            features, encode = self._features.seconds, self._encode.seconds
        return TranscriptionResult(
            text="".join(s.text for s in segments),
            segments=segments,
            language=info.language,
            backend=self.backend,
            model=self.model,
            device=self.device,
            precision=self.precision,
            audio_s=audio.size / SAMPLE_RATE,
            timings=Timings(
                load_s=self.load_s,
                compile_s=self.compile_s,
                features_s=features,
                encode_s=encode,
                decode_s=max(total - features - encode, 0.0),
                total_s=total,
            ),
            options=options,
            language_probability=float(info.language_probability),
        )
