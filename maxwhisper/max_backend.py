"""The MAX backend: numpy front end and decoding around the MAX Graph network. No PyTorch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .api import DecodeOptions, MaxWhisperError, Segment, Timings, TranscriptionResult, check_request, empty_result
from .audio import N_SAMPLES, SAMPLE_RATE, STREAM_PADDING_S, heard_frames, log_mel_spectrogram
from .batched import transcribe_batched
from .checkpoint import load_checkpoint
from .graph.kernel_package import start_kernel_library
from .graph.model import RUN_GRAPHS, MaxWhisper, resolve_device
from .graph.shared_steps import SharedModel
from .transcribe import model_limits, transcribe


class MaxTranscriber:
    backend = "max"

    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        kernels: bool = True,
        max_batch: int = 1,
    ):
        """kernels=False: the portable plan (MAX's ops only, the graphs a GPU runs) on the CPU too.
        max_batch > 1: transcriptions called from several threads at once share encoder calls and
        decoder steps, up to that many windows at a time (`graph.shared_steps`); their tokens are
        those each would get alone."""
        start = time.perf_counter()
        self.device, self.device_note = resolve_device(device)  # note: why "auto" fell back to the CPU
        if kernels and self.device == "cpu":  # a cold cache compiles the Mojo kernels meanwhile
            start_kernel_library()
        self.checkpoint = load_checkpoint(model)
        self.model, self.precision = self.checkpoint.name, precision
        self.net = MaxWhisper(self.checkpoint, self.device, precision, threads, kernels)
        self.max_batch = max_batch
        self.decoder_model = SharedModel(self.net, max_batch) if max_batch > 1 else self.net
        self.load_s = time.perf_counter() - start - self.net.compile_s

    @property
    def plan(self):
        """The `graph.plan.ExecutionPlan` the model runs under."""
        return self.net.plan

    @property
    def compile_s(self) -> float:
        """Grows when a graph compiled on first use (word timestamps, beam search) joins."""
        return self.net.compile_s

    def compile_rest(self) -> Iterator[tuple[str, float]]:
        """Every graph not compiled at load, compiled now or loaded from the cache: its name and
        seconds as each is ready (`graph.model.MaxWhisper.compile_rest`). Transcriptions that decode
        together step one token a call (`graph.shared_steps`), so they leave the run graphs out."""
        return self.net.compile_rest(leave_out=RUN_GRAPHS if self.max_batch > 1 else ())

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        progress: Callable[[float], None] | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> TranscriptionResult:
        return self._transcribe(audio, options, progress, on_segments=on_segments)[0]

    def transcribe_window(
        self,
        audio: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        draft: Sequence[int] = (),
        padding_s: float | None = STREAM_PADDING_S,
    ) -> tuple[TranscriptionResult, tuple[int, ...]]:
        """A live stream's hypothesis (`maxwhisper.streaming`): the first 30 s window of `audio`
        decoded as `transcribe` decodes it, without the seek loop's next window: one encoder pass.
        The encoder hears the window's audio and `padding_s` of silence after it, not the 30 s
        window whole (whisper.cpp's `audio_ctx`): the encoder pass and the decoder's cross-attention
        cost in proportion to what is heard (the encoder graph takes any number of frames, the
        decoder graphs any number of encoder positions), a third of the 30 s window's for 5 s of
        audio. The tokens may then differ from the seek loop's; None: the 30 s window, the seek
        loop's first window exactly. Where decodings share steps (`max_batch` > 1), each stream's
        window keeps its length: its steps attend to its own audio positions in the shared cache.
        `draft`: the tokens the stream's last hypothesis decoded (`transcribe.transcribe`): a stream's
        next hypothesis mostly begins as its last one did, so the decoder steps token by token only
        from where the two differ. Returns the result and the tokens this window decoded (the next draft)."""
        if options.batch_size is not None:
            raise MaxWhisperError("a stream's window is not transcribed in batches: leave batch_size unset")
        audio = audio[:N_SAMPLES]
        frames = heard_frames(len(audio), padding_s) if padding_s is not None else None
        return self._transcribe(audio, options, None, first_window_only=True, draft=tuple(draft), window_frames=frames)

    def _transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions,
        progress: Callable[[float], None] | None,
        first_window_only: bool = False,
        draft: tuple[int, ...] = (),
        window_frames: int | None = None,
        on_segments: Callable[[Sequence[Segment]], None] | None = None,
    ) -> tuple[TranscriptionResult, tuple[int, ...]]:
        """The result and the tokens its last window decoded. first_window_only: the first window alone
        (`transcribe_window`), beginning with the `draft` tokens where the model chooses them, its
        encoder hearing `window_frames` mel frames (None: 30 s); the whole seek loop otherwise, which
        takes no draft."""
        audio = check_request(audio, options, backend="MAX", **model_limits(self.net))
        if audio.size == 0:
            return empty_result(self, options), ()
        compile_before = self.net.compile_s_this_thread()
        start = time.perf_counter()
        if options.batch_size is not None:  # the log-Mel of each speech chunk is computed in the batched loop
            features_s, decoded = None, ()
            out = transcribe_batched(self.decoder_model, audio, options, progress)
            if on_segments is not None and out.segments:  # chunks finish out of order: all at the end
                on_segments(out.segments)
        else:
            mel = log_mel_spectrogram(audio, self.checkpoint.dims.n_mels, padding=N_SAMPLES)
            features_s = time.perf_counter() - start
            out = transcribe(
                self.decoder_model,
                mel,
                options,
                progress,
                on_segments=on_segments,
                first_window_only=first_window_only,
                draft=draft,
                window_frames=window_frames,
            )
            decoded = out.decoded
        # a graph compiled on first use during decoding is a one-time cost: count it in compile_s only
        lazy_compile_s = self.net.compile_s_this_thread() - compile_before
        total_s = time.perf_counter() - start - lazy_compile_s
        return TranscriptionResult(
            text=out.text,
            segments=out.segments,
            language=out.language,
            language_probability=out.language_probability,
            close_calls=tuple(out.close_calls),
            backend=self.backend,
            model=self.model,
            device=self.device,
            precision=self.precision,
            audio_s=len(audio) / SAMPLE_RATE,
            options=options,
            timings=Timings(
                load_s=self.load_s,
                compile_s=self.compile_s,
                features_s=features_s,
                encode_s=out.encode_s,
                decode_s=out.decode_s - lazy_compile_s,
                total_s=total_s,
            ),
        ), decoded
