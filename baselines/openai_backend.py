"""openai-whisper (PyTorch) behind the project's Transcriber contract.

The model is openai-whisper's own `Whisper`, built from the state dict `maxwhisper.checkpoint` loads
(the weights faster-whisper and MAX use; nothing is downloaded); transcription is its own
`transcribe()` with every decoding option passed explicitly.

Stage timings, summed over a call: features_s times the `log_mel_spectrogram` that `transcribe()`
calls (a stopwatch on the name `whisper.transcribe` looks up, counting only our calls in this
thread), so that the log-Mel is not computed twice; encode_s, forward hooks on the encoder, with a
CUDA sync on a GPU; decode_s, the rest. Progress comes from the tqdm bar `transcribe()` advances
after each window, replaced the same way.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch
import tqdm
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import LANGUAGES

from maxwhisper.api import (
    SAMPLE_RATE,
    BackendError,
    DecodeOptions,
    Segment,
    Timings,
    TranscriptionResult,
    Word,
    check_request,
    empty_result,
)
from maxwhisper.checkpoint import load_checkpoint

# the module, not the function of the same name that `whisper/__init__.py` re-exports
_wt = importlib.import_module("whisper.transcribe")

# --- stopwatch around whisper.transcribe's log_mel_spectrogram (installed once, per-thread) ---

_mel_clock = threading.local()  # .seconds is a float while one of our calls runs in this thread


def _timed_log_mel_spectrogram(*args, _original=_wt.log_mel_spectrogram, **kwargs):
    seconds = getattr(_mel_clock, "seconds", None)
    if seconds is None:  # someone else's transcribe() call: no timing
        return _original(*args, **kwargs)
    t0 = time.perf_counter()
    try:
        return _original(*args, **kwargs)
    finally:
        _mel_clock.seconds += time.perf_counter() - t0


if not getattr(_wt.log_mel_spectrogram, "_maxwhisper_timed", False):
    _timed_log_mel_spectrogram._maxwhisper_timed = True
    _wt.log_mel_spectrogram = _timed_log_mel_spectrogram

# --- whisper.transcribe's progress bar, reporting each window (installed once, per-thread) ---

_window_progress = threading.local()  # .report is our call's progress callback while it runs in this thread


class _WindowBar(tqdm.tqdm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report, self.frames = getattr(_window_progress, "report", None), 0

    def update(self, n=1):
        self.frames += n
        if self.report is not None:
            self.report(min(self.frames / self.total, 1.0))
        return super().update(n)


if _wt.tqdm is tqdm:
    _wt.tqdm = types.SimpleNamespace(tqdm=_WindowBar)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise BackendError(
            "openai backend: device 'gpu' requested but PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    if device not in ("cpu", "gpu"):
        raise BackendError(f"openai backend: unknown device {device!r}; valid devices: auto, cpu, gpu")
    return device


def transcribe_kwargs(options: DecodeOptions, fp16: bool) -> dict:
    """Every keyword of `whisper.transcribe()` (and the DecodingOptions it forwards), set from
    `options` explicitly rather than left to openai-whisper's defaults."""
    greedy = options.beam_size == 1
    return dict(
        verbose=None,
        temperature=tuple(options.temperature),
        compression_ratio_threshold=options.compression_ratio_threshold,
        logprob_threshold=options.logprob_threshold,
        no_speech_threshold=options.no_speech_threshold,
        condition_on_previous_text=options.condition_on_previous_text,
        initial_prompt=options.initial_prompt,
        word_timestamps=options.word_timestamps,
        hallucination_silence_threshold=options.hallucination_silence_threshold,
        carry_initial_prompt=False,  # (faster-whisper has no such option)
        clip_timestamps="0",
        # **decode_options -> whisper.DecodingOptions
        fp16=fp16,
        language=options.language,
        task=options.task,
        beam_size=None if greedy else options.beam_size,
        best_of=options.best_of,
        patience=None if greedy else options.patience,  # openai refuses patience without a beam
        without_timestamps=options.text_only,
        suppress_tokens=",".join(str(t) for t in options.suppress_token_ids()),
        suppress_blank=options.suppress_blank,
        length_penalty=None,  # rank by log prob / length (faster-whisper: length_penalty=1)
        max_initial_timestamp=1.0,
        sample_len=None,  # n_text_ctx // 2 = 224 new tokens per window
    )


