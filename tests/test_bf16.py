"""MAX in bf16 on the CPU (`--precision bf16`): the bfloat16 kernel against numpy, its instructions,
and what the bf16 model transcribes against MAX fp32 and the references (`max_tiny_en_bf16`).

bf16 needs AVX512_BF16. On a CPU without it every test here checks instead that MAX says so (the
kernel and the model cannot run there), so each one asserts something on every machine."""

from __future__ import annotations

import numpy as np
import pytest
from test_int8 import assert_batched_windows_equal_single_decodes, assert_wer_within_tolerance_of_fp32
from test_max_model import SPILL, _kernel_graph, _tile_assembly

from maxwhisper.api import BackendError, DecodeOptions
from maxwhisper.cpu_features import BF16_MISSING, has_bf16
from maxwhisper.scoring import agreement

# bf16 rounds every linear's weights and inputs to 8 significant bits (the products and sums stay
# float32), so its tokens need not be fp32's; the clips with a reference have 44 words between them,
# so 0.5 points is less than one word: bf16 must make no word error fp32 does not
WER_TOLERANCE_POINTS = 0.5


def assert_max_says_bf16_is_missing(checkpoint) -> None:
    from maxwhisper.graph.model import MaxWhisper

    with pytest.raises(BackendError) as raised:
        MaxWhisper(checkpoint, precision="bf16")
    assert str(raised.value) == BF16_MISSING


def test_bf16_without_avx512_bf16_or_on_a_gpu_is_a_clear_error(tiny_en_checkpoint, monkeypatch):
    """Where the CPU has no AVX512_BF16 (here: as if it had none), and on a GPU, MAX refuses bf16
    with a message naming what is missing, before compiling anything."""
    import maxwhisper.graph.model as model

    monkeypatch.setattr(model, "has_bf16", lambda: False)
    assert_max_says_bf16_is_missing(tiny_en_checkpoint)
    assert "AVX512_BF16" in BF16_MISSING and "fp32" in BF16_MISSING
    with pytest.raises(BackendError, match="MAX on gpu supports precision fp32, fp16, not bf16"):
        model.MaxWhisper(tiny_en_checkpoint, device="gpu", precision="bf16")


def bfloat16(a: np.ndarray) -> np.ndarray:
    """a rounded to bfloat16 (`weights.bfloat16_bits`), as float32 values."""
    from maxwhisper.graph.weights import bfloat16_bits

    return (bfloat16_bits(a).astype(np.uint32) << 16).view(np.float32)


def test_bfloat16_rounding_is_to_nearest_even():
    # ties go to the even neighbour; 3e-3 = 196.608 / 128 x 2^-9
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, 3e-3], np.float32)
    assert bfloat16(x).tolist() == [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.5, 197 / 128 * 2**-9]


