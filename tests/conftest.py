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


@pytest.fixture
def emulated_device_graphs(monkeypatch):
    """A function that makes a portable model capture and replay its token steps as on a GPU,
    emulated on the CPU (which cannot capture): a capture that also runs the graph, as it may on a
    GPU, and a replay that writes into the captured outputs. It returns (the captured outputs by
    key, the keys replayed in turn)."""
    from maxwhisper.graph.device_steps import StepBufferPool

    def emulate(net):
        captured, replays = {}, []

        def capture(graph, key, inputs):
            captured[key] = graph.execute(*inputs)
            return captured[key]

        def replay(graph, key, inputs):
            replays.append(key)
            outputs = graph.execute(*inputs)
            for mine, new in zip(captured[key], outputs, strict=True):
                mine.inplace_copy_from(new)
            net.device.synchronize()  # the copies are queued: done before their sources go

        monkeypatch.setattr(net, "captures", True)
        monkeypatch.setattr(net, "capture", capture)
        monkeypatch.setattr(net, "replay", replay)
        # as MAX's: a key never captured frees nothing
        monkeypatch.setattr(net, "release", lambda graph, key: captured.pop(key, None))
        monkeypatch.setattr(net, "step_buffers", StepBufferPool(net))  # none captured yet
        return captured, replays

    return emulate


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
    from maxwhisper.cpu_features import has_bf16
    from maxwhisper.max_backend import MaxTranscriber

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


# --- the quick subset: `pytest -m quick` (docs/testing.md) ---------------------------------------
# A developer's edit-test loop: a few minutes at most on 2 cores with a warm MAX compile cache, and
# tests of every package (the core, graph, service, bulk, the showcase, the baselines, the
# benchmark). Chosen here by file and test name (a prefix), so that the test files stay as they are;
# a name that matches no test of its file fails the run, so that the subset does not rot unseen.
# Slow fixtures (a compile of another plan or precision, a torch model, Ray, the app's real models)
# keep a test of a listed file out.
SLOW_FIXTURES = {
    "max_tiny_en_portable",
    "max_tiny_en_each_plan",
    "max_tiny_en_int8",
    "max_tiny_en_bf16",
    "torch_tiny_en",
    "ray_local",
    "app_transcriptions",
    "jfk_run",
    "lecture_audio",
    "lecture_60s_audio",
}
QUICK_FILES = {  # file: the tests of it left out (the rest are in)
    "test_api.py": (),
    "test_app.py": (),
    "test_app_live.py": ("test_a_race_", "test_an_example_plays_as_the_microphone"),
    "test_audio.py": (),
    "test_bench.py": ("test_quick_end_to_end", "test_streaming_end_to_end"),
    "test_checkpoint.py": (),
    "test_cli.py": (
        "test_openai_json_two_files",
        "test_faster_",
        "test_batch_size_",
        "test_compare_table_",
        "test_gpu_compile_",
        "test_unsupported_precision_and_device",
        "test_no_kernels_prints_",
        "test_a_token_beyond_the_loaded_model",
        "test_bad_flag_values",
    ),
    "test_decoding.py": (),
    "test_gpu_path.py": (),
    "test_packaging.py": (),
    "test_realtime.py": (),
    "test_scoring.py": (),
    "test_service_inputs.py": (),
    "test_streaming.py": ("test_stream_command_prints_", "test_max_"),
    "test_tokenizer.py": (),
}
QUICK_PICKS = {  # file: the only tests of it in
    "test_baselines.py": (
        "test_manifest_reference_",
        "test_openai_precision_and_device_errors",
        "test_faster_precision_and_device_errors",
        "test_the_cuda_12_library_check_",
        "test_faster_refuses_a_pt_checkpoint",
        "test_registry_builds_both",
    ),
    "test_bulk.py": (
        "test_folders_are_searched_",
        "test_bad_inputs_are_refused_",
        "test_the_table_drops_",
        "test_progress_is_a_bar_",
        "test_max_workers_transcribe_several_files_",
        "test_an_unknown_model_is_refused_before_ray_starts",
        "test_an_output_that_cannot_be_a_folder",
    ),
    "test_max_model.py": (
        "test_greedy_tokens_equal_on_jfk_without_timestamps",
        "test_few_row_attention_is_used_only_",
        "test_few_row_linear_is_used_only_",
        "test_int8_quantization_is_per_output_channel",
        "test_kernel_library_copies_the_shipped_package",
    ),
    "test_service.py": (
        "test_replicas_that_ray_has_no_room_for_",
        "test_audio_and_options_are_refused_as_the_",
        "test_a_replica_warms_up_",
    ),
    "test_warm.py": ("test_warm_refuses_", "test_a_cpu_level_answers_"),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.path.name, []).append(item)
    stale = []
    for name, tests in by_file.items():
        left_out, picks = QUICK_FILES.get(name), QUICK_PICKS.get(name)
        if left_out is None and picks is None:
            continue
        names = [n for n in vars(tests[0].module) if n.startswith("test_")]  # all of them, however few run
        stale += [f"{name}::{p}" for p in left_out or picks or () if not any(n.startswith(p) for n in names)]
        for t in tests:
            listed = any(t.originalname.startswith(p) for p in left_out or picks or ())
            if (listed if picks is not None else not listed) and not SLOW_FIXTURES & set(t.fixturenames):
                t.add_marker(pytest.mark.quick)
    if stale:
        raise pytest.UsageError("tests/conftest.py's quick subset names tests that are gone: " + ", ".join(stale))
