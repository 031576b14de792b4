"""The public API: `maxwhisper.load_model(...).transcribe(path or samples, **options)`."""
from __future__ import annotations

import subprocess
import sys

import pytest

import maxwhisper
from conftest import AUDIO
from maxwhisper.audio import load_audio

JFK = AUDIO / "jfk.flac"


def test_import_loads_no_backend():
    code = "import sys, maxwhisper; print(sorted({'torch', 'max', 'whisper', 'faster_whisper'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kwargs, needle", [
    ({"backend": "nope"}, "unknown backend"),
    ({"device": "tpu"}, "unknown device"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"name": "no-such-model"}, "unknown model"),
])
def test_load_model_errors(kwargs, needle):
    with pytest.raises(maxwhisper.MaxWhisperError, match=needle):
        maxwhisper.load_model(**kwargs)


@pytest.fixture(scope="module")
def openai_model():
    return maxwhisper.load_model("tiny.en", backend="openai", device="cpu")


def test_transcribe_path(openai_model):
    fractions = []
    result = openai_model.transcribe(str(JFK), progress=fractions.append)
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert isinstance(result, maxwhisper.TranscriptionResult)
    assert "ask not what your country can do for you" in result.text
    assert result.language == "en" and result.segments and result.timings.total_s > 0
    assert all(isinstance(s, maxwhisper.Segment) for s in result.segments)
    assert openai_model.backend == "openai" and openai_model.device == "cpu"


def test_transcribe_samples_with_options(openai_model):
    options = maxwhisper.DecodeOptions(temperature=0.0)
    result = openai_model.transcribe(load_audio(JFK), options, without_timestamps=True)
    assert result.options == maxwhisper.DecodeOptions(temperature=0.0, without_timestamps=True)
    assert "ask not what your country can do for you" in result.text
    with pytest.raises(TypeError):
        openai_model.transcribe(load_audio(JFK), beam=5)