def vdpbf16ps_product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [M, K] @ w [K, N] as `vdpbf16ps` computes it (Intel's definition, which AMD's Zen 4 follows):
    the inputs rounded to bfloat16, each product exact in float32, a float32 sum per output over the
    k pairs in order, the odd k's product added first and then the even's, each add rounded once."""
    xb, wb = bfloat16(x), bfloat16(w)
    acc = np.zeros((x.shape[0], w.shape[1]), np.float32)
    for g in range(0, x.shape[1], 2):
        acc = acc + xb[:, g + 1 : g + 2] * wb[g + 1]
        acc = acc + xb[:, g : g + 1] * wb[g]
    return acc


def test_packed_linear_bf16_kernel_is_the_float32_sum_of_bfloat16_products(tiny_en_checkpoint):
    """`linear_bf16.mojo` against numpy's emulation of `vdpbf16ps` (`vdpbf16ps_product`): bit for bit,
    plain, with the bias and a residual added in float32; with GELU within float32 rounding of erf's.
    67 rows (a partial tile), K 1536, 3 panels (a pair and one alone); the machine's tile and a 4 x 1
    one give the same bits, and a row alone the bits it gets among the others. The inputs' rounding
    is what moves the result from the float32 product (within 1 % of its largest value), not the
    sums: the float64 sum of the same bfloat16 products is 100x closer. Without AVX512_BF16: MAX
    says it cannot run."""
    if not has_bf16():
        assert_max_says_bf16_is_missing(tiny_en_checkpoint)
        return
    from math import erf

    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.graph.layers import WeightBank, packed_linear_bf16

    rng = np.random.default_rng(0)
    k, n, m = 1536, 48, 67
    arrays = {
        "lin.weight_t": rng.standard_normal((k, n)).astype(np.float32) * 0.05,
        "lin.bias": rng.standard_normal(n).astype(np.float32),
    }
    w = WeightBank(arrays, DType.float32, DeviceRef.CPU())

    def build(x, residual):
        return [
            packed_linear_bf16(w, "lin")(x),
            packed_linear_bf16(w, "lin", gelu=True)(x),
            packed_linear_bf16(w, "lin")(x, residual),
            packed_linear_bf16(w, "lin", tile=(4, 1))(x),
        ]

    cpu = DeviceRef.CPU()
    run = _kernel_graph(
        "packed_linear_bf16_test",
        [TensorType(DType.float32, ["m", k], device=cpu), TensorType(DType.float32, ["m", n], device=cpu)],
        build,
        w,
    )
    assert w.registry()["lin.weight_t.bf16_panels"].shape == (n // 16, k // 2, 16, 2)

    x = (rng.standard_normal((m, k)) + 0.3).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    plain, gelu, added, small_tile = run(x, residual)
    np.testing.assert_array_equal(small_tile, plain)
    np.testing.assert_array_equal(run(x[5:6], residual[5:6])[0], plain[5:6])

    expected = vdpbf16ps_product(x, arrays["lin.weight_t"]) + arrays["lin.bias"]
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(added, residual + expected)
    top = np.abs(expected).max()
    np.testing.assert_allclose(
        gelu, 0.5 * expected * (1 + np.vectorize(erf)(expected / np.sqrt(2))), rtol=0, atol=2e-6 * top
    )
    float_product = x.astype(np.float64) @ arrays["lin.weight_t"] + arrays["lin.bias"]
    exact_sums = bfloat16(x).astype(np.float64) @ bfloat16(arrays["lin.weight_t"]) + arrays["lin.bias"]
    assert np.abs(plain - float_product).max() < 0.01 * np.abs(float_product).max()
    assert np.abs(plain - float_product).max() > 100 * np.abs(plain - exact_sums).max()


@pytest.mark.parametrize("dh, t, amx", [(64, 37, False), (80, 37, False), (64, 37, True)])
def test_encoder_attention_in_bf16_is_float32_sums_of_bfloat16_products(dh, t, amx, tiny_en_checkpoint):
    """`encoder_attention` with bf16 (int8's encoder attention where it pays) against
    float64 numpy over the numbers it rounds: q scaled, the keys, the values and exp(score - max)
    rounded to bfloat16, the softmax's sum from the unrounded exps. Batch 2, 2 heads, T = 37 (partial
    panels and work items); without amx the AVX2-sized tile and the AVX-512 one give the same bits.
    The rounding is what moves it from float32 attention, not the sums. Without AVX512_BF16: MAX
    refuses --precision bf16. amx: on AMX tiles where the process may run them (T = 37 padded with
    zero keys to 64, the tiles' 32-key steps; elsewhere the same graph runs `vdpbf16ps`), their sums
    in another order than the AVX-512 tile's, which the (6, 1) tile (24 rows a work item: not whole
    tiles) still runs."""
    if not has_bf16():
        assert_max_says_bf16_is_missing(tiny_en_checkpoint)
        return
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType

    from maxwhisper.cpu_features import amx_permitted
    from maxwhisper.graph.layers import MACHINE_TILE, encoder_attention

    amx = amx and amx_permitted()
    b, h = 2, 2
    d = h * dh
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((b, t, 3 * d)).astype(np.float32)
    types = [TensorType(DType.float32, [b, "t", 3 * d], device=DeviceRef.CPU())]
    run = _kernel_graph(
        f"encoder_attention_bf16_test_{dh}_{t}_{amx}",
        types,
        lambda x: [encoder_attention(x, h, tile, bf16=True, amx=amx) for tile in (MACHINE_TILE, (6, 1), (12, 2))],
    )
    out, small, large = run(qkv)
    np.testing.assert_array_equal(large, out)
    if amx:  # the tiles ran: their sums' order moved some bits
        np.testing.assert_allclose(small, out, rtol=0, atol=1e-5)
        assert not np.array_equal(small, out)
    else:
        np.testing.assert_array_equal(small, out)

    def heads(x):  # [B, T, d] -> [B, H, T, Dh] in float64
        return x.astype(np.float64).reshape(b, t, h, dh).transpose(0, 2, 1, 3)

    q, k, v = np.split(qkv, 3, axis=-1)
    scores = heads(bfloat16(q * np.float32(1 / np.sqrt(dh)))) @ heads(bfloat16(k)).transpose(0, 1, 3, 2)
    exps = np.exp(scores - scores.max(-1, keepdims=True))
    rounded = bfloat16(exps.astype(np.float32)).astype(np.float64) @ heads(bfloat16(v)) / exps.sum(-1, keepdims=True)
    expected = rounded.transpose(0, 2, 1, 3).reshape(b, t, d)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-3)
    qf, kf, vf = (heads(part) for part in (q, k, v))
    exact = qf @ kf.transpose(0, 1, 3, 2) / np.sqrt(dh)
    p = np.exp(exact - exact.max(-1, keepdims=True))
    float_attention = ((p / p.sum(-1, keepdims=True)) @ vf).transpose(0, 2, 1, 3).reshape(b, t, d)
    assert np.abs(out - float_attention).max() < 0.05
    assert np.abs(out - float_attention).max() > 10 * np.abs(out - expected).max()


@pytest.mark.parametrize("cpu", ["znver4", "sapphirerapids"])
def test_bf16_encoder_tile_is_vdpbf16ps_on_every_accumulator(cpu, tmp_path):
    """`packed_linear_bf16`'s tile compiled for CPUs with AVX512_BF16 (tests/tile_bf16_asm.mojo; nothing
    runs, so this machine's ISA does not matter): its loop is 24 `vdpbf16ps` on zmm registers (12
    rows x 2 panels of 16 columns) and no vector register is spilled to the stack."""
    import re

    code = _tile_assembly("tile_bf16_asm.mojo", cpu, tmp_path)
    found = re.findall(r"vdpbf16ps\s+%(\w+), %(\w+), %(\w+)", code)
    assert len(found) == 24 and all(operand.startswith("zmm") for op in found for operand in op), found
    assert not re.search(SPILL, code), "a vector register spilled"


def test_bf16_plan_runs_the_encoder_and_prompt_linears_in_bf16(max_tiny_en_bf16, tiny_en_checkpoint):
    if max_tiny_en_bf16 is None:
        return assert_max_says_bf16_is_missing(tiny_en_checkpoint)
    plan = max_tiny_en_bf16.plan
    assert plan.bf16 and not plan.int8 and plan.name == "cpu-kernels" and plan.token_step
    assert "bf16 encoder linears" in plan.describe() and "float16-stored step linears" in plan.describe()


def test_bf16_wer_on_the_clips_with_references_is_within_half_a_point_of_fp32(
    max_tiny_en, max_tiny_en_bf16, tiny_en_checkpoint
):
    if max_tiny_en_bf16 is None:
        return assert_max_says_bf16_is_missing(tiny_en_checkpoint)
    assert_wer_within_tolerance_of_fp32(max_tiny_en, max_tiny_en_bf16, WER_TOLERANCE_POINTS)


def test_bf16_agrees_with_fp32_on_the_lecture(max_tiny_en, max_tiny_en_bf16, lecture_60s_audio, tiny_en_checkpoint):
    """Two windows of the lecture: bf16's words are fp32's but for a few (98 % or more)."""
    if max_tiny_en_bf16 is None:
        return assert_max_says_bf16_is_missing(tiny_en_checkpoint)
    fp32 = max_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    bf16 = max_tiny_en_bf16.transcribe(lecture_60s_audio, DecodeOptions())
    assert len({s.seek for s in bf16.segments}) >= 2 and bf16.precision == "bf16"
    assert agreement(fp32.text, bf16.text) >= 0.98, (fp32.text, bf16.text)


def test_bf16_batched_windows_equal_their_single_decodes(
    max_tiny_en_bf16, jfk_audio, lecture_60s_audio, tiny_en_checkpoint
):
    """A row's bf16 arithmetic does not depend on the rows beside it (each prompt row rounded on its
    own, the one-token steps float32 row by row): a batch of two windows gives each one's tokens."""
    if max_tiny_en_bf16 is None:
        return assert_max_says_bf16_is_missing(tiny_en_checkpoint)
    assert_batched_windows_equal_single_decodes(max_tiny_en_bf16.net, jfk_audio, lecture_60s_audio)


def test_cli_transcribes_jfk_in_bf16(max_tiny_en_bf16):
    """`python -m maxwhisper transcribe jfk.flac --backend max --precision bf16` prints the JFK
    sentence (the fixture compiled the bf16 graphs first: the command loads them from the disk
    cache); on a CPU without AVX512_BF16 it says so, with no traceback."""
    from test_cli import JFK, JFK_NORMALISED, assert_clean_error, cli

    from maxwhisper.scoring import normalize

    done = cli("transcribe", JFK, "--backend", "max", "--precision", "bf16", "--device", "cpu")
    if max_tiny_en_bf16 is None:
        return assert_clean_error(done, "AVX512_BF16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert normalize(done.stdout) == JFK_NORMALISED
