"""The MAX model against openai-whisper on the same weights: components, then whole transcripts."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
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


def test_greedy_tokens_equal_on_jfk(max_tiny_en_each_plan, openai_tiny_en, jfk_audio):
    ours = max_tiny_en_each_plan.transcribe(jfk_audio, DecodeOptions())
    ref = openai_tiny_en.transcribe(jfk_audio, DecodeOptions())
    assert ours.tokens == ref.tokens
    assert [(s.start, s.end, s.text) for s in ours.segments] == [(s.start, s.end, s.text) for s in ref.segments]
    assert ours.backend == "max" and ours.device == "cpu" and ours.precision == "fp32"
    assert ours.timings.compile_s > 0 and ours.timings.encode_s > 0 and ours.timings.decode_s > 0


def test_greedy_tokens_equal_on_jfk_without_timestamps(max_tiny_en, openai_tiny_en, jfk_audio):
    """The step graph's token choice without the timestamp rule (timestamp_begin = n_vocab)."""
    options = DecodeOptions(without_timestamps=True)
    ours, ref = max_tiny_en.transcribe(jfk_audio, options), openai_tiny_en.transcribe(jfk_audio, options)
    assert ours.tokens == ref.tokens and ours.text == ref.text


def test_greedy_tokens_equal_on_lecture_first_windows(max_tiny_en_each_plan, openai_tiny_en, lecture_60s_audio):
    ours = max_tiny_en_each_plan.transcribe(lecture_60s_audio, DecodeOptions())
    ref = openai_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    assert len({s.seek for s in ref.segments}) >= 2  # really two windows
    assert ours.tokens == ref.tokens
    assert [s.seek for s in ours.segments] == [s.seek for s in ref.segments]


def _first_windows(*audios):
    """The log-Mel spectrograms [len(audios), 80, 3000] of each audio's first 30 s window, as the seek
    loop pads them."""
    from maxwhisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram

    return np.stack([log_mel_spectrogram(a, 80, padding=N_SAMPLES)[:, :N_FRAMES] for a in audios])


def _kernel_graph(name, input_types, build, weights=None):
    """A one-op CPU graph around one of our Mojo kernels, compiled. The runner returns the outputs,
    then the contents of the buffer inputs after the call (what the op wrote into them)."""
    from max import driver
    from max.engine import InferenceSession
    from max.graph import BufferType, Graph

    from maxwhisper.graph.kernel_package import kernel_library

    is_buffer = [isinstance(t, BufferType) for t in input_types]
    with Graph(name, input_types=input_types, custom_extensions=[kernel_library()]) as graph:
        outputs = build(*(v.buffer if buffer else v.tensor for v, buffer in zip(graph.inputs, is_buffer)))
        graph.output(*outputs)
    model = InferenceSession(devices=[driver.CPU()]).load(graph, weights_registry=weights.registry() if weights else {})

    def run(*arrays):
        inputs = [driver.Buffer.from_numpy(a.copy() if buffer else a) for a, buffer in zip(arrays, is_buffer)]
        outputs = [out.to_numpy() for out in model.execute(*inputs)]
        return outputs + [inp.to_numpy() for inp, buffer in zip(inputs, is_buffer) if buffer]

    return run


def test_few_row_attention_kernel_matches_numpy():
    """The Mojo kernel decoder steps use on the CPU: batch 2, rows attending 5, 101 and all 448 keys."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import few_row_attention

    b, h, n, s, dh = 2, 6, 3, 448, 64
    cpu = DeviceRef.CPU()
    types = [TensorType(DType.float32, shape, device=cpu) for shape in ([b, h, n, dh], [b, h, s, dh], [b, h, dh, s])]
    run = _kernel_graph(
        "few_row_attention_test",
        [*types, TensorType(DType.int64, [n], device=cpu)],
        lambda *inputs: [few_row_attention(*inputs)],
    )

    rng = np.random.default_rng(0)
    q, k, v_t = (rng.standard_normal(t.shape.static_dims, dtype=np.float32) for t in types)
    limit = np.array([5, 101, 448], np.int64)
    (out,) = run(q, k, v_t, limit)

    scores = np.einsum("bhnd,bhsd->bhns", q, k) / np.sqrt(dh)
    scores[..., np.arange(s)[None, :] >= limit[:, None]] = -np.inf
    p = np.exp(scores - scores.max(-1, keepdims=True))
    expected = np.einsum("bhns,bhds->bhnd", p / p.sum(-1, keepdims=True), v_t)
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_few_row_linear_kernel_is_the_float32_product_of_float16_weights():
    """`linear.mojo`: float16-stored weights give float32 products (against float64 numpy), with and
    without a bias, d_out not a multiple of its 4-row blocks; each output row is bit-identical
    whatever the number of input rows (1 or 5: the one-row path, pairs and an odd row)."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import WeightBank, few_row_linear

    rng = np.random.default_rng(0)
    d_out, d_in = 1030, 1536
    arrays = {
        "lin.weight": (rng.standard_normal((d_out, d_in)) * 0.05).astype(np.float16).astype(np.float32),
        "lin.bias": rng.standard_normal(d_out).astype(np.float32),
        "nobias.weight": (rng.standard_normal((d_out, d_in)) * 0.05).astype(np.float16).astype(np.float32),
    }
    cpu = DeviceRef.CPU()
    w = WeightBank(arrays, DType.float32, cpu)
    assert w.float16_exact("lin.weight") and w.float16_exact("nobias.weight") and not w.float16_exact("lin.bias")
    off_by_a_bit = WeightBank({"lin.weight": arrays["lin.weight"] + np.float32(1e-6)}, DType.float32, cpu)
    assert not off_by_a_bit.float16_exact("lin.weight")

    def build(x):
        return [few_row_linear(w, prefix)(x) for prefix in ("lin", "nobias")]

    run = _kernel_graph("few_row_linear_test", [TensorType(DType.float32, ["m", d_in], device=cpu)], build, w)
    assert {a.dtype for a in w.registry().values()} == {np.dtype(np.float16), np.dtype(np.float32)}

    x = rng.standard_normal((5, d_in)).astype(np.float32)
    five = run(x)
    for prefix, out in zip(("lin", "nobias"), five):
        expected = x.astype(np.float64) @ arrays[f"{prefix}.weight"].astype(np.float64).T + arrays.get(
            f"{prefix}.bias", 0
        )
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
    for row in range(5):
        for a, b in zip(run(x[row : row + 1]), five):
            np.testing.assert_array_equal(a[0], b[row])


@pytest.mark.parametrize("dh", [64, 80])
def test_encoder_attention_kernel_matches_numpy(dh):
    """`encoder_attention.mojo` against float64 numpy: batch 2, 2 heads of Dh 64 (Whisper's) or 80
    (five 16-dim value panels: a pair of them is left over one alone), T = 37 frames, which leaves
    the kernel's last 16-key panel and last work item partial; the AVX2 tile (6 rows x 1 panel) and
    the AVX-512 one (12 x 2: the 3 key panels are one pair and one alone) give the same numbers bit
    for bit, whatever this machine's own tile is."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import MACHINE_TILE, encoder_attention

    b, t, h = 2, 37, 2
    d = h * dh
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((b, t, 3 * d)).astype(np.float32)
    run = _kernel_graph(
        f"encoder_attention_test_{dh}",
        [TensorType(DType.float32, [b, "t", 3 * d], device=DeviceRef.CPU())],
        lambda x: [encoder_attention(x, h, tile) for tile in (MACHINE_TILE, (6, 1), (12, 2))],
    )
    out, avx2, avx512 = run(qkv)
    np.testing.assert_array_equal(avx2, out)
    np.testing.assert_array_equal(avx512, out)

    def heads(x):  # [B, T, d] -> [B, H, T, Dh]
        return x.astype(np.float64).reshape(b, t, h, dh).transpose(0, 2, 1, 3)

    q, k, v = (heads(part) for part in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    expected = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("n", [5, 50])
def test_cross_attention_kernel_matches_numpy(n, int8):
    """`cross_attention.mojo` (a prompt's cross-attention on the CPU kernels' plan) against float64
    numpy over the same keys and values: float32 ones, or int8 ones with a scale per key and per
    value (--precision int8), widened; batch 2, 3 heads of Dh 64, T = 37 frames (its last 16-key
    panel partial), n = 5 query rows (one work item per head) or 50 (two, the last partial); the
    AVX2 and AVX-512 tiles give the same numbers bit for bit."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import MACHINE_TILE, cross_attention, cross_attention_int8

    b, h, t, dh = 2, 3, 37, 64
    rng = np.random.default_rng(n)
    q = rng.standard_normal((b, h, n, dh)).astype(np.float32)
    cpu = DeviceRef.CPU()
    types = [TensorType(DType.float32, [b, h, "n", dh], device=cpu)]
    if int8:
        k = rng.integers(-127, 128, (b, h, t, dh)).astype(np.int8)
        v_t = rng.integers(-127, 128, (b, h, dh, t)).astype(np.int8)
        k_scales, v_scales = (rng.uniform(0.001, 0.03, (b, h, t)).astype(np.float32) for _ in range(2))
        inputs = [q, k, v_t, k_scales, v_scales]
        types += [
            TensorType(DType.int8, [b, h, t, dh], device=cpu),
            TensorType(DType.int8, [b, h, dh, t], device=cpu),
            TensorType(DType.float32, [b, h, t], device=cpu),
            TensorType(DType.float32, [b, h, t], device=cpu),
        ]
        keys = k.astype(np.float32) * k_scales[..., None]  # widened in float32, as the kernel does
        values = v_t.astype(np.float32) * v_scales[..., None, :]
    else:
        keys = rng.standard_normal((b, h, t, dh)).astype(np.float32)
        values = rng.standard_normal((b, h, dh, t)).astype(np.float32)
        inputs = [q, keys, values]
        types += [
            TensorType(DType.float32, [b, h, t, dh], device=cpu),
            TensorType(DType.float32, [b, h, dh, t], device=cpu),
        ]
    op = cross_attention_int8 if int8 else cross_attention
    run = _kernel_graph(
        f"cross_attention_test_{int8}",
        types,
        lambda *x: [op(*x, tile=tile) for tile in (MACHINE_TILE, (6, 1), (12, 2))],
    )
    out, avx2, avx512 = run(*inputs)
    np.testing.assert_array_equal(avx2, out)
    np.testing.assert_array_equal(avx512, out)

    keys, values = keys.astype(np.float64), values.astype(np.float64).transpose(0, 1, 3, 2)
    scores = q.astype(np.float64) @ keys.transpose(0, 1, 3, 2) / np.sqrt(dh)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(out, (p / p.sum(-1, keepdims=True)) @ values, rtol=0, atol=2e-6)


