"""What the transcription service checks before it spends work, without Ray: audio bounded by
its container and by decoding (`audio.load_audio(max_seconds=)`), multichannel and non-finite
audio, the streamed multipart form and its limits, the access policy (API keys, Host, Origin),
OpenAI's form fields."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from maxwhisper.api import AudioError, AudioTooLong
from maxwhisper.audio import load_audio


def wav_header(rate: int, samples: int, channels: int = 1, data_bytes: int | None = None) -> bytes:
    """A 16-bit PCM WAV header declaring `samples` frames at `rate` (`data_bytes`: the data
    chunk's size as declared, where it should lie)."""
    block = 2 * channels
    size = samples * block if data_bytes is None else data_bytes
    return (b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16) + b"data" + struct.pack("<I", size))


def wav_bomb() -> bytes:
    """32 KB declaring 16000 samples at 1 Hz: 16,000 s, 256 million samples once resampled to 16 kHz."""
    return wav_header(1, 16000) + bytes(32000)


def flac_hours(hours: float, declared_samples: int | None = None) -> bytes:
    """Silence at 16 kHz, FLAC (~180 KB an hour); `declared_samples`: the sample count STREAMINFO
    gives instead of the true one (0: "unknown"), so that only decoding can tell the length."""
    out = io.BytesIO()
    with sf.SoundFile(out, "w", 16000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(hours * 60)):
            f.write(np.zeros(60 * 16000, np.int16))
    data = bytearray(out.getvalue())
    if declared_samples is not None:  # "fLaC", a block header, STREAMINFO: the count is its bytes 13-17's low 36 bits
        data[8 + 13] = (data[8 + 13] & 0xF0) | (declared_samples >> 32)
        data[8 + 14:8 + 18] = (declared_samples & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


def test_a_long_file_is_refused_from_its_container_before_decoding():
    with pytest.raises(AudioTooLong, match="16000.0 s long, more than the 600 s limit") as error:
        load_audio(wav_bomb(), max_seconds=600)
    assert (error.value.seconds, error.value.limit) == (16000.0, 600)
    with pytest.raises(AudioTooLong, match="10800.0 s long"):
        load_audio(flac_hours(3), max_seconds=600)


def test_decoding_stops_at_the_limit_where_the_container_says_less_or_nothing():
    """3 hours of FLAC whose header says 1 s, or gives no length: decoding stops at the limit,
    before the rest is decoded or resampled."""
    for declared in (16000, 0):
        with pytest.raises(AudioTooLong, match="longer than the 600 s limit .decoding stopped there.") as error:
            load_audio(flac_hours(3, declared_samples=declared), max_seconds=600)
        assert error.value.seconds is None
    assert len(load_audio(flac_hours(1 / 60, declared_samples=0), max_seconds=600)) == 60 * 16000  # within: whole


def test_audio_of_many_channels_is_averaged_where_ffmpeg_knows_no_layout_for_them():
    """32 or 9 channels (no FFmpeg layout): their mean; stereo as `ffmpeg -ac 1` mixes it (openai-whisper's)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16000, 32)) * 0.1).astype(np.float32)
    for channels, subtype in [(32, "PCM_16"), (9, "FLOAT")]:
        out = io.BytesIO()
        sf.write(out, x[:, :channels], 16000, format="WAV", subtype=subtype)
        audio = load_audio(out.getvalue())
        assert audio.shape == (16000,) and np.abs(audio - x[:, :channels].mean(axis=1)).max() < 1e-4
    out = io.BytesIO()
    sf.write(out, x[:, :2], 16000, format="WAV", subtype="PCM_16")
    assert np.abs(load_audio(out.getvalue()) - x[:, :2].mean(axis=1)).max() < 1e-4


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite_samples_in_a_file_are_refused(subtype):
    for bad in (np.nan, np.inf):
        samples = np.full(16000, 0.1, np.float32)
        samples[1000] = bad
        out = io.BytesIO()
        sf.write(out, samples, 16000, format="WAV", subtype=subtype)
        with pytest.raises(AudioError, match="NaN or infinite samples"):
            load_audio(out.getvalue())
