"""MAX in int8 on the CPU (`--precision int8`): what it transcribes against MAX fp32 and the
references, on one int8 model per session (`max_tiny_en_int8`)."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.api import DecodeOptions
from maxwhisper.bench.clips import REFERENCES, audio_dir, load_clip, parse_clip
from maxwhisper.cpu_features import amx_permitted, bf16_attention_pays
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
