"""MAX in int8 on the CPU (`--precision int8`): what it transcribes against MAX fp32 and the
references, on one int8 model per session (`max_tiny_en_int8`)."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.api import DecodeOptions
from maxwhisper.bench.clips import REFERENCES, audio_dir, load_clip, parse_clip
from maxwhisper.cpu_features import amx_permitted, bf16_attention_pays, int16_attention_pays
from maxwhisper.scoring import agreement, pooled_wer

# int8 rounds every weight to 1 part in 254 of its row's largest and every encoder activation row to
# 1 part in 255 of its range, so its tokens are not fp32's; the clips with a reference have 44 words
# between them, so 0.5 points is less than one word: int8 must make no word error fp32 does not
WER_TOLERANCE_POINTS = 0.5


def test_int8_plan_runs_every_linear_in_int8(max_tiny_en_int8):
    plan = max_tiny_en_int8.plan
    assert plan.int8 and plan.name == "cpu-kernels" and plan.token_step and plan.encoder_linear_kernel
    assert "int8 encoder linears" in plan.describe() and "int8 step linears" in plan.describe()
    assert plan.cross_int8 and "int8 weights and cross K/V" in plan.describe()
    assert plan.encoder_attention_bf16 == bf16_attention_pays()  # the encoder's attention in bfloat16 where it pays
    # else in 12- and 16-bit integers where that pays
    assert plan.encoder_attention_int16 == (int16_attention_pays() and not bf16_attention_pays())
    assert plan.amx_tiles == amx_permitted()  # its linears and bf16 attention on AMX tiles where it may
    assert max_tiny_en_int8.net.copies  # the quantized weights, made once at load
    assert {a.dtype for (kind, _), a in max_tiny_en_int8.net.copies.items() if kind == "int8"} == {np.dtype(np.int8)}
    # the output projection's 4-bit copy for `vocab_projection_int4`'s first pass, and only its
    assert [name for kind, name in max_tiny_en_int8.net.copies if kind == "int4"] == ["decoder.token_embedding.weight"]


def assert_wer_within_tolerance_of_fp32(fp32_model, reduced_model, tolerance_points: float) -> None:
    """The reduced-precision model's pooled WER on the test clips with references is at most
    `tolerance_points` percentage points above the fp32 model's (each transcript says its precision)."""
    clips = [parse_clip(name, audio_dir()) for name in REFERENCES if (audio_dir() / name.split("#")[0]).exists()]
    assert len(clips) >= 3
    pairs = {"fp32": [], reduced_model.precision: []}
    for clip in clips:
        audio = load_clip(clip)
        for precision, model in (("fp32", fp32_model), (reduced_model.precision, reduced_model)):
            result = model.transcribe(audio, DecodeOptions())
            assert result.precision == precision
            pairs[precision].append((REFERENCES[clip.name], result.text))
    fp32, reduced = pooled_wer(pairs["fp32"]), pooled_wer(pairs[reduced_model.precision])
    assert 100 * (reduced - fp32) <= tolerance_points, (pairs[reduced_model.precision], pairs["fp32"])


def assert_batched_windows_equal_single_decodes(net, *audios: np.ndarray) -> None:
    """The windows decoded as one batch give each window's own tokens and log probability."""
    from maxwhisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram
    from maxwhisper.decoding import decode

    mels = np.stack([log_mel_spectrogram(a, 80, padding=N_SAMPLES)[:, :N_FRAMES] for a in audios])
    batch = decode(net, mels, language="en")
    for mel, together in zip(mels, batch, strict=True):
        alone = decode(net, mel, language="en")
        assert together.tokens == alone.tokens and len(alone.tokens) > 10
        assert together.avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-6)


def test_int8_wer_on_the_clips_with_references_is_within_half_a_point_of_fp32(max_tiny_en, max_tiny_en_int8):
    assert_wer_within_tolerance_of_fp32(max_tiny_en, max_tiny_en_int8, WER_TOLERANCE_POINTS)