def _decoder_layer_arrays(rng, d: int) -> dict[str, np.ndarray]:
    """A decoder layer "blk" of width d as `decoder_layer_step` reads it: random weights that are
    float16 numbers (exact in its float16 copies), layer norms near 1."""
    from maxwhisper.graph.decoder import LAYER_STEP_VECTORS, LAYER_STEP_WEIGHTS

    shapes = {
        "attn.qkv": (3 * d, d),
        "attn.out": (d, d),
        "cross_attn.query": (d, d),
        "cross_attn.out": (d, d),
        "mlp.0": (4 * d, d),
        "mlp.2": (d, 4 * d),
    }
    arrays = {
        f"blk.{n}.weight": (rng.standard_normal(shapes[n]) * 0.2).astype(np.float16).astype(np.float32)
        for n in LAYER_STEP_WEIGHTS
    }
    for n in LAYER_STEP_VECTORS:
        linear = n.removesuffix(".bias")
        size = shapes[linear][0] if linear in shapes else d  # a linear's bias, else a layer norm's weight or bias
        arrays[f"blk.{n}"] = (rng.standard_normal(size) * 0.1 + (1 if n.endswith("ln.weight") else 0)).astype(
            np.float32
        )
    return arrays


@pytest.mark.parametrize("int8", [False, True])
def test_decoder_layer_step_kernel_matches_numpy(int8):
    """`decoder_layer.mojo`, one whole decoder block for one new token of each of 3 sequences at
    positions of their own, against float64 numpy: d 64 in 4 heads, caches whose unfilled
    positions hold NaN (read, they would show), cross-attention over 45 frames, or over a row's
    first 29 or 30 (a shorter window in a shared cache: the rest hold NaN). Each stepping row's
    new key and value land in its cache at its position and nothing else there changes; a row at
    a negative position sits the step out, its x and cache untouched. int8: the weights quantized
    per output row (`quantize_int8`), and the cross K/V int8 with a scale per key and per value
    (`decoder.cross_layout`), against numpy with those weights, keys and values."""
    from math import erf

    from max.dtype import DType
    from max.graph import BufferType, DeviceRef, TensorType

    from maxwhisper.graph.decoder import decoder_layer_step
    from maxwhisper.graph.layers import WeightBank
    from maxwhisper.graph.weights import quantize_int8

    d, h, s, t, b = 64, 4, 32, 45, 3
    dh = d // h
    rng = np.random.default_rng(0)
    arrays = _decoder_layer_arrays(rng, d)
    cpu = DeviceRef.CPU()
    w = WeightBank(arrays, DType.float32, cpu)
    kv = DType.int8 if int8 else DType.float32
    cross_types = [TensorType(kv, [b, h, t, dh], device=cpu), TensorType(kv, [b, h, dh, t], device=cpu)]
    cross_types += [TensorType(DType.float32, [b, h, t], device=cpu)] * 2 if int8 else []
    types = [
        TensorType(DType.float32, [b, d], device=cpu),
        BufferType(DType.float32, [b, h, s, dh], device=cpu),
        BufferType(DType.float32, [b, h, dh, s], device=cpu),
        *cross_types,
        TensorType(DType.int64, [b], device=cpu),
        TensorType(DType.int64, [b], device=cpu),
    ]
    run = _kernel_graph(
        f"decoder_layer_step_test{'_int8' if int8 else ''}",
        types,
        lambda x, ck, cv, *rest: [decoder_layer_step(w, "blk", x, ck, cv, list(rest[:-2]), rest[-2], rest[-1], int8)],
        w,
    )

    def ln(x, name):
        return (x - x.mean()) / np.sqrt(x.var() + 1e-5) * arrays[f"blk.{name}.weight"] + arrays[f"blk.{name}.bias"]

    def lin(x, name):
        weight = arrays[f"blk.{name}.weight"].astype(np.float64)
        if int8:
            q, scale = quantize_int8(arrays[f"blk.{name}.weight"])
            weight = q * scale[:, None].astype(np.float64)
        return weight @ x + arrays[f"blk.{name}.bias"]

    def attend(q, k, v):  # q [H, Dh], k and v [H, keys, Dh]
        scores = np.einsum("hd,hkd->hk", q, k) / np.sqrt(dh)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        return np.einsum("hk,hkd->hd", p / p.sum(-1, keepdims=True), v).ravel()

    x, cache_k, cache_v_t = (rng.standard_normal(t_.shape.static_dims).astype(np.float32) for t_ in types[:3])
    if int8:
        cross = [rng.integers(-127, 128, shape).astype(np.int8) for shape in ((b, h, t, dh), (b, h, dh, t))]
        cross += [rng.uniform(0.002, 0.02, (b, h, t)).astype(np.float32) for _ in range(2)]
        cross_k, cross_v_t = cross[0] * cross[2][..., None], cross[1] * cross[3][:, :, None, :]  # what they stand for
    else:
        cross = [rng.standard_normal(shape).astype(np.float32) for shape in ((b, h, t, dh), (b, h, dh, t))]
        cross_k, cross_v_t = cross
    for positions, attended in (([0, 5, 5], [t, t, t]), ([5, -1, 0], [30, 1, t]), ([-1, 3, 31], [t, 29, t])):
        ck, cv = cache_k.copy(), cache_v_t.copy()
        for i, pos in enumerate(positions):
            ck[i, :, max(pos, 0) :], cv[i, ..., max(pos, 0) :] = np.nan, np.nan
        given = [c.copy() for c in cross]
        for i, n in enumerate(attended):  # what a row does not attend to is never read
            if int8:
                given[2][i, :, n:], given[3][i, :, n:] = np.nan, np.nan
            else:
                given[0][i, :, n:], given[1][i, ..., n:] = np.nan, np.nan
        out, ck_after, cv_after = run(x, ck, cv, *given, np.array(positions, np.int64), np.array(attended, np.int64))

        for i, pos in enumerate(positions):
            if pos < 0:
                np.testing.assert_array_equal(out[i], x[i])
                np.testing.assert_array_equal(ck_after[i], ck[i])
                np.testing.assert_array_equal(cv_after[i], cv[i])
                continue
            y = x[i].astype(np.float64)
            q, k, v = np.split(lin(ln(y, "attn_ln"), "attn.qkv"), 3)
            keys = np.concatenate([cache_k[i, :, :pos], k.reshape(h, 1, dh)], axis=1)
            values = np.concatenate([cache_v_t[i, :, :, :pos].transpose(0, 2, 1), v.reshape(h, 1, dh)], axis=1)
            y = y + lin(attend(q.reshape(h, dh), keys, values), "attn.out")
            q = lin(ln(y, "cross_attn_ln"), "cross_attn.query").reshape(h, dh)
            n = attended[i]
            y = y + lin(attend(q, cross_k[i, :, :n], cross_v_t[i, ..., :n].transpose(0, 2, 1)), "cross_attn.out")
            hidden = lin(ln(y, "mlp_ln"), "mlp.0")
            y = y + lin(np.array([0.5 * a * (1 + erf(a / np.sqrt(2))) for a in hidden]), "mlp.2")
            np.testing.assert_allclose(out[i], y, rtol=0, atol=5e-5)
            np.testing.assert_allclose(ck_after[i, :, pos], k.reshape(h, dh), rtol=0, atol=1e-5)
            np.testing.assert_allclose(cv_after[i, :, :, pos], v.reshape(h, dh), rtol=0, atol=1e-5)
            others = np.arange(s) != pos  # the rest of the row's cache is as it was (NaN where unfilled)
            np.testing.assert_array_equal(ck_after[i, :, others], ck[i, :, others])
            np.testing.assert_array_equal(cv_after[i, ..., others], cv[i, ..., others])


