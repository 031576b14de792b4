"""The MAX model against openai-whisper on the same weights: components, then whole transcripts."""
from __future__ import annotations

import pytest

from maxwhisper.api import DecodeOptions
from maxwhisper.selfcheck import COMPONENTS, run_checks


@pytest.fixture(scope="session")
def selfcheck_results(max_tiny_en, openai_tiny_en):
    return {r.name: r for r in run_checks(max_tiny_en, openai_tiny_en)}


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_matches_reference(selfcheck_results, component):
    r = selfcheck_results[component]
    assert r.passed, f"{component}: max abs error {r.max_abs_err:g}, relative {r.rel_err:g} ({r.detail})"


def test_greedy_tokens_equal_on_jfk(max_tiny_en, openai_tiny_en, jfk_audio):
    ours = max_tiny_en.transcribe(jfk_audio, DecodeOptions())
    ref = openai_tiny_en.transcribe(jfk_audio, DecodeOptions())
    assert ours.tokens == ref.tokens
    assert [(s.start, s.end, s.text) for s in ours.segments] == [(s.start, s.end, s.text) for s in ref.segments]
    assert ours.backend == "max" and ours.device == "cpu" and ours.precision == "fp32"
    assert ours.timings.compile_s > 0 and ours.timings.encode_s > 0 and ours.timings.decode_s > 0


def test_greedy_tokens_equal_on_lecture_first_windows(max_tiny_en, openai_tiny_en, lecture_60s_audio):
    ours = max_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    ref = openai_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    assert len({s.seek for s in ref.segments}) >= 2  # really two windows
    assert ours.tokens == ref.tokens
    assert [s.seek for s in ours.segments] == [s.seek for s in ref.segments]


def test_few_row_attention_kernel_matches_numpy():
    """The Mojo kernel decoder steps use on the CPU: batch 2, rows attending 5, 101 and all 448 keys."""
    import numpy as np
    from max import driver
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from maxwhisper.graph.layers import few_row_attention, kernel_library

    b, h, n, s, dh = 2, 6, 3, 448, 64
    cpu = DeviceRef.CPU()
    types = [TensorType(DType.float32, shape, device=cpu) for shape in ([b, h, n, dh], [b, h, s, dh], [b, h, dh, s])]
    with Graph("few_row_attention_test", input_types=[*types, TensorType(DType.int64, [n], device=cpu)],
               custom_extensions=[kernel_library()]) as graph:
        graph.output(few_row_attention(*(v.tensor for v in graph.inputs)))
    model = InferenceSession(devices=[driver.CPU()]).load(graph)

    rng = np.random.default_rng(0)
    q, k, v_t = (rng.standard_normal(t.shape.static_dims, dtype=np.float32) for t in types)
    limit = np.array([5, 101, 448], np.int64)
    (out,) = model.execute(*(driver.Buffer.from_numpy(a) for a in (q, k, v_t, limit)))

    scores = np.einsum("bhnd,bhsd->bhns", q, k) / np.sqrt(dh)
    scores[..., np.arange(s)[None, :] >= limit[:, None]] = -np.inf
    p = np.exp(scores - scores.max(-1, keepdims=True))
    expected = np.einsum("bhns,bhds->bhnd", p / p.sum(-1, keepdims=True), v_t)
    np.testing.assert_allclose(out.to_numpy(), expected, atol=2e-6)


def test_few_row_attention_is_used_only_where_the_kernel_fits():
    from maxwhisper.graph.layers import few_row_attention_fits

    assert few_row_attention_fits(64, 1500) and few_row_attention_fits(16, 448)  # Whisper; the test checkpoint
    assert not few_row_attention_fits(20, 1500)  # head width not a multiple of the SIMD width
    assert not few_row_attention_fits(64, 3000)  # more keys than the kernel's score buffer


def test_kernel_library_is_compiled_once_and_a_broken_kernel_is_a_clear_error(tmp_path, monkeypatch):
    from maxwhisper.graph import layers

    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "cache"))
    package = layers.kernel_library()
    assert package.exists() and package.parent == tmp_path / "cache" / "maxwhisper"
    assert layers.kernel_library() == package and list(package.parent.iterdir()) == [package]

    broken = tmp_path / "kernels"
    broken.mkdir()
    (broken / "__init__.mojo").write_text("")
    (broken / "attention.mojo").write_text("def oops(:\n")
    monkeypatch.setattr(layers, "KERNELS", broken)
    with pytest.raises(RuntimeError, match="compiling the Mojo kernels"):
        layers.kernel_library()
    assert sorted(p.name for p in package.parent.iterdir()) == [package.name]  # no staging folder left
