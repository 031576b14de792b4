"""Session fixtures shared by the decoding tests: tiny.en weights, openai-whisper's PyTorch model
built from them (once per session: building and loading costs seconds), and the test audio."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")  # offline compiles otherwise wait on it
AUDIO = Path(__file__).resolve().parent / "audio"


@pytest.fixture(scope="session")
def tiny_en_checkpoint():
    from maxwhisper.checkpoint import load_checkpoint

    return load_checkpoint("tiny.en")


@pytest.fixture(scope="session")
def max_tiny_en():
    """The MAX backend with tiny.en on CPU: its graphs compile (or load from the disk cache) once per session."""
    from maxwhisper.max_backend import MaxTranscriber

    return MaxTranscriber("tiny.en", device="cpu")


@pytest.fixture(scope="session")
def max_tiny_en_portable():
    """The portable plan on the CPU (`--no-kernels`): MAX's ops only, exactly the graphs a GPU runs."""
    from maxwhisper.max_backend import MaxTranscriber

    return MaxTranscriber("tiny.en", device="cpu", kernels=False)


@pytest.fixture(scope="session")
def max_tiny_en_int8():
    """MAX with tiny.en in int8 on the CPU (`--precision int8`): the one int8 model of the session,
    its graphs compiled once (minutes cold on 2 cores), then from the disk cache."""
    from maxwhisper.max_backend import MaxTranscriber

    return MaxTranscriber("tiny.en", device="cpu", precision="int8")


@pytest.fixture(scope="session")
def max_tiny_en_bf16():
    """MAX with tiny.en in bf16 on the CPU (`--precision bf16`), where the CPU has AVX512_BF16: the
    one bf16 model of the session; None on a CPU without (the tests then check that MAX says so)."""
    from maxwhisper.max_backend import MaxTranscriber
    from maxwhisper.cpu_features import has_bf16

    return MaxTranscriber("tiny.en", device="cpu", precision="bf16") if has_bf16() else None


def each_plan(fixture: str):
    """A fixture giving the session's `fixture` (the CPU kernels' plan) and `{fixture}_portable` in
    turn: the token-equality tests run on both execution plans."""
    @pytest.fixture(params=["cpu-kernels", "portable"])
    def either(request):
        return request.getfixturevalue(fixture if request.param == "cpu-kernels" else f"{fixture}_portable")
    return either


max_tiny_en_each_plan = each_plan("max_tiny_en")


@pytest.fixture(scope="session")
def openai_tiny_en():
    from maxwhisper_baselines.openai_backend import OpenAITranscriber

    return OpenAITranscriber("tiny.en", device="cpu")


@pytest.fixture(scope="session")
def torch_tiny_en(tiny_en_checkpoint):
    """tests.torch_reference.TorchModel over openai-whisper's module with the tiny.en weights;
    `.module` is the `whisper.model.Whisper` itself, for `whisper.transcribe`."""
    from torch_reference import TorchModel

    return TorchModel(tiny_en_checkpoint)


def _load(name: str, seconds: float | None = None) -> np.ndarray:
    from maxwhisper.audio import SAMPLE_RATE, load_audio

    audio = load_audio(AUDIO / name)
    return audio[: int(seconds * SAMPLE_RATE)] if seconds else audio


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (it starts in seconds and idles at ~0.8 GB):
    the service and bulk tests run on it, as on a cluster of one machine."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def jfk_audio() -> np.ndarray:
    """jfk.flac, 11 s, as 16 kHz mono float32."""
    return _load("jfk.flac")


@pytest.fixture(scope="session")
def lecture_60s_audio() -> np.ndarray:
    """The first 60 s of physicsworks.flac (a lecture): two to three 30 s windows."""
    return _load("physicsworks.flac", 60.0)