def test_int8_agrees_with_fp32_on_the_lecture(max_tiny_en, max_tiny_en_int8, lecture_60s_audio):
    """Two windows of the lecture: int8's words are fp32's but for a few (98 % or more)."""
    fp32 = max_tiny_en.transcribe(lecture_60s_audio, DecodeOptions())
    int8 = max_tiny_en_int8.transcribe(lecture_60s_audio, DecodeOptions())
    assert len({s.seek for s in int8.segments}) >= 2 and int8.timings.decode_s > 0
    assert agreement(fp32.text, int8.text) >= 0.98, (fp32.text, int8.text)


def test_int8_batched_windows_equal_their_single_decodes(max_tiny_en_int8, jfk_audio, lecture_60s_audio):
    """In int8 too a row's arithmetic does not depend on the rows beside it: two windows decoded as
    one batch give each window's own tokens (prompt rows quantized one by one, one-token steps and
    the output projection row by row)."""
    assert_batched_windows_equal_single_decodes(max_tiny_en_int8.net, jfk_audio, lecture_60s_audio)


def test_int8_beam_search_and_word_timestamps(max_tiny_en_int8, jfk_audio):
    result = max_tiny_en_int8.transcribe(jfk_audio, DecodeOptions(beam_size=3, word_timestamps=True))
    words = [w for s in result.segments for w in s.words]
    assert "country" in result.text and len(words) >= 20
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))