def test_decoder_layer_step_rows_sharing_a_cache_give_one_token_a_call():
    """`decoder_layer_step` with 3 rows per cache row (a drafted run's exact pass: 3 new tokens of
    each of 2 sequences, at consecutive positions, each attending to those before it) gives bit for
    bit what one row a call gives each sequence alone: the same outputs and the same caches after
    (their unfilled positions NaN, read they would show). A sequence whose rows all sit out is
    untouched."""
    from max.dtype import DType
    from max.graph import BufferType, DeviceRef, TensorType

    from maxwhisper.graph.decoder import decoder_layer_step
    from maxwhisper.graph.layers import WeightBank

    d, h, s, t, k = 64, 4, 32, 45, 3
    dh = d // h
    rng = np.random.default_rng(1)
    cpu = DeviceRef.CPU()
    w = WeightBank(_decoder_layer_arrays(rng, d), DType.float32, cpu)
    types = [
        TensorType(DType.float32, ["rows", d], device=cpu),
        BufferType(DType.float32, ["c", h, s, dh], device=cpu),
        BufferType(DType.float32, ["c", h, dh, s], device=cpu),
        TensorType(DType.float32, ["c", h, t, dh], device=cpu),
        TensorType(DType.float32, ["c", h, dh, t], device=cpu),
        TensorType(DType.int64, ["rows"], device=cpu),
        TensorType(DType.int64, ["rows"], device=cpu),
    ]
    run = _kernel_graph(
        "decoder_layer_step_groups_test",
        types,
        lambda x, ck, cv, xk, xv, pos, keys: [decoder_layer_step(w, "blk", x, ck, cv, [xk, xv], pos, keys)],
        w,
    )
    starts, attended = np.array([5, 0]), np.array([t, 29])
    ck, cv = (
        rng.standard_normal((2, h, s, dh)).astype(np.float32),
        rng.standard_normal((2, h, dh, s)).astype(np.float32),
    )
    for c, start in enumerate(starts):
        ck[c, :, start:], cv[c, ..., start:] = np.nan, np.nan
    cross = [
        rng.standard_normal((2, h, t, dh)).astype(np.float32),
        rng.standard_normal((2, h, dh, t)).astype(np.float32),
    ]
    cross[0][1, :, 29:], cross[1][1, ..., 29:] = np.nan, np.nan
    x = rng.standard_normal((2 * k, d)).astype(np.float32)  # row c k + j: sequence c's token j

    positions = (starts[:, None] + np.arange(k)).ravel()
    together, ck_together, cv_together = run(x, ck, cv, *cross, positions, np.repeat(attended, k))
    for c in range(2):  # sequence c alone, one token a call
        alone_k, alone_v, own = ck[c : c + 1], cv[c : c + 1], [a[c : c + 1] for a in cross]
        for j in range(k):
            position, keys = np.array([starts[c] + j]), attended[c : c + 1]
            out, alone_k, alone_v = run(x[c * k + j : c * k + j + 1], alone_k, alone_v, *own, position, keys)
            np.testing.assert_array_equal(together[c * k + j], out[0])
        np.testing.assert_array_equal(ck_together[c], alone_k[0])
        np.testing.assert_array_equal(cv_together[c], alone_v[0])

    positions[k:] = -1
    out, ck_after, cv_after = run(x, ck, cv, *cross, positions, np.repeat(attended, k))
    np.testing.assert_array_equal(out[:k], together[:k])
    np.testing.assert_array_equal(out[k:], x[k:])
    np.testing.assert_array_equal(ck_after[1], ck[1])
    np.testing.assert_array_equal(cv_after[1], cv[1])


