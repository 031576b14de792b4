"""Audio front end: any audio -> 16 kHz mono float32 samples -> Whisper's log-Mel spectrogram.

Numpy and PyAV only (no torch, no librosa, no ffmpeg CLI). Modelled on openai-whisper's
`whisper/audio.py`, with the same constants and the same log-Mel definition.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Union

import av
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_limits

from .api import SAMPLE_RATE, AudioError, AudioTooLong, InvalidSamples, MaxWhisperError, NothingToTranscribe

# hard-coded audio hyperparameters, as in whisper.audio
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a mel spectrogram input

N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the initial convolutions have stride 2
FRAMES_PER_CHUNK = 1000  # log_mel_spectrogram computes the STFT this many frames at a time
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 10 ms per audio frame
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 20 ms per audio token

# the silence a live stream's window hears after its audio (`api.WindowTranscriber.transcribe_window`);
# less padding misheard words (docs/streaming.md)
STREAM_PADDING_S = 5.0
# PyAV before 19 raises on metadata that is not UTF-8 unless told to ignore it; 19 dropped the
# option and never raises (it decodes with surrogateescape)
OPEN_OPTIONS = {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}

MIN_SECONDS = 0.1  # shorter audio holds no word
SILENT_PEAK = 1e-4  # -80 dBFS: audio whose loudest sample is quieter than this has nothing to transcribe


def heard_frames(samples: int, padding_s: float) -> int:
    """The mel frames of a window of `samples` of audio and `padding_s` of silence after it, as an
    encoder hears them: an even count (the encoder's stem halves it), at most N_FRAMES (30 s)."""
    frames = min(samples, N_SAMPLES) // HOP_LENGTH + round(padding_s * FRAMES_PER_SECOND)
    return min(N_FRAMES, frames + frames % 2)


AudioSource = Union[str, os.PathLike, bytes, tuple[int, np.ndarray], np.ndarray]
# the file names taken for audio when a folder is searched: audio and video formats FFmpeg reads
MEDIA_SUFFIXES = frozenset(
    {
        ".wav",
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".webm",
        ".m4a",
        ".m4b",
        ".mp4",
        ".aac",
        ".mkv",
        ".mka",
        ".wma",
        ".aiff",
        ".aif",
        ".amr",
        ".3gp",
        ".mov",
        ".avi",
        ".mpeg",
        ".mpg",
        ".mpga",
        ".ts",
        ".ac3",
        ".wv",
        ".caf",
    }
)


def load_audio(source: AudioSource, max_seconds: float | None = None) -> np.ndarray:
    """Decode `source` to mono 16 kHz float32 samples, shape [n_samples].

    `source` is one of:
    - a path to an audio (or video) file in any format FFmpeg reads: wav, flac, mp3, ogg, webm, m4a...
    - the raw bytes of such a file;
    - a `(sample_rate, samples)` tuple as `gr.Audio(type="numpy")` gives: samples int16, int32 or
      float in [-1, 1], shape [n] or [n, channels];
    - a bare array, taken as 16 kHz samples (passed through when it is already float32 mono).

    Files are decoded with PyAV and resampled by FFmpeg's swresample to s16 mono 16 kHz, which is
    what openai-whisper gets from `ffmpeg -ac 1 -ar 16000 -f s16le`. Arrays are scaled to float,
    averaged to mono and resampled by the same swresample, in float.

    Raises AudioError for what is not audio: no source, a missing or 0-byte file, 0 bytes, data
    that cannot be decoded; InvalidSamples (an AudioError) for NaN or infinite samples;
    AudioTooLong (an AudioError) for audio longer than `max_seconds` (when given, a positive
    number), refused from a file's container before decoding where it says so, else when
    decoding reaches the limit. Audio without samples (an empty array, a WAV file of none) gives
    an empty array, silence gives its samples: `check_transcribable` says whether there is
    anything to transcribe. The messages never name the file: the caller does.
    """
    if max_seconds is not None and not (isinstance(max_seconds, numbers.Real) and 0 < max_seconds < math.inf):
        raise MaxWhisperError(f"max_seconds must be a positive finite number of seconds, got {max_seconds!r}")
    if source is None:
        raise AudioError("no audio was given")
    if isinstance(source, (str, os.PathLike)):
        audio = _decode(_checked_path(source), "the file", max_seconds)
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise AudioError("the audio data is empty (0 bytes)")
        audio = _decode(io.BytesIO(source), "the given bytes", max_seconds)
    elif isinstance(source, tuple) and len(source) == 2:
        audio = _from_array(*source, max_seconds)
    elif isinstance(source, np.ndarray):
        audio = _from_array(SAMPLE_RATE, source, max_seconds)
    else:
        raise AudioError(f"cannot load audio from a {type(source).__name__}")
    _check_length(len(audio), SAMPLE_RATE, max_seconds)
    return audio


def _checked_path(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.exists():
        raise AudioError("audio file not found")
    if not path.is_file():
        raise AudioError("not a file")
    if path.stat().st_size == 0:
        raise AudioError("the audio file is empty (0 bytes)")
    return str(path)


def _decode(file: str | io.BytesIO, name: str, max_seconds: float | None) -> np.ndarray:
    """Decode the first audio stream of a file to s16 mono 16 kHz -> float32 [n_samples]. With
    `max_seconds`, the container's duration is checked before decoding, and decoding stops at the
    limit where the container says less or nothing (each frame's length is counted before it is
    resampled: a frame at 1 Hz would become 16000 samples per sample)."""
    chunks = []  # [1, n] int16 each
    damaged = 0  # packets that could not be decoded
    decoded: dict[int, int] = {}  # samples decoded at each sample rate (counted exactly, not as summed seconds)
    try:
        with av.open(file, **OPEN_OPTIONS) as container:
            if not container.streams.audio:
                raise AudioError(f"{name} has no audio stream")
            if max_seconds is not None and container.duration:  # refuse a long file early
                _check_length(container.duration, av.time_base, max_seconds)
            stream = container.streams.audio[0]
            mono = _Mono16k()
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    damaged += 1
                    continue  # skip a corrupt packet and go on, as the ffmpeg CLI does
                for frame in frames:
                    decoded[frame.sample_rate] = decoded.get(frame.sample_rate, 0) + frame.samples
                    if max_seconds is not None and sum(n / rate for rate, n in decoded.items()) > max_seconds:
                        raise AudioTooLong(None, max_seconds)
                    chunks += mono(frame)
            chunks += mono.flush()
    except av.FFmpegError as e:
        raise AudioError(f"cannot read {name} as audio ({e.strerror})") from e
    if not chunks:
        if damaged:
            raise AudioError(f"no audio samples could be decoded from {name}")
        return np.zeros(0, np.float32)  # an audio stream of no samples
    return np.concatenate(chunks, axis=1)[0].astype(np.float32) / 32768.0


FLOAT_FORMATS = frozenset({"flt", "fltp", "dbl", "dblp"})
NOT_FINITE = "the audio contains NaN or infinite samples"


class _Mono16k:
    """A file's decoded frames -> s16 mono 16 kHz arrays [1, n]. The channels are mixed by
    swresample where FFmpeg knows their roles (as `ffmpeg -ac 1`, which openai-whisper decodes
    with); where it knows no layout for their count (9 channels, 32), they are averaged."""

    def __init__(self):
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._averaged: bool | None = None  # decided on the first frame

    def __call__(self, frame: av.AudioFrame) -> list[np.ndarray]:
        if frame.format.name in FLOAT_FORMATS and not np.isfinite(frame.to_ndarray()).all():
            raise InvalidSamples(NOT_FINITE)
        frame.pts = None  # a skipped packet leaves a gap in timestamps: ignore it
        if self._averaged is None:
            try:
                resampled = self._resampler.resample(frame)
                self._averaged = False
                return [f.to_ndarray() for f in resampled]
            except av.ArgumentError:  # swresample has no mix from this channel count to mono
                self._averaged = True
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        if self._averaged:
            frame = _channel_average(frame)
        return [f.to_ndarray() for f in self._resampler.resample(frame)]

    def flush(self) -> list[np.ndarray]:
        return [f.to_ndarray() for f in self._resampler.resample(None)]


def _channel_average(frame: av.AudioFrame) -> av.AudioFrame:
    """A frame of any sample format and channel count -> its channels' mean, a float mono frame."""
    samples = frame.to_ndarray()  # planar: [channels, n]; packed: [1, n * channels]
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        samples = samples.reshape(-1, channels).T
    if np.issubdtype(samples.dtype, np.signedinteger):
        samples = samples / 2.0 ** (8 * samples.itemsize - 1)
    elif np.issubdtype(samples.dtype, np.unsignedinteger):  # u8: silence at 128
        samples = samples / 128.0 - 1.0
    mono = av.AudioFrame.from_ndarray(samples.mean(axis=0, dtype=np.float32)[None, :], format="flt", layout="mono")
    mono.sample_rate = frame.sample_rate
    return mono


def _from_array(sample_rate: int, array: np.ndarray, max_seconds: float | None) -> np.ndarray:
    """[n] or [n, channels] int or float samples at `sample_rate` -> float32 [n'] at 16 kHz."""
    _check_rate(sample_rate)
    audio = _float_mono(array)
    _check_length(len(audio), sample_rate, max_seconds)
    return audio if sample_rate == SAMPLE_RATE or audio.size == 0 else _resample(audio, sample_rate)


class StreamResampler:
    """A live stream's chunks ([n] or [n, channels] int or float samples at `sample_rate`) ->
    float32 mono at 16 kHz. One swresample context for the whole stream: resampling each chunk
    on its own would put an edge at every chunk boundary."""

    def __init__(self, sample_rate: int):
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        audio = _float_mono(array)
        if self.sample_rate == SAMPLE_RATE or audio.size == 0:
            return audio
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        return self._samples(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still inside the resampler, at the end of the stream."""
        return self._samples(self._resampler.resample(None))

    @staticmethod
    def _samples(frames) -> np.ndarray:
        return np.concatenate([f.to_ndarray()[0] for f in frames]) if frames else np.zeros(0, np.float32)


def _check_rate(sample_rate) -> None:
    if not (isinstance(sample_rate, numbers.Integral) and sample_rate > 0):
        raise AudioError(f"invalid sample rate: {sample_rate!r}")


def _float_mono(array: np.ndarray) -> np.ndarray:
    """[n] or [n, channels] int or float samples -> float32 [n], contiguous."""
    array = np.asarray(array)
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] > array.shape[0] > 0):
        raise AudioError(f"expected samples of shape [n] or [n, channels], got {list(array.shape)}")
    if array.size == 0:
        return np.zeros(0, np.float32)
    if np.issubdtype(array.dtype, np.signedinteger):  # int16 / 2**15, int32 / 2**31
        audio = array.astype(np.float32) / 2.0 ** (8 * array.itemsize - 1)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidSamples(NOT_FINITE)
        audio = array.astype(np.float32, copy=False)
    else:
        raise AudioError(f"unsupported sample type: {array.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(audio)


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 [n] at `sample_rate` -> float32 [n * 16000 / sample_rate], with FFmpeg's swresample."""
    resampler = StreamResampler(sample_rate)
    return np.concatenate([resampler(audio), resampler.flush()])


def _check_length(n: int, rate: int, max_seconds: float | None) -> None:
    """`n` samples at `rate` per second must be at most `max_seconds`."""
    if max_seconds is not None and n / rate > max_seconds:
        raise AudioTooLong(n / rate, max_seconds)


def check_transcribable(audio: np.ndarray) -> None:
    """Raises NothingToTranscribe (an AudioError) saying why 16 kHz `audio` holds nothing to
    transcribe: no samples, shorter than MIN_SECONDS, or silent (no sample louder than SILENT_PEAK,
    -80 dBFS). The command line, the app and the service refuse such audio; the Python API
    transcribes it (an empty result for no samples), as openai-whisper and faster-whisper do."""
    if len(audio) == 0:
        raise NothingToTranscribe("no_samples", "the audio has no samples: there is nothing to transcribe")
    if len(audio) < MIN_SECONDS * SAMPLE_RATE:
        raise NothingToTranscribe(
            "too_short",
            f"the audio is {len(audio) / SAMPLE_RATE:.2f} s long, too short to "
            "hold speech: there is nothing to transcribe",
        )
    if not np.abs(audio).max() >= SILENT_PEAK:
        raise NothingToTranscribe(
            "silent", "the audio is silent (nothing louder than -80 dBFS): there is nothing to transcribe"
        )


def audio_duration(audio: np.ndarray) -> float:
    """Seconds of 16 kHz `audio`, shape [n_samples]."""
    return audio.shape[-1] / SAMPLE_RATE


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad or cut `array` along `axis` to `length` (default: 30 s of samples)."""
    n = array.shape[axis]
    if n > length:
        array = array.take(np.arange(length), axis=axis)
    elif n < length:
        pad_widths = [(0, 0)] * array.ndim
        pad_widths[axis] = (0, length - n)
        array = np.pad(array, pad_widths)
    return array


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=None)
def mel_filters(n_mels: int) -> np.ndarray:
    """Mel filterbank, float32 [n_mels, N_FFT // 2 + 1], read-only.

    The Slaney-normalised triangles of `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)`,
    from which openai-whisper saved its `assets/mel_filters.npz`.
    """
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)  # [201]
    edges = np.array([0.0, SAMPLE_RATE / 2])
    mel_hz = _mel_to_hz(np.linspace(*_hz_to_mel(edges), n_mels + 2))  # [n_mels + 2] band edges
    widths = np.diff(mel_hz)  # [n_mels + 1]
    ramps = mel_hz[:, None] - fft_hz[None, :]  # [n_mels + 2, 201]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, 201]
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]  # Slaney: equal area per band
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=None)
def _hann_window() -> np.ndarray:
    """Periodic Hann window, float32 [N_FFT] (torch.hann_window(N_FFT))."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


_BLAS_LIMIT = threading.Lock()


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper's log-Mel spectrogram of 16 kHz `audio` [n_samples] -> float32 [n_mels, n_frames].

    n_frames = (n_samples + padding) // HOP_LENGTH. Same definition as
    `whisper.audio.log_mel_spectrogram`: `padding` zeros appended, torch.stft (periodic Hann,
    center=True with reflect padding) with its last frame dropped, power, mel, log10 clamped at
    1e-10, floored at 8 below the maximum, scaled to (x + 4) / 4. Computed in float32 like torch.
    """
    audio = np.asarray(audio, dtype=np.float32)
    n_audio = len(audio)
    if padding > 0:
        audio = np.pad(audio, (0, padding))
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:-1]  # [n_frames, N_FFT], a view
    filters, window = mel_filters(n_mels), _hann_window()
    mel_spec = np.zeros((n_mels, len(frames)), np.float32)
    # chunks of frames wholly in the appended zeros (centred half a window past the audio, the
    # reflection at the end all zeros too) have no power: left at zero, as computing them would give
    heard = len(frames) if padding < N_FFT // 2 else min(len(frames), -(-(n_audio + N_FFT // 2) // HOP_LENGTH))
    # FRAMES_PER_CHUNK frames at a time: the temporaries stay in cache instead of being hundreds
    # of MB of fresh memory for long audio, slow to fault in on a VM (docs/design.md, Front end).
    # The mel projection in this thread: BLAS's threads spin on after a call, taking the cores
    # from the encoder pass that follows it (docs/design.md, Front end). The limit is the process's:
    # one thread at a time sets and restores it, so that none restores another's limit. Every BLAS
    # loaded is limited, looked up each time (~2 ms): a process can load more after the first call
    with _BLAS_LIMIT, threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, heard, FRAMES_PER_CHUNK):
            stft = np.fft.rfft(frames[start : start + FRAMES_PER_CHUNK] * window, axis=-1)  # complex64
            mel_spec[:, start : start + FRAMES_PER_CHUNK] = filters @ (stft.real**2 + stft.imag**2).T
    log_spec = np.log10(np.maximum(mel_spec, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
