"""The decoding features against openai-whisper on the same weights: beam search, multilingual (language
detection, explicit language, translation), word timestamps, prompts and thresholds, silence,
and checkpoints of other shapes given by path.

Every comparison runs openai-whisper's own `transcribe()` (baselines/openai_backend.py or
tests/torch_reference.py) next to MAX (or next to maxwhisper's numpy decoding over the same torch
network, where that isolates the port). Options that make the fallback sample at temperature > 0
are compared on what they decide (which temperature was used), not on tokens: numpy's random
numbers are not torch's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from conftest import each_plan
from torch_reference import openai_transcribe, whisper_mel
from whisper.timing import dtw_cpu
from whisper.timing import median_filter as whisper_median_filter

from maxwhisper.api import SAMPLE_RATE, DecodeOptions
from maxwhisper.audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram
from maxwhisper.checkpoint import ModelDims, expected_shapes
from maxwhisper.decoding import detect_language, probability_tolerance
from maxwhisper.formats import to_srt
from maxwhisper.timing import default_alignment_heads, dtw, median_filter
from maxwhisper.tokenizer import get_tokenizer
from maxwhisper.transcribe import transcribe

# a checkpoint in large-v3's layout (128 mel bins, 100 languages), but tiny
RANDOM_DIMS = ModelDims(
    n_mels=128,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=4,
    n_audio_layer=2,
    n_vocab=51866,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=2,
)

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "audio"
# of the largest logit: activations are rounded to float16 (2^-11 relative) at ~5 places per layer
# (linears, GELU, residual adds), ~20 roundings in series through 2 + 2 layers: 20 * 2^-11 ~ 1e-2
FP16_LOGIT_TOLERANCE = 1e-2
WORD_TOLERANCE_S = 0.020  # one alignment step: word times are counted in the encoder's output frames


def words_of(result):
    return [w for s in result.segments for w in s.words]


def assert_same_words(ours, ref, prob_tol=1e-3):
    """Same words and segment texts; word and segment start/end within 20 ms; probabilities close."""
    ow, rw = words_of(ours), words_of(ref)
    assert [w.word for w in ow] == [w.word for w in rw]
    assert [s.text for s in ours.segments] == [s.text for s in ref.segments]
    times = (
        [(a.start, b.start) for a, b in zip(ow, rw)]
        + [(a.end, b.end) for a, b in zip(ow, rw)]
        + [(a.start, b.start) for a, b in zip(ours.segments, ref.segments)]
        + [(a.end, b.end) for a, b in zip(ours.segments, ref.segments)]
    )
    time_error = max(abs(a - b) for a, b in times)
    prob_error = max(abs(a.probability - b.probability) for a, b in zip(ow, rw))
    print(f"{len(ow)} words: max time difference {time_error * 1000:.1f} ms, probability {prob_error:.2g}")
    assert time_error <= WORD_TOLERANCE_S and prob_error <= prob_tol


@pytest.fixture(scope="session")
def sax_audio():
    """16 s of saxophone (gradio ships it): music, no speech."""
    import gradio

    return load_audio(Path(gradio.__file__).parent / "media_assets" / "audio" / "sax.wav")


@pytest.fixture(scope="session")
def sax_then_jfk(sax_audio, jfk_audio):
    """Music, 5 s of silence, then speech: the hallucination rules have something to act on."""
    return np.concatenate([sax_audio, np.zeros(5 * SAMPLE_RATE, np.float32), jfk_audio])


# --- word timing: the numpy pieces --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (30, 550), (120, 1500)])
def test_dtw_equals_whisper(shape):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32).astype(np.float64)
    x[:, ::3] = np.round(x[:, ::3])  # ties, decided by whisper's rules
    np.testing.assert_array_equal(dtw(x), dtw_cpu(x))
    x[::2, ::5], x[0, -1] = np.nan, np.inf  # frames no token attends to, as the median filter's test has
    np.testing.assert_array_equal(dtw(x), dtw_cpu(x))


def test_median_filter_equals_whisper():
    x = np.random.default_rng(0).standard_normal((6, 25, 550)).astype(np.float32)
    np.testing.assert_array_equal(median_filter(x, 7), whisper_median_filter(torch.from_numpy(x), 7).numpy())
    np.testing.assert_array_equal(median_filter(x[..., :3], 7), x[..., :3])  # too short: unchanged
    x[0, :, 5], x[1, 3, :], x[2, 4, 10:13] = np.nan, np.nan, np.nan  # frames no token attends to
    np.testing.assert_array_equal(median_filter(x, 7), whisper_median_filter(torch.from_numpy(x), 7).numpy())
    assert median_filter(x, 7).dtype == np.float32


def test_default_alignment_heads_are_whisper_s():
    module = whisper.model.Whisper(whisper.model.ModelDimensions(**asdict(RANDOM_DIMS)))
    np.testing.assert_array_equal(default_alignment_heads(2, 4), module.alignment_heads.indices().T.numpy())


# --- word timing: whole transcripts ---------------------------------------------------------------


def test_numpy_word_timing_is_whisper_s(torch_tiny_en, lecture_60s_audio, sax_then_jfk):
    """The same torch network under both: tokens, seeks and words identical to whisper.transcribe,
    with and without the hallucination rules (which change this clip's output); word and segment
    times within one alignment step (an attention softmax rounded otherwise can move a DTW step at
    a near tie), word probabilities (means of token probabilities) within float32 softmax rounding."""
    for audio, threshold in [(lecture_60s_audio, None), (sax_then_jfk, 2.0)]:
        options = DecodeOptions(word_timestamps=True, hallucination_silence_threshold=threshold)
        ours = transcribe(torch_tiny_en, whisper_mel(audio, 80), options)
        ref = openai_transcribe(torch_tiny_en.module, audio, options, hallucination_silence_threshold=threshold)
        assert [(s.seek, s.tokens) for s in ours.segments] == [(s["seek"], tuple(s["tokens"])) for s in ref["segments"]]
        ow, rw = words_of(ours), [w for s in ref["segments"] for w in s["words"]]
        assert [w.word for w in ow] == [w["word"] for w in rw]
        ours_times = [t for s in ours.segments for t in (s.start, s.end)] + [t for w in ow for t in (w.start, w.end)]
        ref_times = [s[k] for s in ref["segments"] for k in ("start", "end")] + [
            w[k] for w in rw for k in ("start", "end")
        ]
        assert ours_times == pytest.approx(ref_times, abs=WORD_TOLERANCE_S + 1e-9)
        tolerance = probability_tolerance(torch_tiny_en.dims.n_vocab)
        assert [w.probability for w in ow] == pytest.approx([w["probability"] for w in rw], abs=tolerance)


def test_max_word_timestamps_match_openai_on_jfk(max_tiny_en, openai_tiny_en, jfk_audio):
    options = DecodeOptions(word_timestamps=True)
    ours, ref = max_tiny_en.transcribe(jfk_audio, options), openai_tiny_en.transcribe(jfk_audio, options)
    assert ours.tokens == ref.tokens
    assert len(words_of(ours)) == 22
    assert_same_words(ours, ref)
    assert to_srt(ours) == to_srt(ref)  # subtitles timed by the words


def test_max_hallucination_silence_threshold_matches_openai(max_tiny_en, openai_tiny_en, sax_then_jfk):
    options = DecodeOptions(word_timestamps=True, hallucination_silence_threshold=2.0)
    ours, ref = max_tiny_en.transcribe(sax_then_jfk, options), openai_tiny_en.transcribe(sax_then_jfk, options)
    assert ours.tokens == ref.tokens
    assert_same_words(ours, ref)
    assert ours.text != max_tiny_en.transcribe(sax_then_jfk, DecodeOptions(word_timestamps=True)).text  # it acted


# --- beam search ---------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["jfk", "lecture_30s"])
def test_beam_search_tokens_equal_openai(max_tiny_en_each_plan, openai_tiny_en, jfk_audio, lecture_60s_audio, clip):
    audio = jfk_audio if clip == "jfk" else lecture_60s_audio[: 30 * SAMPLE_RATE]
    options = DecodeOptions(beam_size=5)
    ours, ref = max_tiny_en_each_plan.transcribe(audio, options), openai_tiny_en.transcribe(audio, options)
    assert ours.tokens == ref.tokens
    assert [(s.start, s.end) for s in ours.segments] == [(s.start, s.end) for s in ref.segments]


# --- prompts, thresholds, silence ----------------------------------------------------------------


def test_initial_prompt_without_conditioning_matches_openai(max_tiny_en, openai_tiny_en, lecture_60s_audio):
    options = DecodeOptions(
        initial_prompt="Walter Lewin's physics lecture: pendulum, energy, joules.", condition_on_previous_text=False
    )
    ours = max_tiny_en.transcribe(lecture_60s_audio, options)
    ref = openai_tiny_en.transcribe(lecture_60s_audio, options)
    assert ours.tokens == ref.tokens
    assert [s.seek for s in ours.segments] == [s.seek for s in ref.segments]
    assert ours.tokens != max_tiny_en.transcribe(lecture_60s_audio, DecodeOptions()).tokens  # the options acted


def test_no_speech_and_logprob_thresholds_match_openai(max_tiny_en, openai_tiny_en, sax_then_jfk):
    """A stricter no-speech rule skips the window that holds music then speech, as openai's does."""
    strict = DecodeOptions(temperature=(0.0,), no_speech_threshold=0.2, logprob_threshold=0.0)
    ours, ref = max_tiny_en.transcribe(sax_then_jfk, strict), openai_tiny_en.transcribe(sax_then_jfk, strict)
    assert ours.tokens == ref.tokens
    assert [(s.seek, s.start, s.end) for s in ours.segments] == [(s.seek, s.start, s.end) for s in ref.segments]
    assert ours.segments[0].seek > 0  # the first window was judged silent


@pytest.mark.parametrize("threshold", [{"compression_ratio_threshold": 0.1}, {"logprob_threshold": 0.0}])
def test_fallback_thresholds_choose_the_same_temperature(max_tiny_en, openai_tiny_en, jfk_audio, threshold):
    """A threshold no greedy result can meet: both fall back to the next temperature."""
    options = DecodeOptions(temperature=(0.0, 0.7), best_of=1, no_speech_threshold=None, **threshold)
    ours, ref = max_tiny_en.transcribe(jfk_audio, options), openai_tiny_en.transcribe(jfk_audio, options)
    assert {s.temperature for s in ours.segments} == {s.temperature for s in ref.segments} == {0.7}


def test_a_decision_at_the_threshold_is_reported_by_max_and_the_cli(max_tiny_en, jfk_audio):
    """logprob_threshold set to MAX's own avg_logprob on jfk: the fallback decision is too close
    to call, and the result, its JSON and the CLI's stderr say so."""
    options = DecodeOptions(temperature=(0.0,))
    threshold = max_tiny_en.transcribe(jfk_audio, options).segments[0].avg_logprob
    result = max_tiny_en.transcribe(jfk_audio, options.replace(temperature=(0.0, 0.2), logprob_threshold=threshold))
    assert [(c.start, c.temperature, c.quantity, c.threshold) for c in result.close_calls] == [
        (0.0, 0.0, "avg_logprob", threshold)
    ]
    assert result.to_dict()["close_calls"][0]["decision"] == result.close_calls[0].decision
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "maxwhisper",
            "transcribe",
            str(AUDIO / "jfk.flac"),
            "--backend",
            "max",
            "--device",
            "cpu",
            "--temperature",
            "0,0.2",
            "--logprob-threshold",
            repr(threshold),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert f"note: {AUDIO / 'jfk.flac'}: window at 0.00 s, temperature 0: avg_logprob" in p.stderr
    assert f"of logprob_threshold {threshold:g}" in p.stderr


@pytest.mark.parametrize("clip", ["silence", "sax"])
def test_silence_and_music_give_no_text(max_tiny_en, openai_tiny_en, sax_audio, clip):
    audio = np.zeros(10 * SAMPLE_RATE, np.float32) if clip == "silence" else sax_audio
    for options in (DecodeOptions(), DecodeOptions(word_timestamps=True, hallucination_silence_threshold=2.0)):
        ours, ref = max_tiny_en.transcribe(audio, options), openai_tiny_en.transcribe(audio, options)
        assert ours.text == ref.text == ""
        assert ours.tokens == ref.tokens == []


# --- multilingual: base ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def multilingual_audio():
    """English (0-30 s), then German (30-60 s)."""
    return load_audio(AUDIO / "multilingual.mp3")


@pytest.fixture(scope="session")
def max_base():
    from maxwhisper.max_backend import MaxTranscriber

    return MaxTranscriber("base", device="cpu")


@pytest.fixture(scope="session")
def max_base_portable():
    from maxwhisper.max_backend import MaxTranscriber

    return MaxTranscriber("base", device="cpu", kernels=False)


max_base_each_plan = each_plan("max_base")


@pytest.fixture(scope="session")
def openai_base():
    from maxwhisper_baselines.openai_backend import OpenAITranscriber

    return OpenAITranscriber("base", device="cpu")


@pytest.mark.parametrize("part, language", [(0, "en"), (1, "de")])
def test_language_probabilities_equal_openai(max_base_each_plan, openai_base, multilingual_audio, part, language):
    """The probabilities of all 99 languages from the first window, given the same mel."""
    audio = multilingual_audio[part * 30 * SAMPLE_RATE : (part + 1) * 30 * SAMPLE_RATE]
    mel = log_mel_spectrogram(audio, 80, padding=N_SAMPLES)[:, :N_FRAMES]
    net = max_base_each_plan.net
    _, (ours,) = detect_language(net, net.encode(mel[None]))
    with torch.no_grad():
        _, ref = openai_base.net.detect_language(torch.from_numpy(mel))
    assert max(ours, key=ours.get) == max(ref, key=ref.get) == language
    assert sorted(ours) == sorted(ref) and len(ours) == 99
    assert max(abs(ours[c] - ref[c]) for c in ref) < 1e-4


def test_detected_language_and_first_window_equal_openai(max_base_each_plan, openai_base, multilingual_audio):
    audio = multilingual_audio[: 30 * SAMPLE_RATE]
    ours, ref = max_base_each_plan.transcribe(audio, DecodeOptions()), openai_base.transcribe(audio, DecodeOptions())
    assert ours.language == ref.language == "en"
    assert ours.language_probability == pytest.approx(ref.language_probability, abs=1e-4)
    assert ours.tokens == ref.tokens
    assert "Permission is hereby granted" in ours.text


def test_translate_german_to_english_equals_openai(max_base, openai_base, multilingual_audio):
    """(base's greedy translation of this sentence falls below the log probability threshold;
    at the next temperature the samples would differ, so the schedule here is greedy only)"""
    audio = multilingual_audio[30 * SAMPLE_RATE : 43 * SAMPLE_RATE]  # the first German sentence
    options = DecodeOptions(task="translate", temperature=(0.0,))
    ours, ref = max_base.transcribe(audio, options), openai_base.transcribe(audio, options)
    assert ours.language == "de"
    assert ours.tokens == ref.tokens
    assert "software" in ours.text.lower() and ours.text.isascii()
    german = max_base.transcribe(audio, DecodeOptions(language="de"))
    assert german.language_probability is None and "Software" in german.text and german.text != ours.text


# --- any checkpoint by path: a random .pt of another shape ------------------------------------------


@pytest.fixture(scope="session", params=["float16", "float32"])
def random_pt(tmp_path_factory, request) -> Path:
    """An openai-whisper .pt of RANDOM_DIMS with random weights: float16 as openai ships them (the
    CPU step graph's linears then read them as float16), and float32 values that are not float16
    numbers (float32 linears). The token embeddings are large so that the logits are far apart (no
    near-ties between MAX and torch)."""
    return write_random_pt(tmp_path_factory.mktemp("checkpoint"), request.param)


def write_random_pt(folder: Path, dtype: str) -> Path:
    rng = np.random.default_rng(0)
    state = {}
    for name, shape in expected_shapes(RANDOM_DIMS).items():
        scale = 1.0 if name == "decoder.token_embedding.weight" else 0.2
        value = (
            np.ones(shape)
            if name.endswith("ln.weight") or name.endswith("ln_post.weight")
            else rng.standard_normal(shape) * scale
        )
        state[name] = torch.from_numpy(value.astype(dtype))
    path = folder / f"random-large-v3-layout-{dtype}.pt"
    torch.save({"dims": asdict(RANDOM_DIMS), "model_state_dict": state}, path)
    return path


def test_checkpoint_of_another_shape_runs_through_max(random_pt, jfk_audio):
    from maxwhisper.max_backend import MaxTranscriber

    mx = MaxTranscriber(str(random_pt), device="cpu")
    ref_module = whisper.load_model(str(random_pt), device="cpu")  # openai's own loader
    assert mx.checkpoint.dims == RANDOM_DIMS and mx.checkpoint.alignment_heads is None
    assert mx.plan.step_linears_kernel == random_pt.name.endswith("float16.pt")

    # one decoder step: the logits after the sot sequence
    mel = log_mel_spectrogram(jfk_audio, 128, padding=N_SAMPLES)[:, :N_FRAMES]
    sot = np.array([[50258, 50259, 50360]], np.int64)  # <|startoftranscript|><|en|><|transcribe|>
    features = mx.net.encode(mel[None])
    ours = mx.net.inference().logits(sot, features, (-1,))
    with torch.no_grad():
        ref = ref_module.decoder(torch.from_numpy(sot), ref_module.encoder(torch.from_numpy(mel[None])))[:, -1:].numpy()
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max()

    # a whole greedy transcription with word timing by the default heads (no thresholds: no sampling)
    options = DecodeOptions(temperature=(0.0,), no_speech_threshold=None, word_timestamps=True)
    ours = mx.transcribe(jfk_audio, options)
    ref = openai_transcribe(ref_module, jfk_audio, options)
    assert ours.language == ref["language"]
    assert ours.tokens == [t for s in ref["segments"] for t in s["tokens"]] and len(ours.tokens) > 10
    ow, rw = words_of(ours), [w for s in ref["segments"] for w in s["words"]]
    assert [w.word for w in ow] == [w["word"] for w in rw]
    assert max(max(abs(a.start - b["start"]), abs(a.end - b["end"])) for a, b in zip(ow, rw)) <= WORD_TOLERANCE_S


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_json_carries_language_and_words(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "maxwhisper",
            "transcribe",
            str(AUDIO / "jfk.flac"),
            "--device",
            "cpu",
            "--word-timestamps",
            "--beam-size",
            "2",
            "--initial-prompt",
            "Kennedy",
            "--format",
            "json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["language"] == "en" and "language_probability" in d
    words = [w for s in d["segments"] for w in s["words"]]
    assert {"word", "start", "end", "probability"} <= set(words[0])
    assert "".join(w["word"] for w in words).strip() == d["text"].strip()
    assert d["options"]["beam_size"] == 2 and d["options"]["initial_prompt"] == "Kennedy"


def test_portable_fp16_runs_end_to_end_on_the_cpu(tmp_path, jfk_audio):
    """The GPU's fp16 graphs (portable plan), run on the CPU with a small random checkpoint: the
    dtype plumbing end to end. fp16 keeps 11 significant bits, so each rounding is off by up to
    2^-11 relative; the logits are checked within FP16_LOGIT_TOLERANCE of their largest value
    against openai-whisper in float32, and the greedy tokens up to the first place where the
    reference's two best logits lie closer than that (a near tie fp16 may decide either way)."""
    from whisper.decoding import DecodingOptions
    from whisper.decoding import decode as whisper_decode

    from maxwhisper.decoding import WindowOptions, decode
    from maxwhisper.max_backend import MaxTranscriber

    path = write_random_pt(tmp_path, "float16")
    mx = MaxTranscriber(str(path), device="cpu", precision="fp16", kernels=False)
    assert mx.plan.name == "portable" and mx.plan.dtype.name == "float16"
    ref_module = whisper.load_model(str(path), device="cpu")

    mel = log_mel_spectrogram(jfk_audio, 128, padding=N_SAMPLES)[:, :N_FRAMES]
    sot = list(
        get_tokenizer(
            True, num_languages=mx.checkpoint.num_languages, language="en"
        ).sot_sequence_including_notimestamps
    )
    ours = decode(mx.net, mel, WindowOptions(language="en", sample_len=24, without_timestamps=True))
    ref = whisper_decode(
        ref_module,
        torch.from_numpy(mel),
        DecodingOptions(language="en", sample_len=24, without_timestamps=True, fp16=False),
    )
    sequence = sot + ref.tokens
    with torch.no_grad():
        ref_logits = ref_module.decoder(torch.tensor([sequence]), ref_module.encoder(torch.from_numpy(mel[None])))[0]
    first = len(sot) - 1  # the logits before each sampled token, and before eot
    ref_logits = ref_logits[first:].numpy()
    positions = tuple(range(first, len(sequence)))
    our_logits = mx.net.inference().logits(np.array([sequence], np.int64), mx.net.encode(mel[None]), positions)[0]
    scale = np.abs(ref_logits).max()
    print(f"fp16 logits: max error {np.abs(our_logits - ref_logits).max() / scale:.2e} of the largest")
    assert np.abs(our_logits - ref_logits).max() <= FP16_LOGIT_TOLERANCE * scale

    same = next((i for i, (a, b) in enumerate(zip(ours.tokens, ref.tokens)) if a != b), None)
    print(f"tokens: {len(ours.tokens)} and {len(ref.tokens)}, first difference at {same}")
    if same is None:
        assert ours.tokens == ref.tokens
    else:  # where they part, the reference's choice and ours were within the fp16 tolerance of each other
        row = ref_logits[same]
        assert row[ref.tokens[same]] - row[ours.tokens[same]] <= 2 * FP16_LOGIT_TOLERANCE * scale