def test_packed_linear_kernel_matches_numpy():
    """`linear.mojo`'s encoder linear against float64 numpy: weights as 16-column panels, 67 rows
    (K = 1536), so the last tile is partial; plain, with GELU, with a residual; one row alone gives
    the same row; the AVX2 tile (6 rows x 1 panel) and the AVX-512 one (12 x 2: 3 panels are one
    pair and one alone) give the same numbers bit for bit, whatever this machine's own tile is."""
    from math import erf

    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import MACHINE_TILE, WeightBank, packed_linear, packed_linear_fits

    rng = np.random.default_rng(0)
    k, n, m = 1536, 48, 67
    arrays = {
        "lin.weight_t": rng.standard_normal((k, n)).astype(np.float32) * 0.05,
        "lin.bias": rng.standard_normal(n).astype(np.float32),
    }
    cpu = DeviceRef.CPU()
    w = WeightBank(arrays, DType.float32, cpu)

    tiles = (MACHINE_TILE, (6, 1), (12, 2))

    def build(x, residual):
        return [
            out
            for tile in tiles
            for out in (
                packed_linear(w, "lin", tile=tile)(x),
                packed_linear(w, "lin", gelu=True, tile=tile)(x),
                packed_linear(w, "lin", tile=tile)(x, residual),
            )
        ]

    run = _kernel_graph(
        "packed_linear_test",
        [TensorType(DType.float32, ["m", k], device=cpu), TensorType(DType.float32, ["m", n], device=cpu)],
        build,
        w,
    )
    assert w.registry()["lin.weight_t.panels"].shape == (n // 16, k, 16)

    x = rng.standard_normal((m, k)).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    plain, gelu, added, *other_tiles = run(x, residual)
    for i, out in enumerate(other_tiles):
        np.testing.assert_array_equal(out, (plain, gelu, added)[i % 3])
    expected = x.astype(np.float64) @ arrays["lin.weight_t"].astype(np.float64) + arrays["lin.bias"]
    np.testing.assert_allclose(plain, expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(gelu, 0.5 * expected * (1 + np.vectorize(erf)(expected / np.sqrt(2))), rtol=0, atol=2e-5)
    np.testing.assert_allclose(added, residual + expected, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(run(x[:1], residual[:1])[2], added[:1])  # one row: a tile of 1
    assert packed_linear_fits(384) and packed_linear_fits(1536) and not packed_linear_fits(100)


def _quantized_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [M, K] as `linear_int8.mojo` quantizes it per row: x ~ scale (q - zero), q uint8 over the
    row's range with 0 in it -> q (int64), scale [M, 1], zero [M, 1]."""
    lo, hi = np.minimum(x.min(1, keepdims=True), 0), np.maximum(x.max(1, keepdims=True), 0)
    scale = np.where(hi > lo, (hi - lo) / np.float32(255), np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / scale).astype(np.float32)
    zero = np.clip(np.round(-lo * inv), 0, 255)
    return np.clip(np.round(x * inv) + zero, 0, 255).astype(np.int64), scale, zero.astype(np.int64)


def test_packed_linear_int8_kernel_is_the_exact_int8_product():
    """`linear_int8.mojo` against numpy's int8 arithmetic: the weight quantized per column
    (`quantize_int8`), x per row as the kernel does (uint8 with a scale and a zero point), the
    products summed exactly: within float32 rounding of s_x s_w (sum (q_x - z) q_w) + b computed in
    float64, plain, with GELU and with a residual; 67 rows (a partial tile), K 1536, 3 panels (a
    pair and one alone). The machine's tile, the AVX2 one (4 rows x 1 panel) and the AVX-512 VNNI
    one (12 x 2), with VNNI where this CPU has it and with the instructions of a CPU without it,
    give the same bits, as do AMX tiles where the process may run them (elsewhere `amx` runs the
    machine's tile), plain, with GELU and with a residual; and the result is within 1 % of the
    float32 product's largest value."""
    from math import erf

    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.cpu_features import amx_permitted
    from maxwhisper.graph.layers import MACHINE_TILE, WeightBank, packed_linear_int8
    from maxwhisper.graph.weights import quantize_int8

    rng = np.random.default_rng(0)
    k, n, m = 1536, 48, 67
    arrays = {
        "lin.weight_t": rng.standard_normal((k, n)).astype(np.float32) * 0.05,
        "lin.bias": rng.standard_normal(n).astype(np.float32),
    }
    w = WeightBank(arrays, DType.float32, DeviceRef.CPU())
    variants = [(MACHINE_TILE, True), ((4, 1), True), ((12, 2), False), ((4, 1), False)]  # (tile, emulate)

    def build(x, residual):
        machine = [
            packed_linear_int8(w, "lin")(x),
            packed_linear_int8(w, "lin", gelu=True)(x),
            packed_linear_int8(w, "lin")(x, residual),
        ]
        tiles = [
            packed_linear_int8(w, "lin", amx=amx)(x),
            packed_linear_int8(w, "lin", gelu=True, amx=amx)(x),
            packed_linear_int8(w, "lin", amx=amx)(x, residual),
        ]
        return (
            machine
            + tiles
            + [packed_linear_int8(w, "lin", tile=tile, emulate=emulate)(x) for tile, emulate in variants]
        )

    amx = amx_permitted()
    cpu = DeviceRef.CPU()
    run = _kernel_graph(
        f"packed_linear_int8_test_{amx}",
        [TensorType(DType.float32, ["m", k], device=cpu), TensorType(DType.float32, ["m", n], device=cpu)],
        build,
        w,
    )
    assert w.registry()["lin.weight_t.int8_panels"].shape == (n // 16, k // 4, 16, 4)

    x = (rng.standard_normal((m, k)) + 0.3).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    plain, gelu, added, plain_tiles, gelu_tiles, added_tiles, *others = run(x, residual)
    for out in others + [plain_tiles]:
        np.testing.assert_array_equal(out, plain)
    np.testing.assert_array_equal(gelu_tiles, gelu)
    np.testing.assert_array_equal(added_tiles, added)

    q_w, s_w = quantize_int8(arrays["lin.weight_t"].T)
    q_w = q_w.T
    q_x, s_x, zero = _quantized_rows(x)
    expected = (s_x.astype(np.float64) * s_w) * ((q_x - zero) @ q_w.astype(np.int64)) + arrays["lin.bias"]
    top = np.abs(expected).max()
    np.testing.assert_allclose(plain, expected, rtol=0, atol=2e-6 * top)
    np.testing.assert_allclose(
        gelu, 0.5 * expected * (1 + np.vectorize(erf)(expected / np.sqrt(2))), rtol=0, atol=2e-6 * top
    )
    np.testing.assert_allclose(added, residual + expected, rtol=0, atol=2e-6 * top)
    float_product = x.astype(np.float64) @ arrays["lin.weight_t"] + arrays["lin.bias"]
    assert np.abs(plain - float_product).max() < 0.01 * np.abs(float_product).max()


def test_few_row_linear_int8_kernel_is_the_float32_product_of_int8_weights():
    """`few_row_linear_int8`: int8 weights with a scale per row, widened to float32 in registers:
    (x @ q^T) s + b against float64 numpy, d_out not a multiple of its 4-row blocks; each output
    row bit-identical whatever the number of input rows (1 or 5)."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import WeightBank, few_row_linear_int8
    from maxwhisper.graph.weights import quantize_int8

    rng = np.random.default_rng(0)
    d_out, d_in = 1030, 1536
    arrays = {
        "lin.weight": (rng.standard_normal((d_out, d_in)) * 0.05).astype(np.float32),
        "lin.bias": rng.standard_normal(d_out).astype(np.float32),
    }
    cpu = DeviceRef.CPU()
    w = WeightBank(arrays, DType.float32, cpu)
    run = _kernel_graph(
        "few_row_linear_int8_test",
        [TensorType(DType.float32, ["m", d_in], device=cpu)],
        lambda x: [few_row_linear_int8(w, "lin")(x)],
        w,
    )
    q, scale = quantize_int8(arrays["lin.weight"])
    assert w.registry()["lin.weight.int8"].dtype == np.int8

    x = rng.standard_normal((5, d_in)).astype(np.float32)
    (five,) = run(x)
    expected = (x.astype(np.float64) @ q.astype(np.float64).T) * scale + arrays["lin.bias"]
    np.testing.assert_allclose(five, expected, rtol=0, atol=2e-5)
    for row in range(5):
        np.testing.assert_array_equal(run(x[row : row + 1])[0][0], five[row])


def test_vocab_projection_int4_kernel_is_int8_near_the_top_and_the_4_bit_product_elsewhere():
    """`vocab_projection_int4` against float64 numpy: each logit is either `few_row_linear_int8`'s
    bit for bit, or the 4-bit pass's (x quantized per row to int8 times the 4-bit weights with their
    group scales); every logit the 4-bit pass puts within the margin of the row's largest is the
    int8 one, and so is the argmax; N not a multiple of the 16-row panels; a row's logits the same alone as among 3."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import INT4_GROUP, WeightBank, few_row_linear_int8, vocab_projection_int4
    from maxwhisper.graph.weights import quantize_int4_groups

    rng = np.random.default_rng(0)
    n, k, margin = 5003, 384, 6.0
    arrays = {"proj.weight": (rng.standard_normal((n, k)) * 0.05).astype(np.float32)}
    cpu = DeviceRef.CPU()
    w = WeightBank(arrays, DType.float32, cpu)
    types = [TensorType(DType.float32, ["m", k], device=cpu)]
    run = _kernel_graph("vocab_projection_int4_test", types, lambda x: [vocab_projection_int4(w, "proj")(x)], w)
    x = (rng.standard_normal((3, k)) * 3).astype(np.float32)
    x[1, :40] *= 4  # a row with a few large values, as a layer norm's output has
    reference = WeightBank(arrays, DType.float32, cpu, copies=w.copies)  # a graph's weights are its own
    (int8,) = _kernel_graph(
        "vocab_projection_int8_reference", types, lambda x: [few_row_linear_int8(reference, "proj")(x)], reference
    )(x)
    (three,) = run(x)

    q4, group_scales = quantize_int4_groups(arrays["proj.weight"], INT4_GROUP)
    weights4 = ((q4.astype(np.float64) - 8).reshape(n, -1, INT4_GROUP) * group_scales[..., None]).reshape(n, k)
    x_scale = np.abs(x).max(axis=1, keepdims=True).astype(np.float32) / np.float32(127)
    coarse = (np.rint(x / x_scale).astype(np.float64) @ weights4.T) * x_scale
    exact = three == int8
    np.testing.assert_allclose(three[~exact], coarse[~exact], rtol=1e-5, atol=1e-4)
    assert np.abs(coarse - int8).max() < margin / 2  # here, as on Whisper's logits, well within the margin
    near_top = coarse >= coarse.max(axis=1, keepdims=True) - margin + 1e-3  # by the 4-bit pass
    assert exact[near_top].all() and near_top.sum(axis=1).min() >= 1
    assert (~exact).sum() > 0.9 * exact.size  # most logits are the 4-bit pass's
    np.testing.assert_array_equal(three.argmax(axis=1), int8.argmax(axis=1))
    for row in range(3):
        np.testing.assert_array_equal(run(x[row : row + 1])[0][0], three[row])


def test_vocab_draft_int4_searches_the_special_rows_and_the_nearest_clusters():
    """`vocab_draft_int4` against `vocab_projection_int4` on a whole vocabulary's shape: a row's
    finite logits are those of the special rows and of the DRAFT_CLUSTERS clusters whose centroids
    score highest against it, -inf elsewhere; where the full projection's largest 4-bit logit lies
    among them, they are the full projection's bit for bit, its argmax included."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import DRAFT_CLUSTERS, TEXT_TOKENS, WeightBank, vocab_draft_int4, vocab_projection_int4

    rng = np.random.default_rng(1)
    n, k = 51864, 384
    arrays = {"proj.weight": (rng.standard_normal((n, k)) * 0.05).astype(np.float32)}
    cpu = DeviceRef.CPU()
    types = [TensorType(DType.float32, ["m", k], device=cpu)]
    full_bank, draft_bank = WeightBank(arrays, DType.float32, cpu), WeightBank(arrays, DType.float32, cpu)
    full = _kernel_graph("vocab_full_test", types, lambda x: [vocab_projection_int4(full_bank, "proj")(x)], full_bank)
    draft = _kernel_graph("vocab_draft_test", types, lambda x: [vocab_draft_int4(draft_bank, "proj")(x)], draft_bank)
    rows, starts, centroids, *_ = draft_bank.copies["clusters", "proj.weight"]
    picks = [7, 20000, 50000, TEXT_TOKENS + 100]  # a state near each row: it is the top, in its group
    x = (arrays["proj.weight"][picks] * 40 + rng.standard_normal((4, k)) * 0.5).astype(np.float32)
    (exact,), (drafted,) = full(x), draft(x)
    for r in range(4):
        best = 1 + np.argsort(-(centroids[1:] @ x[r]), kind="stable")[:DRAFT_CLUSTERS]
        searched = np.concatenate([rows[starts[g] * 16 : starts[g + 1] * 16] for g in [0, *best]])
        searched = np.sort(searched[searched >= 0])
        assert len(searched) == len(np.unique(searched))
        np.testing.assert_array_equal(np.flatnonzero(drafted[r] != -np.inf), searched)
        assert np.isfinite(drafted[r, searched]).all()
        assert exact[r].argmax() == picks[r] == drafted[r].argmax()
        np.testing.assert_array_equal(drafted[r, searched], exact[r, searched])
    assert (starts[1] - starts[0]) * 16 >= n - TEXT_TOKENS and set(rows[rows >= 0]) == set(range(n))
    (alone,) = draft(x[2:3])
    np.testing.assert_array_equal(alone[0], drafted[2])
    broken = x[:2].copy()
    broken[1, 5] = np.nan  # a NaN state still searches distinct groups, and its neighbour is untouched
    (with_nan,) = draft(broken)
    np.testing.assert_array_equal(with_nan[0], drafted[0])


def test_int8_quantization_is_per_output_channel():
    """`quantize_int8`: each output channel's (row's) largest |w| becomes 127, every weight is
    within half a step of its scale, an all-zero row stays zero."""
    from maxwhisper.graph.weights import quantize_int8

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 40)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    w[3] = 0
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.shape == (6,) and scale.dtype == np.float32
    assert (np.abs(q).max(axis=1) == [127, 127, 127, 0, 127, 127]).all()
    assert (np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 * (1 + 1e-6)).all()


def test_cross_layout_kernel_lays_out_and_quantizes_every_layers_keys_and_values():
    """`cross_layout`, how the encoder graph stores the cross K/V from its one projection of every
    layer's keys and values: K [L, B, H, T, Dh] and V^T [L, B, H, Dh, T] as they are in float32; in
    int8 each key's and each value's Dh numbers as `quantize_int8` quantizes a row, its scale beside
    it; an all-zero key is 0 with scale 1. `cross_int8` (a float32 plan's drafts' copy) makes the
    same int8 numbers from the float32 layout."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import cross_int8_kernel, cross_layout_kernel
    from maxwhisper.graph.weights import quantize_int8

    layers, b, t, h, dh = 2, 2, 37, 3, 16
    rng = np.random.default_rng(0)
    kv = (rng.standard_normal((b, t, layers * 2 * h * dh)) * rng.uniform(0.1, 10, (b, t, 1))).astype(np.float32)
    kv[1, 5, 2 * h * dh : 2 * h * dh + dh] = 0  # layer 1's first head's key at t = 5, batch 1
    # [B, T, L, 2, H, Dh] -> keys [L, B, H, T, Dh], values [L, B, H, T, Dh]
    split = kv.reshape(b, t, layers, 2, h, dh).transpose(3, 2, 0, 4, 1, 5)
    types = [TensorType(DType.float32, ["b", "t", kv.shape[2]], device=DeviceRef.CPU())]
    k, v_t = _kernel_graph("cross_layout_test", types, lambda x: cross_layout_kernel(x, layers, h, False))(kv)
    np.testing.assert_array_equal(k, split[0])
    np.testing.assert_array_equal(v_t, split[1].transpose(0, 1, 2, 4, 3))
    run = _kernel_graph("cross_layout_int8_test", types, lambda x: cross_layout_kernel(x, layers, h, True))
    q_key, q_value_t, s_key, s_value = run(kv)
    for q, scale, rows in ((q_key, s_key, split[0]), (q_value_t.transpose(0, 1, 2, 4, 3), s_value, split[1])):
        expected_q, expected_scale = quantize_int8(rows.reshape(-1, dh))
        assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == rows.shape[:-1]
        np.testing.assert_array_equal(scale.ravel(), expected_scale)
        np.testing.assert_array_equal(q.reshape(expected_q.shape), expected_q)
    assert s_key[1, 1, 0, 5] == 1 and (q_key[1, 1, 0, 5] == 0).all()
    float_types = [TensorType(DType.float32, a.shape, device=DeviceRef.CPU()) for a in (k, v_t)]
    copied = _kernel_graph("cross_int8_test", float_types, cross_int8_kernel)(k, v_t)
    for ours, theirs in zip(copied, (q_key, q_value_t, s_key, s_value), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _mojo(command: str, program: str, *options: str) -> str:
    """`mojo COMMAND OPTIONS -I maxwhisper/graph tests/PROGRAM` (asserting it succeeds): its stdout."""
    from pathlib import Path

    from mojo.run import subprocess_run_mojo

    root = Path(__file__).resolve().parents[1]
    done = subprocess_run_mojo(
        [command, *options, "-I", str(root / "maxwhisper" / "graph"), str(root / "tests" / program)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _tile_assembly(program: str, cpu: str, tmp_path) -> str:
    """tests/`program` compiled to assembly for `cpu` (`mojo build --emit asm --target-cpu`; nothing
    runs, so this machine's own ISA does not matter)."""
    asm = tmp_path / f"{cpu}.s"
    _mojo("build", program, "--emit", "asm", "--target-cpu", cpu, "-o", str(asm))
    return asm.read_text()


def test_fast_exp_is_float32_exact_to_a_few_units():
    """`exp_nonpositive`, the softmax exps of int8's attention kernels (tests/exp_accuracy.mojo, run):
    over x in [-87, 0] within 1.2e-7 of float64's exp (float32 rounds to 6e-8), exp(0) exactly 1,
    and x below -87 gives exp(-87), a normal float32."""
    worst, at_zero, below = (float(line) for line in _mojo("run", "exp_accuracy.mojo").split()[-3:])
    assert worst < 1.2e-7
    assert at_zero == 1.0
    assert below == pytest.approx(np.exp(-87.0), rel=1e-6)


SPILL = r"%[yz]mm\d+, -?\d*\(%r[sb]p\)|\(%r[sb]p\), %[yz]mm"  # a vector register stored to or loaded from the stack


@pytest.mark.parametrize("cpu, register, fmas", [("haswell", "ymm", 12), ("skylake-avx512", "zmm", 24)])
def test_encoder_tile_fills_the_target_s_vector_registers(cpu, register, fmas, tmp_path):
    """`packed_linear`'s tile as the kernels pick it for a CPU, compiled for an AVX2 and an AVX-512
    one (tests/tile_asm.mojo): its loop is `fmas` FMAs on `register`s (6 rows x 2 ymm, 12 rows x 2
    zmm), and no vector register is spilled to the stack."""
    import re

    code = _tile_assembly("tile_asm.mojo", cpu, tmp_path)
    found = re.findall(r"vfmadd\w+\s+%(\w+), %(\w+), %(\w+)", code)
    assert len(found) == fmas and all(operand.startswith(register) for fma in found for operand in fma), found
    assert not re.search(SPILL, code), "a vector register spilled"


def test_amx_kernels_compile_to_tile_instructions(tmp_path):
    """The int8 linears' and the bf16 attention's AMX paths (tests/tile_amx_asm.mojo), compiled for
    a CPU with AMX whatever this machine is: tile configuration and release around `tdpbusd` and
    `tdpbf16ps` on tiles, and the tiles' loads and stores."""
    code = _tile_assembly("tile_amx_asm.mojo", "sapphirerapids", tmp_path)
    for instruction in ("ldtilecfg", "tilerelease", "tdpbusd", "tdpbf16ps", "tileloadd", "tilestored", "tilezero"):
        assert instruction in code, instruction


@pytest.mark.parametrize(
    "cpu, instruction, register, count",
    [
        ("haswell", "vpmaddwd", "ymm", 10),  # AVX2: 5 rows x 2 ymm (8 columns' pairs), a runtime loop per 8 columns
        ("skylake-avx512", "vpmaddwd", "zmm", 24),  # AVX-512 without VNNI: 12 rows x 2 zmm (16 columns' pairs)
        ("alderlake", "vpdpbusd", "ymm", 12),  # AVX-VNNI: 6 rows x 2 ymm
        ("znver4", "vpdpbusd", "zmm", 24),  # AVX-512 VNNI: 12 rows x 2 zmm
    ],
)
def test_int8_encoder_tile_uses_the_target_s_byte_dot_product(cpu, instruction, register, count, tmp_path):
    """`packed_linear_int8`'s tile as the kernels pick it for a CPU (tests/tile_int8_asm.mojo): with
    VNNI its loop is `vpdpbusd` on every accumulator, without it one `vpmaddwd` per accumulator and
    no `vpdpbusd` nor `vpmaddubsw`; no vector register is spilled to the stack in the loop."""
    code = _tile_assembly("tile_int8_asm.mojo", cpu, tmp_path)
    assert_byte_dot_products(code, instruction, register, count)
    assert instruction == "vpdpbusd" or "vpmaddubsw" not in code


def assert_byte_dot_products(code: str, instruction: str, register: str, count: int) -> None:
    """The assembly has `count` `instruction`s, all on `register`s, `vpdpbusd` only if that is the
    instruction, and no vector register spilled to the stack in the blocks that hold them (a tile's
    sums may then go through a buffer on the stack, as `madd_tile`'s do)."""
    import re

    found = re.findall(rf"{instruction}\s+%(\w+), %(\w+), %(\w+)", code)
    assert len(found) == count and all(operand.startswith(register) for op in found for operand in op), found
    assert instruction == "vpdpbusd" or "vpdpbusd" not in code
    loops = [block for block in re.split(r"\n\.LBB\w+:", code) if instruction in block]
    assert not any(re.search(SPILL, block) for block in loops), "a vector register spilled"


@pytest.mark.parametrize(
    "cpu, instruction, register, count",
    [
        ("haswell", "vpmaddubsw", "ymm", 4),  # AVX2: 1 panel, 2 accumulators of 2 ymm, one vpmaddubsw each
        ("skylake-avx512", "vpmaddubsw", "zmm", 8),  # AVX-512 without VNNI: 4 panels x 2 zmm accumulators
        ("alderlake", "vpdpbusd", "ymm", 4),  # AVX-VNNI: 1 panel x 2 accumulators of 2 ymm
        ("znver4", "vpdpbusd", "zmm", 8),  # AVX-512 VNNI: 4 panels x 2 zmm
    ],
)
def test_vocab_projection_first_pass_uses_the_target_s_byte_dot_product(cpu, instruction, register, count, tmp_path):
    """`vocab_projection_int4`'s 4-bit pass as the kernel picks it for a CPU
    (tests/vocab_int4_asm.mojo): `count` byte dot products on `register`s per 8 weights of its
    panels (VNNI's `vpdpbusd`, else `vpmaddubsw` and no `vpdpbusd`), no vector register spilled."""
    assert_byte_dot_products(_tile_assembly("vocab_int4_asm.mojo", cpu, tmp_path), instruction, register, count)


@pytest.mark.parametrize("choice", ["greedy_choice", "greedy_choice_ops", "draft"])
def test_greedy_choice_equals_the_host_decoding_path(choice):
    """The token the step graph picks, by the CPU kernel (`greedy.mojo`) and by MAX's ops (the
    portable plan's, a GPU's), against decoding.py's own classes on the same logits: suppression
    mask, ApplyTimestampRules' probability rule, GreedyDecoder at T=0. "draft": the kernel without
    the log probability (a drafted run's steps): the same tokens, log probabilities 0."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.decoding import ApplyTimestampRules, GreedyDecoder
    from maxwhisper.graph import layers
    from maxwhisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(False)
    v, ts = 51864, tokenizer.timestamp_begin
    cpu = DeviceRef.CPU()
    run = _kernel_graph(
        f"{choice}_test",
        [
            TensorType(DType.float32, ["b", "k", v], device=cpu),
            TensorType(DType.float32, ["b", v], device=cpu),
            TensorType(DType.int64, ["b"], device=cpu),
        ],
        partial(layers.greedy_choice, logprob=False) if choice == "draft" else getattr(layers, choice),
    )

    class ProbabilityRuleOnly(ApplyTimestampRules):  # the masks come from `suppress` here
        def suppress(self, logits, tokens):
            pass

    rule = ProbabilityRuleOnly(tokenizer, 1, None)
    rng = np.random.default_rng(0)
    rule_fired = ulps = 0
    for trial in range(60):
        b = 1 + trial % 3
        logits = (rng.standard_normal((b, 2, v)) * 3).astype(np.float32)
        logits[:, :, ts:] += rng.uniform(-6, 4)  # timestamps sometimes more probable than any text token
        suppress = np.zeros((b, v), np.float32)
        suppress[:, rng.integers(0, v, 100)] = -np.inf
        spans = [slice(0, 0), slice(ts, None), slice(None, tokenizer.eot), slice(ts, ts + 700)]
        suppress[:, spans[trial % 4]] = -np.inf
        timestamp_begin = ts if trial % 5 else v  # v: without timestamps
        tokens, logprobs = run(logits, suppress, np.full(b, timestamp_begin, np.int64))

        x = logits[:, -1] + suppress
        parts = rule.apply(x, np.zeros((b, 1), np.int64)) if timestamp_begin == ts else None
        rule_fired += parts is None and timestamp_begin == ts
        expected_logprobs = np.zeros(b, np.float32)
        expected, _ = GreedyDecoder(0.0, tokenizer.eot, rng).update(
            np.zeros((b, 1), np.int64), x, expected_logprobs, parts
        )
        np.testing.assert_array_equal(tokens, expected[:, -1])
        if choice == "draft":
            assert (logprobs == 0).all()
            continue
        # the kernel's exps are float32's, summed in float64 as numpy's float64 exps are: an ulp or two
        np.testing.assert_allclose(logprobs, expected_logprobs, rtol=1e-6, atol=3e-7)
        ulps += int((logprobs != expected_logprobs).sum())
    assert rule_fired >= 10 and ulps < 60  # both branches ran; mostly bit-equal

    tokens, logprobs = run(logits, suppress, np.full(len(logits), -1, np.int64))  # skipped: calls that want logits only
    assert (tokens == -1).all() and (logprobs == 0).all()

    # one timestamp_begin per sequence (decodings of different requests stepping together) on the last
    # trial's 3 sequences: each row is chosen as it is alone
    per_row = np.array([ts, v, -1], np.int64)
    tokens, logprobs = run(logits, suppress, per_row)
    for i, row_ts in enumerate(per_row):
        alone = run(logits[i : i + 1], suppress[i : i + 1], per_row[i : i + 1])
        assert (tokens[i], logprobs[i]) == (alone[0][0], alone[1][0])
        assert (tokens[i] == -1) == (row_ts < 0)


def test_choice_in_the_step_graph_equals_the_host_path(max_tiny_en, lecture_60s_audio):
    """Greedy decoding with the token picked in the step graph (the CPU default) and with the
    logits brought to the host and filtered there give the same windows."""
    from maxwhisper.graph.model import MaxChoosingInference, MaxInference

    net = max_tiny_en.net
    assert isinstance(net.inference(), MaxChoosingInference)
    on_device = max_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    net.inference = lambda: MaxInference(net)
    try:
        on_host = max_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    finally:
        del net.inference
    assert on_device.tokens == on_host.tokens
    for a, b in zip(on_device.segments, on_host.segments, strict=True):
        assert (a.start, a.end, a.text) == (b.start, b.end, b.text)
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-6)


@pytest.mark.parametrize("plan", ["cpu-kernels", "portable"])
def test_greedy_runs_give_the_tokens_of_one_step_a_call(plan, request, jfk_audio, lecture_60s_audio, monkeypatch):
    """Greedy decoding in runs of steps (the token run graph, the logit filters' rules in it) gives
    the tokens and log probabilities of one step a call, with timestamps and without. Both plans
    take 8 steps a call; the CPU kernels' plan only once its run graph is ready (`compile_rest`), so
    that its compile never falls on a transcription."""
    from maxwhisper.graph.model import MaxChoosingInference
    from maxwhisper.max_backend import MaxTranscriber

    # a model of its own: its compile_rest readies the run graph, which the session's model never has
    model = (
        request.getfixturevalue("max_tiny_en_portable")
        if plan == "portable"
        else MaxTranscriber("tiny.en", device="cpu")
    )
    net = model.net
    runs = []
    original = MaxChoosingInference.greedy_run
    monkeypatch.setattr(MaxChoosingInference, "greedy_run", lambda *a: runs.append(1) or original(*a))
    if plan == "cpu-kernels":
        model.transcribe(jfk_audio, DecodeOptions())
        assert not runs and "token_run" not in net.graphs
        assert "token_run" in [name for name, _ in model.compile_rest()]
    for audio, options in (
        (lecture_60s_audio, DecodeOptions()),
        (jfk_audio, DecodeOptions(without_timestamps=True)),
    ):
        results = {}
        for in_runs in (True, False):
            monkeypatch.setattr(net, "runs", in_runs)
            before = len(runs)
            results[in_runs] = model.transcribe(audio, options)
            assert (len(runs) > before) == in_runs
        assert results[True].tokens == results[False].tokens
        for a, b in zip(results[True].segments, results[False].segments, strict=True):
            assert (a.text, a.avg_logprob, a.compression_ratio) == (b.text, b.avg_logprob, b.compression_ratio)


def test_a_drafted_run_keeps_its_steps_up_to_the_first_overruled_draft():
    """`checked_steps`: every step where each live row's draft is its check; else up to the first
    step a live row's check overruled, that one included (its check followed standing tokens). A row
    whose token before the run was eot, or whose check was eot at an earlier step, has ended: its
    drafts after that are not read."""
    from maxwhisper.graph.model import checked_steps

    eot, live = 9, np.array([0, 0])
    checked = np.array([[1, 2, 3, 4], [5, 9, 6, 7]])  # row 1 ends at step 1
    assert checked_steps(checked.copy(), checked, live, eot) == 4
    overruled = checked.copy()
    overruled[0, 2] = 8
    assert checked_steps(overruled, checked, live, eot) == 3
    overruled[0, 0] = 8
    assert checked_steps(overruled, checked, live, eot) == 1
    assert checked_steps(overruled, checked, np.array([9, 0]), eot) == 4  # row 0 had ended before the run
    after_the_end = checked.copy()
    after_the_end[1, 3] = 8
    assert checked_steps(after_the_end, checked, live, eot) == 4
    for draft in (8, 9):  # an eot checked but not drafted, a text token checked where eot was drafted
        wrong_end = checked.copy()
        wrong_end[1, 1 if draft == 8 else 0] = draft
        assert checked_steps(wrong_end, checked, live, eot) == (2 if draft == 8 else 1)


def test_drafts_overruled_at_every_step_still_give_the_tokens_of_one_step_a_call(
    jfk_audio, lecture_60s_audio, monkeypatch
):
    """The fp32 plan's runs draft from a 4-bit copy of the output projection and check the drafts
    against the exact one (`ExecutionPlan.drafts_runs`). With a scrambled copy, nearly every draft is
    wrong: the runs keep one checked step at a time and still give single steps' tokens and log
    probabilities, with the timestamp rules, and in a batch whose rows end apart."""
    from maxwhisper.decoding import decode
    from maxwhisper.graph import layers
    from maxwhisper.graph import model as graph_model
    from maxwhisper.max_backend import MaxTranscriber

    def scrambled(w, group):
        q, scales = quantize(w, group)
        return q, np.random.default_rng(0).permutation(scales)

    quantize = layers.quantize_int4_groups
    monkeypatch.setattr(layers, "quantize_int4_groups", scrambled)
    kept, last_tokens, lasts = [], [], []
    checked_steps = graph_model.checked_steps

    def counted(drafted, checked, last, eot):
        lasts.append(last.copy())
        kept.append(checked_steps(drafted, checked, last, eot))
        return kept[-1]

    def run(self, tokens, *args):
        last_tokens.append(tokens[:, -1].copy())
        return greedy_run(self, tokens, *args)

    greedy_run = graph_model.MaxChoosingInference.greedy_run
    monkeypatch.setattr(graph_model, "checked_steps", counted)
    monkeypatch.setattr(graph_model.MaxChoosingInference, "greedy_run", run)
    model = MaxTranscriber("tiny.en", device="cpu")
    assert model.net.plan.drafts_runs
    list(model.compile_rest())
    mels = _first_windows(jfk_audio, lecture_60s_audio)
    results, batch = {}, {}
    for in_runs in (True, False):
        monkeypatch.setattr(model.net, "runs", in_runs)
        results[in_runs] = model.transcribe(jfk_audio, DecodeOptions())
        batch[in_runs] = [(r.tokens, r.avg_logprob) for r in decode(model.net, mels, language="en")]
    assert results[True].tokens == results[False].tokens
    for a, b in zip(results[True].segments, results[False].segments, strict=True):
        assert (a.text, a.avg_logprob, a.compression_ratio) == (b.text, b.avg_logprob, b.compression_ratio)
    assert batch[True] == batch[False]
    assert len(kept) >= 100 and kept.count(1) >= 0.8 * len(kept)  # >= 100: the batch took runs too
    # each check read the rows' tokens before the run, not what the run wrote into its inputs
    assert all(np.array_equal(a, b) for a, b in zip(lasts, last_tokens, strict=True))


def test_greedy_runs_end_where_single_steps_end(max_tiny_en_portable, jfk_audio, lecture_60s_audio, monkeypatch):
    """Runs (the portable plan's 8 steps a call) in a batch whose rows end at different steps, under
    a sample_len that is no multiple of 8, and after a draft checked in one pass (a stream's): the
    tokens and log probabilities of one step a call."""
    from maxwhisper.decoding import decode

    net = max_tiny_en_portable.net
    mels = _first_windows(jfk_audio, lecture_60s_audio)
    jfk = decode(net, mels[0], language="en").tokens
    cases = {
        "a batch": dict(mel=mels),
        "sample_len 13": dict(mel=mels[1], sample_len=13),
        "a draft": dict(mel=mels[0], draft=tuple(jfk[:10])),
    }
    from maxwhisper.graph.model import MaxChoosingInference

    runs_taken = []
    original = MaxChoosingInference.greedy_run
    monkeypatch.setattr(MaxChoosingInference, "greedy_run", lambda *a: runs_taken.append(1) or original(*a))
    for case, arguments in cases.items():
        results = {}
        for runs in (True, False):
            monkeypatch.setattr(net, "runs", runs)
            before = len(runs_taken)
            out = decode(net, language="en", **arguments)
            results[runs] = [(r.tokens, r.avg_logprob) for r in (out if isinstance(out, list) else [out])]
            assert (len(runs_taken) > before) == runs, case
        assert results[True] == results[False], case
    assert results[True][0][0] == jfk  # the draft's tokens, then the rest


def test_few_row_attention_is_used_only_where_the_kernel_fits():
    from maxwhisper.graph.layers import few_row_attention_fits

    assert few_row_attention_fits(64, 1500) and few_row_attention_fits(16, 448)  # Whisper; the test checkpoint
    assert not few_row_attention_fits(20, 1500)  # head width not a multiple of the SIMD width
    assert not few_row_attention_fits(64, 3000)  # more keys than the kernel's score buffer


def test_few_row_linear_is_used_only_where_the_kernel_fits():
    from maxwhisper.graph.layers import few_row_linear_fits

    assert few_row_linear_fits(384) and few_row_linear_fits(5120)  # tiny's width, large-v3's MLP width
    assert not few_row_linear_fits(5128) and not few_row_linear_fits(100)  # above its buffer; not 8-aligned


def test_kernel_library_copies_the_shipped_package_and_a_broken_kernel_is_a_clear_error(tmp_path, monkeypatch):
    from maxwhisper.graph import kernel_package

    compile_kernels = kernel_package.compile_kernels

    def compiled(package):
        raise AssertionError("no shipped package is named for these kernels: ship_kernel_library() ships it")

    monkeypatch.setattr(kernel_package, "compile_kernels", compiled)
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "cache"))
    package = kernel_package.kernel_library()
    assert package.parent == tmp_path / "cache" / "maxwhisper" and list(package.parent.iterdir()) == [package]
    assert package.read_bytes() == (kernel_package.SHIPPED_KERNELS / package.name).read_bytes()
    assert kernel_package.kernel_library() == package

    monkeypatch.setattr(kernel_package, "compile_kernels", compile_kernels)
    broken = tmp_path / "kernels"
    broken.mkdir()
    (broken / "__init__.mojo").write_text("")
    (broken / "attention.mojo").write_text("def oops(:\n")
    monkeypatch.setattr(kernel_package, "KERNELS", broken)
    with pytest.raises(RuntimeError, match="compiling the Mojo kernels"):
        kernel_package.kernel_library()  # no package shipped for these sources: compiled, and refused
    assert sorted(p.name for p in package.parent.iterdir()) == [package.name]  # no staging folder left


def test_the_shipped_kernel_package_is_what_the_kernels_compile_to(tmp_path):
    """The package shipped with the code is the only one there, named for these kernels and this
    compiler, and is byte for byte what compiling them gives: a kernel changed without shipping its
    package again fails here."""
    from maxwhisper.graph import kernel_package

    again = (
        "the kernels changed: ship their package again with python -c 'from "
        "maxwhisper.graph.kernel_package import ship_kernel_library; ship_kernel_library()'"
    )
    shipped, name = kernel_package.SHIPPED_KERNELS, kernel_package.kernel_package_name()
    assert [p.name for p in shipped.glob("*.mojoc")] == [name], again
    fresh = tmp_path / name
    kernel_package.compile_kernels(fresh)
    assert fresh.read_bytes() == (shipped / fresh.name).read_bytes(), again


_FIRST_TRANSCRIPTS = """
import re, sys
from maxwhisper.audio import load_audio
from maxwhisper.registry import create_transcriber

for precision in sys.argv[2:]:
    text = create_transcriber("max", "tiny.en", "cpu", precision).transcribe(load_audio(sys.argv[1])).text
    print(precision, " ".join(re.sub(r"[^\\w\\s]", "", text.lower()).split()))
"""


def test_a_new_x86_64_v3_machine_compiles_none_of_the_shipped_first_graphs(tmp_path):
    """On an empty cache, a process compiling for x86-64-v3 (an AVX2 machine's best level) loads
    tiny.en's first graphs in fp32 and int8 from the artifacts shipped with the code: its cache gains
    their copies and no graph of its own, and each transcribes jfk. A kernel or one of those graphs
    changed without shipping them again fails here."""
    import subprocess
    import sys

    from maxwhisper.cpu_features import CPU_LEVEL_ENV, CPU_LEVELS, host_cpu_flags
    from maxwhisper.graph import compiled

    if not CPU_LEVELS[compiled.SHIPPED_LEVEL] <= host_cpu_flags():
        pytest.skip(f"this CPU cannot run code compiled for {compiled.SHIPPED_LEVEL}")
    assert sorted(p.suffix for p in compiled.SHIPPED_GRAPHS.iterdir()) == [".mef"] * len(compiled.SHIPPED_PRECISIONS)
    cache = tmp_path / "cache"
    env = {**os.environ, CPU_LEVEL_ENV: compiled.SHIPPED_LEVEL, "MODULAR_CACHE_DIR": str(cache)}
    jfk = os.path.join(os.path.dirname(__file__), "audio", "jfk.flac")
    child = [sys.executable, "-c", _FIRST_TRANSCRIPTS, jfk, *compiled.SHIPPED_PRECISIONS]
    done = subprocess.run(child, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    sentence = (
        "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    )
    assert done.stdout.splitlines() == [f"{precision} {sentence}" for precision in compiled.SHIPPED_PRECISIONS]
    in_cache = sorted(p.name for p in (cache / "maxwhisper" / "graphs").glob("*.mef"))
    assert in_cache == sorted(p.name for p in compiled.SHIPPED_GRAPHS.iterdir()), (
        "the shipped first graphs are not these graphs': ship them again with python -c 'from "
        "maxwhisper.graph.compiled import ship_first_graphs; ship_first_graphs()'"
    )  # copied into the cache, none compiled


def test_compiled_cpu_graphs_are_kept_on_disk_and_the_next_load_uses_them(tmp_path, monkeypatch):
    from max import driver
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, Module, TensorType

    from maxwhisper.cpu_features import CPU_LEVELS
    from maxwhisper.graph import compiled

    monkeypatch.setattr(compiled, "cache_folder", lambda: tmp_path)

    def scale(k: float) -> Graph:
        with Graph("scale", input_types=[TensorType(DType.float32, [4], DeviceRef.CPU())]) as graph:
            graph.output(graph.inputs[0].tensor * k)
        return graph

    session = InferenceSession(devices=[driver.CPU()])
    first = compiled.compile_graph(session, scale(2.0))
    path = compiled.artifact_paths(scale(2.0))[0]  # the same graph built again: the same artifact
    assert path.parent == tmp_path / "graphs" and [p.name for p in path.parent.iterdir()] == [path.name]
    assert compiled.artifact_paths(scale(3.0))[0] != path  # another constant: another artifact

    compiles, compile = [], session.compile
    monkeypatch.setattr(session, "compile", lambda model, **kw: compiles.append(model) or compile(model, **kw))
    again = compiled.compile_graph(session, scale(2.0))
    assert compiles == [str(path)]  # loaded from the artifact, not compiled
    x = np.arange(4, dtype=np.float32)
    for c in (first, again):
        assert np.array_equal(session.init(c).execute(driver.Buffer.from_numpy(x))[0].to_numpy(), 2 * x)

    path.write_bytes(b"not an artifact")  # damaged: compiled again and written anew
    mended = compiled.compile_graph(session, scale(2.0))
    assert np.array_equal(session.init(mended).execute(driver.Buffer.from_numpy(x))[0].to_numpy(), 2 * x)
    assert path.read_bytes() != b"not an artifact"

    def offset(k: float, module) -> Graph:
        with Graph(
            f"offset_{k:g}", input_types=[TensorType(DType.float32, [4], DeviceRef.CPU())], module=module
        ) as graph:
            graph.output(graph.inputs[0].tensor + k)
        return graph

    module = Module()  # two graphs compiled together: one artifact, found by both graphs' text
    pair = compiled.artifact_paths([offset(1.0, module), offset(2.0, module)])
    both = session.init_all(compiled.compile_graph(session, module, pair))
    assert pair[0].exists() and pair[0] != compiled.artifact_paths([offset(1.0, None), offset(3.0, None)])[0]
    compiles.clear()
    loaded = session.init_all(compiled.compile_graph(session, lambda: 1 / 0, pair))  # not built again
    assert compiles == [str(pair[0])]
    for models in (both, loaded):
        assert np.array_equal(models["offset_2"].execute(driver.Buffer.from_numpy(x))[0].to_numpy(), x + 2)

    # a cache built for x86-64-v3 (`warm --cpu-level`), on a CPU with that level's flags: where this
    # CPU's own artifact is missing, the level's is loaded, and a process with the level writes it there
    monkeypatch.setattr(compiled, "host_cpu_flags", lambda: CPU_LEVELS["x86-64-v3"] | {"avx512f"})
    host, level, shipped = compiled.artifact_paths(scale(2.0))
    assert shipped == compiled.SHIPPED_GRAPHS / level.name  # the shipped one last, for this CPU's best level
    os.replace(host, level)
    compiles.clear()
    from_level = compiled.compile_graph(session, scale(2.0))
    assert compiles == [str(level)] and not host.exists()
    assert np.array_equal(session.init(from_level).execute(driver.Buffer.from_numpy(x))[0].to_numpy(), 2 * x)
    # a CPU of a newer level, or with a feature the kernels use beyond the level, looks up no shipped v3 one
    monkeypatch.setattr(compiled, "host_cpu_flags", lambda: CPU_LEVELS["x86-64-v4"])
    _, v4, v3, shipped_v4 = compiled.artifact_paths(scale(2.0))
    assert v3 == level and shipped_v4 == compiled.SHIPPED_GRAPHS / v4.name
    monkeypatch.setattr(compiled, "host_cpu_flags", lambda: CPU_LEVELS["x86-64-v3"] | {"avx_vnni"})
    assert compiled.artifact_paths(scale(2.0))[1:] == [level]
    monkeypatch.setattr(compiled, "cpu_level", lambda: "x86-64-v3")
    monkeypatch.setattr(compiled, "cpu_target", lambda: "x86-64-v3")
    assert compiled.artifact_paths(scale(2.0)) == [level, shipped]

    # a shipped artifact that cannot load is compiled past, and stays (it is not the cache's to remove)
    monkeypatch.setattr(compiled, "SHIPPED_GRAPHS", tmp_path / "shipped")
    level.unlink()
    level, shipped = compiled.artifact_paths(scale(2.0))
    shipped.parent.mkdir()
    shipped.write_bytes(b"not an artifact")
    compiled.compile_graph(session, scale(2.0))
    assert level.exists() and shipped.read_bytes() == b"not an artifact"
    os.replace(level, shipped)  # one that loads is copied into the cache, where any CPU of its level finds it
    compiles.clear()
    from_shipped = compiled.compile_graph(session, scale(2.0))
    assert compiles == [str(shipped)] and level.read_bytes() == shipped.read_bytes()
    assert np.array_equal(session.init(from_shipped).execute(driver.Buffer.from_numpy(x))[0].to_numpy(), 2 * x)
    shipped.unlink()

    # a level's key names the kernel package by its file name: the same wherever the cache lives
    text = '_kernel_library_paths = ["/a/my cache/maxwhisper/kernels_0123abcd.mojoc"]'
    assert compiled._PACKAGE_PATH.sub(r'"\1"', text) == '_kernel_library_paths = ["kernels_0123abcd.mojoc"]'
    # the kernel package is in the key of a graph that calls it, and only there
    keys = {}
    for package in ("kernels_a.mojoc", "kernels_b.mojoc"):
        monkeypatch.setattr(compiled, "kernel_library", lambda package=package: Path(package))
        keys[package] = [compiled._artifact_path("g", [t], "cpu", "x86-64-v3") for t in ("ops", text)]
    (portable_a, calling_a), (portable_b, calling_b) = keys.values()
    assert portable_a == portable_b and calling_a != calling_b

    unwritable = tmp_path / "a file"  # a cache folder that cannot be written (even by root)
    unwritable.write_text("")
    monkeypatch.setattr(compiled, "cache_folder", lambda: unwritable)
    with pytest.warns(UserWarning, match="could not keep the compiled graph scale on disk"):
        unkept = compiled.compile_graph(session, scale(2.0))
    assert np.array_equal(session.init(unkept).execute(driver.Buffer.from_numpy(x))[0].to_numpy(), 2 * x)


def test_a_graph_built_without_the_custom_op_check_is_the_same_graph(max_tiny_en):
    """A model builds its CPU graphs first without MAX's check of each custom op against the kernel
    package (`compiled.custom_ops_unchecked`) and loads them so when their artifact exists: the
    unchecked graph is the same text, so it finds the artifact; outside the context, and on other
    threads meanwhile, an op the package lacks is still refused."""
    from concurrent.futures import ThreadPoolExecutor

    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType, ops

    from maxwhisper.graph.compiled import custom_ops_unchecked
    from maxwhisper.graph.kernel_package import kernel_library
    from maxwhisper.graph.model import graph_names

    net = max_tiny_en.net
    for name in graph_names(net.plan):
        with custom_ops_unchecked():
            unchecked, _ = net.build(name)
        assert str(unchecked) == str(net.build(name)[0])

    def unknown_op() -> Graph:
        t = TensorType(DType.float32, [4], DeviceRef.CPU())
        with Graph("unknown_op", input_types=[t], custom_extensions=[kernel_library()]) as graph:
            graph.output(ops.custom("no_such_kernel", DeviceRef.CPU(), [graph.inputs[0]], [t])[0])
        return graph

    with pytest.raises(Exception, match="no_such_kernel"):
        unknown_op()
    with custom_ops_unchecked():
        with custom_ops_unchecked():  # leaving a nested use keeps the outer one's
            pass
        unknown_op()
        with ThreadPoolExecutor(1) as other, pytest.raises(Exception, match="no_such_kernel"):
            other.submit(unknown_op).result()


def _token_step_rows(net, monkeypatch) -> list[int]:
    """The rows of each call of `net`'s token step graph from now on."""
    rows, run = [], net.run

    def counted(graph, *inputs):
        if graph is net.token_step:
            rows.append(inputs[3].shape[0])
        return run(graph, *inputs)

    monkeypatch.setattr(net, "run", counted)
    return rows


def test_batched_greedy_windows_equal_their_single_decodes(max_tiny_en, jfk_audio, lecture_60s_audio, monkeypatch):
    """Two windows decoded as one batch (the step graph's choice per row; jfk ends first and pads
    with eot, sitting the later steps out) give each window's own tokens and log probability."""
    from maxwhisper.decoding import decode

    mels = _first_windows(jfk_audio, lecture_60s_audio)
    rows = _token_step_rows(max_tiny_en.net, monkeypatch)
    batch = decode(max_tiny_en.net, mels, language="en")
    short = min(len(r.tokens) for r in batch)
    # both rows step until jfk's eot, then the lecture's alone (the prompt, one token, is a token step
    # too: it chose a row's first token, each later step one more)
    assert rows == [2] * (short + 1) + [1] * (len(rows) - short - 1) and len(rows) > short + 1
    for mel, together in zip(mels, batch, strict=True):
        alone = decode(max_tiny_en.net, mel, language="en")
        assert together.tokens == alone.tokens and len(alone.tokens) > 10
        assert together.avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-6)
    assert len(batch[0].tokens) != len(batch[1].tokens)


def test_a_short_prompt_runs_as_token_steps(max_tiny_en, jfk_audio, lecture_60s_audio, monkeypatch):
    """A window's prompt without previous text (sot, [notimestamps]) runs as one-token steps of the
    token step graph instead of the generic step graph, with the same tokens, log probabilities
    and no-speech probabilities as there: a first window needs only the graphs compiled at load."""
    from maxwhisper.decoding import decode
    from maxwhisper.graph import model

    net = max_tiny_en.net
    mels = _first_windows(jfk_audio, lecture_60s_audio)
    graphs, run = [], net.run
    monkeypatch.setattr(net, "run", lambda graph, *inputs: graphs.append(graph) or run(graph, *inputs))
    decode(net, mels, language="en")  # with timestamps the prompt is sot alone: one token step
    assert net.graphs.get("decoder_step") not in graphs and graphs.count(net.token_step) > 2
    graphs.clear()
    stepped = decode(net, mels, language="en", without_timestamps=True)
    assert net.decoder not in graphs and graphs.count(net.token_step) > 2
    graphs.clear()
    monkeypatch.setattr(model, "PROMPT_TOKEN_STEPS", 1)
    generic = decode(net, mels, language="en", without_timestamps=True)
    assert graphs.count(net.decoder) == 1
    for a, b in zip(stepped, generic, strict=True):
        assert a.tokens == b.tokens and len(a.tokens) > 10
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-5)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-6)


def test_int8_short_prompts_run_as_token_steps(max_tiny_en_int8, jfk_audio, lecture_60s_audio, monkeypatch):
    """int8's short prompts run as token steps too, so its first window needs only the encoder and
    the token step graph, compiled at load. Its token steps compute otherwise than its prompt graph
    (float32 activations against int8's quantized rows), so the tokens may differ, not the words."""
    from maxwhisper.decoding import decode
    from maxwhisper.graph import model
    from maxwhisper.scoring import agreement

    net = max_tiny_en_int8.net
    assert model.first_graphs(net.plan) == ("encoder", "token_step")
    mels = _first_windows(jfk_audio, lecture_60s_audio)
    graphs, run = [], net.run
    monkeypatch.setattr(net, "run", lambda graph, *inputs: graphs.append(graph) or run(graph, *inputs))
    stepped = decode(net, mels, language="en", without_timestamps=True)
    assert net.graphs.get("decoder_step") not in graphs and graphs.count(net.token_step) > 2
    monkeypatch.setattr(model, "PROMPT_TOKEN_STEPS", 0)
    graphs.clear()
    generic = decode(net, mels, language="en", without_timestamps=True)
    assert graphs.count(net.decoder) == 1
    for a, b in zip(stepped, generic, strict=True):
        assert len(a.tokens) > 10 and agreement(a.text, b.text) >= 0.98, (a.text, b.text)


@pytest.mark.parametrize("fixture", ["max_tiny_en", "max_tiny_en_portable"])
def test_new_tokens_after_a_cached_prompt_give_the_logits_of_one_prompt(fixture, request, jfk_audio):
    """New tokens after some already in the cache (a live stream's draft check) give, at each
    position asked, the logits one prompt over all the tokens gives: the step graph's
    self-attention reads every key written so far, and its last block runs the rows asked."""
    from maxwhisper.decoding import decode

    net = request.getfixturevalue(fixture).net
    mel = _first_windows(jfk_audio)
    text = decode(net, mel, language="en", without_timestamps=True)[0].tokens
    tokens = np.array([[50257, 50362, *text[:14]]], np.int64)  # tiny.en's sot, notimestamps, 14 words' tokens
    features, asked = net.encode(mel), (9, 11, 12, 15)
    whole = net.inference().logits(tokens, features, asked)
    after = net.inference()
    after.logits(tokens[:, :9], features)  # the cache holds 9 tokens
    split = after.logits(tokens, features, asked)
    assert split.shape == whole.shape == (1, 4, net.dims.n_vocab)
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-4 * np.abs(whole).max())
    assert (split.argmax(-1)[0, :3] == tokens[0, [10, 12, 13]]).all()  # each row's own next token