class OpenAITranscriber:
    backend = "openai"

    def __init__(
        self, model: str = "tiny.en", device: str = "auto", precision: str = "fp32", threads: int | None = None
    ):
        self.device = _resolve_device(device)
        supported = {"cpu": ("fp32",), "gpu": ("fp32", "fp16")}[self.device]
        if precision not in supported:
            raise BackendError(
                f"openai backend: precision {precision!r} is not supported on {self.device}; "
                "openai-whisper supports fp32 (cpu, gpu) and fp16 (gpu only)"
            )
        self.precision = precision
        self.threads = int(threads) if threads else (os.cpu_count() or 1)
        torch.set_num_threads(self.threads)  # process-wide, as PyTorch has it

        t0 = time.perf_counter()
        ckpt = load_checkpoint(model)
        self.model = ckpt.name
        self.source = ckpt.source
        net = Whisper(ModelDimensions(**asdict(ckpt.dims)))
        net.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.state.items()}, strict=True)
        if ckpt.alignment_heads is not None and len(ckpt.alignment_heads):
            # same heads faster-whisper takes from config.json (openai's load_model sets them by name)
            mask = torch.zeros(ckpt.dims.n_text_layer, ckpt.dims.n_text_head, dtype=torch.bool)
            mask[ckpt.alignment_heads[:, 0], ckpt.alignment_heads[:, 1]] = True
            net.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
        self.torch_device = torch.device("cuda" if self.device == "gpu" else "cpu")
        net = net.to(self.torch_device).eval()
        if self.device == "gpu":
            torch.cuda.synchronize()
        self.net = net
        self.dims = ckpt.dims
        self.load_s = time.perf_counter() - t0
        self.compile_s = 0.0
        del ckpt

        self._lock = threading.Lock()  # one transcription at a time per model (the hooks' clock)
        self._encode_s = 0.0
        self._encode_t0 = 0.0
        self._language_probability: float | None = None
        net.encoder.register_forward_pre_hook(self._encoder_start)
        net.encoder.register_forward_hook(self._encoder_end)
        detect = net.detect_language

        def detect_language(mel, tokenizer=None):  # keeps the detected language's probability
            tokens, probs = detect(mel, tokenizer)
            p = probs[0] if isinstance(probs, list) else probs
            self._language_probability = float(max(p.values()))
            return tokens, probs

        net.detect_language = detect_language

    def _sync(self):
        if self.device == "gpu":
            torch.cuda.synchronize()

    def _encoder_start(self, module, inputs):
        self._sync()
        self._encode_t0 = time.perf_counter()

    def _encoder_end(self, module, inputs, output):
        self._sync()
        self._encode_s += time.perf_counter() - self._encode_t0

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        progress: Callable[[float], None] | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> TranscriptionResult:
        audio = check_request(
            audio, options, backend="openai-whisper", n_vocab=self.dims.n_vocab, languages=LANGUAGES, batched=False
        )
        if audio.size == 0:
            return empty_result(self, options)
        with self._lock, torch.no_grad():
            self._encode_s = 0.0
            self._language_probability = None
            _mel_clock.seconds = 0.0
            _window_progress.report = progress
            t0 = time.perf_counter()
            try:
                out = self.net.transcribe(audio, **transcribe_kwargs(options, self.precision == "fp16"))
                self._sync()
                total = time.perf_counter() - t0
                features = _mel_clock.seconds
            finally:
                _mel_clock.seconds = _window_progress.report = None
        encode = self._encode_s
        segments = [
            Segment(
                id=i,
                seek=int(s["seek"]),
                start=float(s["start"]),
                end=float(s["end"]),
                text=s["text"],
                tokens=tuple(int(t) for t in s["tokens"]),
                temperature=float(s["temperature"]),
                avg_logprob=float(s["avg_logprob"]),
                compression_ratio=float(s["compression_ratio"]),
                no_speech_prob=float(s["no_speech_prob"]),
                words=tuple(
                    Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"])) for w in s["words"]
                )
                if options.word_timestamps
                else None,
            )
            for i, s in enumerate(out["segments"])
        ]
        if on_segments is not None and segments:  # whisper.transcribe gives them at its end
            on_segments(segments)
        return TranscriptionResult(
            text=out["text"],
            segments=segments,
            language=out["language"],
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
            language_probability=self._language_probability,
        )
