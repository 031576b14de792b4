"""maxwhisper.audio against openai-whisper's front end and the ffmpeg CLI (through files it made)."""

import struct
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from maxwhisper.api import AudioError, MaxWhisperError, NothingToTranscribe
from maxwhisper.audio import (
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    audio_duration,
    check_transcribable,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
)

AUDIO = Path(__file__).resolve().parent / "audio"
LSB = 1 / 32768  # one step of 16-bit audio


def dominant_hz(audio: np.ndarray) -> float:
    """Frequency of the strongest FFT bin of 16 kHz `audio`."""
    return np.argmax(np.abs(np.fft.rfft(audio))) * SAMPLE_RATE / len(audio)


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    """0.5-amplitude sine, float32 [rate * seconds]."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_tone(path: Path, codec: str, rate: int, layout: str) -> None:
    """Encode one second of a 440 Hz sine into `path` with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        channels = stream.codec_context.layout.nb_channels
        frame = av.AudioFrame.from_ndarray(np.tile(tone(rate), (channels, 1)), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(AUDIO / "jfk.flac")


def test_import_needs_neither_torch_nor_librosa():
    code = "import sys, maxwhisper.audio; print(sorted({'torch', 'librosa', 'whisper'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_constants_match_whisper():
    import whisper.audio as ref

    import maxwhisper.audio as ours

    for name in [
        "SAMPLE_RATE",
        "N_FFT",
        "HOP_LENGTH",
        "CHUNK_LENGTH",
        "N_SAMPLES",
        "N_FRAMES",
        "N_SAMPLES_PER_TOKEN",
        "FRAMES_PER_SECOND",
        "TOKENS_PER_SECOND",
    ]:
        assert getattr(ours, name) == getattr(ref, name), name


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_whisper_assets(n_mels):
    import whisper

    with np.load(Path(whisper.__file__).parent / "assets" / "mel_filters.npz") as f:
        expected = f[f"mel_{n_mels}"]
    filters = mel_filters(n_mels)
    assert filters.shape == expected.shape == (n_mels, 201)
    assert filters.dtype == np.float32
    assert np.abs(filters - expected).max() < 1e-6
    assert mel_filters(n_mels) is filters  # cached


@pytest.mark.parametrize("n_mels, padding", [(80, 0), (80, N_SAMPLES), (128, 0), (128, N_SAMPLES)])
def test_log_mel_matches_whisper(jfk, n_mels, padding):
    import torch
    import whisper

    expected = whisper.log_mel_spectrogram(torch.from_numpy(jfk), n_mels=n_mels, padding=padding).numpy()
    ours = log_mel_spectrogram(jfk, n_mels=n_mels, padding=padding)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape == (n_mels, (len(jfk) + padding) // 160)
    assert np.abs(ours - expected).max() < 1e-4


@pytest.mark.parametrize("seconds", [0.01, 9.98, 10.0, 10.02, 12.0])
def test_log_mel_with_padding_equals_the_audio_with_its_zeros_appended(seconds):
    # (the chunks of frames wholly in the padding are not computed: they must come out the same)
    audio = np.random.default_rng(0).standard_normal(round(seconds * 16000)).astype(np.float32) * 0.1
    padded = log_mel_spectrogram(audio, padding=N_SAMPLES)
    assert np.array_equal(padded, log_mel_spectrogram(np.pad(audio, (0, N_SAMPLES))))
    assert np.all(padded[:, -1000:] == padded.min())  # the last 10 s: silence, at the floor


def test_log_mel_keeps_blas_to_this_thread(monkeypatch):
    # BLAS's threads spin on after a product, taking the cores from the encoder pass that follows
    from threadpoolctl import threadpool_info

    def threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    during, rfft = [], np.fft.rfft

    def recorded(*args, **kwargs):
        during.extend(threads())
        return rfft(*args, **kwargs)

    monkeypatch.setattr(np.fft, "rfft", recorded)
    before = threads()
    log_mel_spectrogram(np.ones(16000, np.float32), padding=N_SAMPLES)
    assert before and during and set(during) == {1}
    assert threads() == before


def test_log_mel_of_long_audio_matches_whisper():
    import torch
    import whisper

    lecture = load_audio(AUDIO / "physicsworks.flac")
    expected = whisper.log_mel_spectrogram(torch.from_numpy(lecture)).numpy()
    ours = log_mel_spectrogram(lecture)
    assert ours.shape == expected.shape == (80, 20328)
    assert np.abs(ours - expected).max() < 1e-4


@pytest.mark.parametrize(
    "name, seconds",
    [
        ("jfk.flac", 11.0),  # 44.1 kHz stereo 24-bit
        ("jfk.wav", 11.0),  # 16 kHz mono s16
        ("jfk.mp3", 11.0),  # the MP3 decoder drops the encoder delay and padding
        ("multilingual.mp3", 59.9),  # 24 kHz
        ("stereo_diarization.wav", 5.0),
        ("hotwords.mp3", 4.0),  # 44.1 kHz stereo
    ],
)
def test_load_audio_formats(name, seconds):
    audio = load_audio(AUDIO / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio_duration(audio) == pytest.approx(seconds, abs=0.01)
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_flac_decodes_like_ffmpeg_made_wav(jfk):
    # jfk.wav (whisper.cpp) is evidently `ffmpeg -ar 16000 -ac 1` of this jfk.flac: they agree to 1 LSB
    wav = load_audio(str(AUDIO / "jfk.wav"))
    assert abs(audio_duration(jfk) - audio_duration(wav)) < 0.01
    assert np.corrcoef(jfk, wav)[0, 1] > 0.9999
    assert np.abs(jfk - wav).max() <= 2 * LSB


def test_webm_decodes_like_ffmpeg_cli():
    # physicsworks.flac was made from this 6-channel 48 kHz Opus file by
    # `ffmpeg -ac 1 -ar 16000 -sample_fmt s16`, the conversion openai-whisper's load_audio does
    webm = load_audio(AUDIO / "physicsworks_audio.webm")
    flac = load_audio(AUDIO / "physicsworks.flac")
    assert len(webm) == len(flac) == 3252535  # 203.28 s
    assert np.abs(webm - flac).max() <= 2 * LSB


@pytest.mark.parametrize(
    "suffix, codec, rate, layout, samples_tolerance",
    [
        (".m4a", "aac", 44100, "stereo", 1600),  # mp4 as written here keeps AAC's ~45 ms priming
        (".ogg", "libopus", 48000, "mono", 0),
    ],
)
def test_load_audio_encoded_here(tmp_path, suffix, codec, rate, layout, samples_tolerance):
    path = tmp_path / f"tone{suffix}"
    write_tone(path, codec, rate, layout)
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) <= samples_tolerance
    assert dominant_hz(audio) == pytest.approx(440, abs=2)
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.05)


def test_bytes_decode_like_the_path():
    path = AUDIO / "jfk.mp3"
    np.testing.assert_array_equal(load_audio(path.read_bytes()), load_audio(path))


def test_metadata_that_is_not_utf8_is_ignored(tmp_path):
    # a WAV whose title tag is Latin-1: PyAV 18 raises on it unless the decoder asks it to ignore it
    rate, pcm = 16000, (tone(16000) * 3000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    title = b"caf\xe9\x00\x00"
    info = b"INFO" + b"INAM" + struct.pack("<I", len(title)) + title
    chunks = (
        b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"LIST"
        + struct.pack("<I", len(info))
        + info
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
    path = tmp_path / "latin1-title.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    assert len(load_audio(path)) == rate
    assert abs(dominant_hz(load_audio(path)) - 440) < 2


def test_damaged_files_decode_what_is_readable(jfk):
    # like the ffmpeg CLI: corrupt packets are skipped, a truncated file gives what it holds
    mp3 = bytearray((AUDIO / "jfk.mp3").read_bytes())
    mp3[5000:9000] = np.random.default_rng(0).bytes(4000)  # ~0.5 s of garbage
    assert 10.0 < audio_duration(load_audio(bytes(mp3))) < 11.0
    flac = (AUDIO / "jfk.flac").read_bytes()
    half = load_audio(flac[: len(flac) // 2])
    assert 4.0 < audio_duration(half) < 7.0
    np.testing.assert_array_equal(half[:SAMPLE_RATE], jfk[:SAMPLE_RATE])


def test_int16_stereo_tuple_is_downmixed_and_resampled():
    left = tone(48000, hz=1000)
    stereo = np.stack([left, 0.5 * left], axis=1)  # [48000, 2]
    audio = load_audio((48000, (stereo * 32767).astype(np.int16)))
    assert audio.dtype == np.float32 and audio.shape == (SAMPLE_RATE,)
    assert dominant_hz(audio) == pytest.approx(1000, abs=1)  # not 3000: it was resampled
    assert np.abs(audio).max() == pytest.approx(0.75 * 0.5, abs=0.01)  # mean of the channels


def test_int32_tuple_matches_the_file(jfk):
    samples, rate = sf.read(AUDIO / "jfk.flac", dtype="int32")  # [485100, 2] at 44.1 kHz
    audio = load_audio((rate, samples))
    assert audio.shape == jfk.shape
    assert np.abs(audio - jfk).max() < LSB  # same swresample, in float rather than s16


def test_float_arrays():
    audio = tone(SAMPLE_RATE)
    assert load_audio(audio) is audio  # 16 kHz mono float32: passed through
    np.testing.assert_array_equal(load_audio((SAMPLE_RATE, audio.astype(np.float64))), audio)
    np.testing.assert_array_equal(load_audio(np.zeros(SAMPLE_RATE)), np.zeros(SAMPLE_RATE))  # silence is valid


def not_audio(tmp: Path) -> Path:
    path = tmp / "notes.wav"
    path.write_text("This is a text file, not a WAV file.\n" * 20)
    return path


def empty_file(tmp: Path) -> Path:
    path = tmp / "empty.flac"
    path.touch()
    return path


def no_samples_wav(tmp: Path) -> Path:
    path = tmp / "nothing.wav"
    sf.write(path, np.zeros(0, np.int16), SAMPLE_RATE)
    return path


@pytest.mark.parametrize(
    "source, max_seconds, message",
    [
        (lambda tmp: tmp / "missing.wav", None, "not found"),
        (b"", None, "empty"),
        (empty_file, None, "empty"),
        (not_audio, None, "cannot read the file as audio"),
        (np.random.default_rng(0).bytes(10_000), None, "cannot read the given bytes as audio"),
        (np.array([0.0, np.nan, 0.0], np.float32), None, "NaN"),
        ((44100, np.array([[0.0, 0.0], [np.inf, 0.0]])), None, "NaN or infinite"),
        ((16000, np.zeros((2, 16000), np.int16)), None, "[n, channels]"),
        ((0, np.zeros(10)), None, "sample rate"),
        (None, None, "no audio"),
        (AUDIO / "jfk.flac", 5, "11.0 s long, more than the 5 s limit"),
        (AUDIO / "physicsworks_audio.webm", 60, "203.3 s long, more than the 60 s limit"),
        ((48000, np.zeros(48000 * 3, np.int16)), 2.5, "3.0 s long, more than the 2.5 s limit"),
    ],
)
def test_bad_input_raises_audio_error(tmp_path, source, max_seconds, message):
    if callable(source):  # writes the file into tmp_path
        source = source(tmp_path)
    with pytest.raises(AudioError) as error:
        load_audio(source, max_seconds=max_seconds)
    assert message in str(error.value)
    assert isinstance(error.value.__cause__, (type(None), av.FFmpegError))
    assert str(tmp_path) not in str(error.value) and "notes" not in str(error.value)  # the caller names the file


@pytest.mark.parametrize(
    "source",
    [
        np.zeros(0, np.float32),
        (44100, np.zeros((0, 2), np.int16)),
        (48000, np.zeros(0)),
        no_samples_wav,  # a WAV file of no samples: audio, but none
    ],
    ids=["array", "stereo-tuple", "tuple", "wav-file"],
)
def test_audio_without_samples_loads_as_no_samples(tmp_path, source):
    audio = load_audio(source(tmp_path) if callable(source) else source)
    assert audio.dtype == np.float32 and audio.shape == (0,)


@pytest.mark.parametrize("max_seconds", [float("nan"), float("inf"), -5, 0])
def test_max_seconds_must_be_a_positive_finite_number(max_seconds):
    with pytest.raises(MaxWhisperError, match="max_seconds must be a positive finite number of seconds"):
        load_audio(tone(SAMPLE_RATE), max_seconds=max_seconds)


@pytest.mark.parametrize(
    "samples, reason, message",
    [
        (np.zeros(0, np.float32), "no_samples", "the audio has no samples: there is nothing to transcribe"),
        (
            tone(SAMPLE_RATE, 0.05),
            "too_short",
            "the audio is 0.05 s long, too short to hold speech: there is nothing to transcribe",
        ),
        (np.full(1, 0.5, np.float32), "too_short", "the audio is 0.00 s long, too short to hold speech"),
        (
            np.zeros(SAMPLE_RATE, np.float32),
            "silent",
            "the audio is silent (nothing louder than -80 dBFS): there is nothing to transcribe",
        ),
        (np.full(SAMPLE_RATE, 0.9e-4, np.float32), "silent", "the audio is silent"),  # -81 dBFS
    ],
    ids=["empty", "50-ms", "one-sample", "zeros", "-81-dBFS"],
)
def test_check_transcribable_says_why_there_is_nothing_to_transcribe(samples, reason, message):
    with pytest.raises(NothingToTranscribe) as error:
        check_transcribable(samples)
    assert str(error.value).startswith(message) and error.value.reason == reason
    assert isinstance(error.value, AudioError)


def test_check_transcribable_passes_speech_and_the_edges(jfk):
    check_transcribable(jfk)
    check_transcribable(tone(SAMPLE_RATE, 0.1))  # 0.1 s: the shortest
    check_transcribable(np.full(SAMPLE_RATE, -1.1e-4, np.float32))  # -79 dBFS, negative: loud enough


def test_pad_or_trim():
    audio = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_trim(audio, 3), [0, 1, 2])
    np.testing.assert_array_equal(pad_or_trim(audio, 7), [0, 1, 2, 3, 4, 0, 0])
    assert pad_or_trim(np.ones(SAMPLE_RATE)).shape == (N_SAMPLES,)
    mel = np.ones((80, 1100), np.float32)
    padded = pad_or_trim(mel, N_FRAMES)
    assert padded.shape == (80, N_FRAMES) and padded[:, 1100:].sum() == 0
    assert pad_or_trim(np.ones((80, 4000)), N_FRAMES, axis=1).shape == (80, N_FRAMES)


def test_a_stream_resampled_chunk_by_chunk_equals_the_whole_resampled_at_once():
    from maxwhisper.audio import StreamResampler, _resample

    tone = np.sin(np.arange(3 * 48_000) / 48_000 * 2 * np.pi * 440).astype(np.float32)
    stream = StreamResampler(48_000)
    chunks = [
        stream((tone[i : i + 4800, None].repeat(2, axis=1) * 32767).astype(np.int16))  # stereo int16
        for i in range(0, len(tone), 4800)
    ]
    streamed = np.concatenate(chunks + [stream.flush()])
    whole = _resample(tone, 48_000)
    assert len(streamed) == len(whole) == 3 * SAMPLE_RATE
    assert np.abs(streamed - whole).max() < 1e-4  # int16 rounding only: no edge at the chunk boundaries
    assert len(StreamResampler(SAMPLE_RATE)(np.ones(10, np.float32))) == 10
    assert StreamResampler(48_000)(np.zeros(0, np.int16)).shape == (0,)  # an empty chunk adds nothing
    with pytest.raises(AudioError, match="invalid sample rate"):
        StreamResampler(0)


def test_heard_frames_are_the_audio_s_and_the_padding_s_even_and_30_s_at_most():
    from maxwhisper.audio import heard_frames

    assert heard_frames(10 * SAMPLE_RATE, 5.0) == 1500
    assert heard_frames(10 * SAMPLE_RATE + 160, 5.0) == 1502  # 1501 frames: one more, the stem halves them
    assert heard_frames(0, 5.0) == 500
    assert heard_frames(28 * SAMPLE_RATE, 5.0) == heard_frames(40 * SAMPLE_RATE, 0.0) == N_FRAMES