def test_cli_transcribes_jfk_in_int8(max_tiny_en_int8):
    """`python -m maxwhisper transcribe jfk.flac --backend max --precision int8` prints the JFK
    sentence (the fixture first compiles the int8 graphs: the command then loads them from the
    disk cache); --no-kernels has no int8 and says so."""
    from test_cli import JFK, JFK_NORMALISED, assert_clean_error, cli

    from maxwhisper.scoring import normalize

    done = cli("transcribe", JFK, "--backend", "max", "--precision", "int8", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert normalize(done.stdout) == JFK_NORMALISED
    assert_clean_error(
        cli("transcribe", JFK, "--backend", "max", "--precision", "int8", "--no-kernels"), "precision", "int8"
    )


@pytest.mark.parametrize("n", [5, 50])
def test_prompt_cross_attention_in_int16_is_exact_sums_of_quantized_numbers(n):
    """`cross_attention_int8` with int16 (int8's prompts on AVX2) against float64 numpy over the
    numbers it quantizes: q per row to +-2047 against the int8 keys as they are, each value dim
    (int8 value x its scale) requantized to +-32767 over the frames, the softmax's weights to +-32767
    of their row's sum. Batch 2, 3 heads of Dh 64, T = 37 frames, n = 5 or 50 query rows; the tiles
    give the same bits; within 1 % of the largest value of the float path's attention."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType
    from test_max_model import _kernel_graph

    from maxwhisper.graph.layers import MACHINE_TILE, cross_attention_int8

    b, h, t, dh = 2, 3, 37, 64
    rng = np.random.default_rng(n)
    q = (rng.standard_normal((b, h, n, dh)) * 2).astype(np.float32)
    k = rng.integers(-127, 128, (b, h, t, dh)).astype(np.int8)
    v_t = rng.integers(-127, 128, (b, h, dh, t)).astype(np.int8)
    k_scales, v_scales = (rng.uniform(0.001, 0.03, (b, h, t)).astype(np.float32) for _ in range(2))
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, [b, h, "n", dh], device=cpu),
        TensorType(DType.int8, [b, h, t, dh], device=cpu),
        TensorType(DType.int8, [b, h, dh, t], device=cpu),
        TensorType(DType.float32, [b, h, t], device=cpu),
        TensorType(DType.float32, [b, h, t], device=cpu),
    ]
    run = _kernel_graph(
        "cross_attention_int16_test",
        types,
        lambda *x: (
            [cross_attention_int8(*x, tile=tile, int16=True) for tile in (MACHINE_TILE, (6, 1), (4, 2))]
            + [cross_attention_int8(*x)]
        ),
    )
    out, small, paired, float_path = run(q, k, v_t, k_scales, v_scales)
    np.testing.assert_array_equal(small, out)
    np.testing.assert_array_equal(paired, out)

    def quantized(x, axis, top):  # x ~ q s, |q| <= top, in float32 as the kernel rounds: (q, s) over `axis`
        s = np.abs(x).max(axis=axis, keepdims=True) / np.float32(top)
        return np.round(x * (np.float32(1) / s)).astype(np.float64), s.astype(np.float64)

    values = (v_t.astype(np.float32) * v_scales[..., None, :]).transpose(0, 1, 3, 2)  # [B, H, T, Dh]
    (qq, qs), (vq, vs) = quantized(q, -1, 2047), quantized(values, -2, 32767)
    scores = (qq @ k.astype(np.float64).transpose(0, 1, 3, 2)) * qs * k_scales[..., None, :] / np.sqrt(dh)
    exps = np.exp(scores - scores.max(-1, keepdims=True))
    weights = np.round(exps * (32767 / exps.sum(-1, keepdims=True)))
    expected = (weights @ vq) * vs / weights.sum(-1, keepdims=True)
    top = np.abs(values).max()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 * top)
    assert np.abs(out - float_path).max() < 0.01 * top
    assert np.abs(out - float_path).max() > 10 * np.abs(out - expected).max()  # the quantization is what moves it


@pytest.mark.parametrize("dh", [64, 80])
def test_encoder_attention_in_int16_is_exact_sums_of_quantized_numbers(dh):
    """`encoder_attention` with int16 (int8's encoder attention on AVX2) against float64 numpy over
    the numbers it quantizes: q per row and the keys per key to +-2047, the values per head dim to
    +-32767 over the frames, exp(score - max) to +-32767 of its row's sum, p @ v divided by the
    quantized weights' sum. Batch 2, 2 heads, T = 37 (partial panels and work items, an odd count of
    keys); the tiles give the same bits (the int32 sums are exact); the quantization is what moves
    it from float32 attention."""
    from max.dtype import DType
    from max.graph import DeviceRef, TensorType
    from test_max_model import _kernel_graph

    from maxwhisper.graph.layers import MACHINE_TILE, encoder_attention

    b, t, h = 2, 37, 2
    d = h * dh
    rng = np.random.default_rng(0)
    qkv = (rng.standard_normal((b, t, 3 * d)) * np.linspace(0.5, 3, 3 * d)).astype(np.float32)
    run = _kernel_graph(
        f"encoder_attention_int16_test_{dh}",
        [TensorType(DType.float32, [b, "t", 3 * d], device=DeviceRef.CPU())],
        lambda x: [encoder_attention(x, h, tile, int16=True) for tile in (MACHINE_TILE, (6, 1), (4, 2))],
    )
    out, small, paired = run(qkv)
    np.testing.assert_array_equal(small, out)
    np.testing.assert_array_equal(paired, out)

    def heads(x):  # [B, T, d] -> [B, H, T, Dh] in float64
        return x.astype(np.float64).reshape(b, t, h, dh).transpose(0, 2, 1, 3)

    def quantized(x, axis, top):  # x ~ q s, |q| <= top: (q, s) with s over `axis`
        s = np.abs(x).max(axis=axis, keepdims=True) / top
        return np.round(x / s), s

    q, k, v = (heads(part) for part in np.split(qkv, 3, axis=-1))
    (qq, qs), (kq, ks), (vq, vs) = quantized(q, -1, 2047), quantized(k, -1, 2047), quantized(v, -2, 32767)
    scores = (qq @ kq.transpose(0, 1, 3, 2)) * qs * ks.transpose(0, 1, 3, 2) / np.sqrt(dh)
    exps = np.exp(scores - scores.max(-1, keepdims=True))
    weights = np.round(exps * (32767 / exps.sum(-1, keepdims=True)))
    expected = ((weights @ vq) * vs / weights.sum(-1, keepdims=True)).transpose(0, 2, 1, 3).reshape(b, t, d)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4)
    exact = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    p = np.exp(exact - exact.max(-1, keepdims=True))
    float_attention = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    assert np.abs(out - float_attention).max() < 0.02
    assert np.abs(out - float_attention).max() > 10 * np.abs(out - expected).max()
