"""maxwhisper.decoding / maxwhisper.transcribe against openai-whisper.

The network is openai-whisper's own PyTorch module (tests/torch_reference.py) in both runs, fed
the same mel, so every difference is one of decoding: the tokens, segment times and texts must be
identical to `whisper.transcribe`'s. Log and no-speech probabilities differ only by how torch's
float32 sums round, within `maxwhisper.decoding`'s tolerances, whichever kernel torch runs
(ATEN_CPU_CAPABILITY=avx2, avx512 or default).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch as torch
import whisper as whisper
import whisper.decoding as wd
from torch_reference import TorchModel, openai_transcribe, whisper_mel

from maxwhisper import decoding as md
from maxwhisper.api import DecodeOptions, MaxWhisperError
from maxwhisper.checkpoint import Checkpoint, ModelDims, expected_shapes
from maxwhisper.tokenizer import get_tokenizer
from maxwhisper.transcribe import TranscribeOutput, transcribe

GREEDY = DecodeOptions()  # beam_size 1: greedy at temperature 0, fallback schedule 0.0 ... 1.0


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Both sides run the same torch model in this process, so the thread count can't make them
    differ; one thread is several times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_decoding_modules_import_neither_torch_nor_max():
    code = (
        "import sys; import maxwhisper.tokenizer, maxwhisper.decoding, maxwhisper.transcribe; "
        "bad = [m for m in ('torch', 'max', 'whisper') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- numerics --------------------------------------------------------------------------------


def _logit_rows(n_vocab=51864, seed=0):
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((6, n_vocab)) * rng.uniform(1, 8, (6, 1))).astype(np.float32)
    rows[1, ::3] = -np.inf  # masked, as the logit filters leave them
    rows[2, n_vocab // 2] += 30  # one dominant token: the sum is mostly tiny terms
    return rows


def _exact_log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax of float32 logits with the shift in float32 (as everyone does) and the rest in
    float64 through math.fsum: the value ours must round to within an ulp."""
    import math

    shifted = x - x.max(axis=-1, keepdims=True)
    log_sums = [math.log(math.fsum(np.exp(row.astype(np.float64)))) for row in shifted]
    return shifted.astype(np.float64) - np.array(log_sums)[:, None]


@pytest.mark.parametrize("n_vocab", [51864, 51865, 51866, 1501, 5])
def test_log_softmax_is_exact_to_an_ulp_and_torch_s_within_the_tolerance(n_vocab):
    x = _logit_rows(n_vocab)
    ours = md.log_softmax(x)
    exact = _exact_log_softmax(x)
    finite = np.isfinite(exact)
    assert ours.dtype == np.float32 and np.array_equal(np.isfinite(ours), finite)
    ulp = np.spacing(np.maximum(np.abs(ours), np.float32(np.log(n_vocab))))
    assert (np.abs(ours[finite] - exact[finite]) <= ulp[finite]).all()

    print(f"torch's kernel here: {torch.backends.cpu.get_cpu_capability()}")
    ref = torch.nn.functional.log_softmax(torch.from_numpy(x), dim=-1).numpy()
    assert np.array_equal(np.isfinite(ref), finite)
    tolerance = np.array([md.logprob_tolerance(n_vocab, v) for v in np.abs(ref[finite])])
    assert (np.abs(ours[finite] - ref[finite]) <= tolerance).all()
    ref_p = torch.from_numpy(x).softmax(-1).numpy()
    np.testing.assert_allclose(md.softmax(x), ref_p, rtol=md.probability_tolerance(n_vocab), atol=0)
    for row in x:
        ref_lse = torch.logsumexp(torch.from_numpy(row), -1).item()
        assert md.logsumexp(row) == pytest.approx(ref_lse, abs=md.logprob_tolerance(n_vocab, ref_lse))


@pytest.fixture(scope="module")
def jfk_logit_rows(torch_tiny_en, jfk_audio) -> np.ndarray:
    """tiny.en's logits at each step of its greedy jfk transcript: float32 [n, 51864]."""
    mel = whisper_mel(jfk_audio, 80)[:, :3000]
    result = wd.decode(torch_tiny_en.module, torch.from_numpy(mel), wd.DecodingOptions(language="en", fp16=False))
    sot_sequence = list(get_tokenizer(False).sot_sequence)
    with torch.no_grad():
        logits = torch_tiny_en.module.decoder(
            torch.tensor([sot_sequence + result.tokens]), torch_tiny_en.encode(mel[None])
        )
    return logits[0, len(sot_sequence) - 1 :].numpy()


@pytest.mark.parametrize("lanes", [8, 16, 32])
def test_the_tolerance_covers_float32_lane_sums(jfk_logit_rows, lanes):
    """What torch does with AVX2 (8 lanes), AVX-512 (16) or wider, emulated in numpy on a real
    decoder's logits (confident rows, where float32 sums lose the most): the normaliser's error
    stays inside the bound the tolerances use; with 8 lanes it reaches a tenth of it, so the bound
    is the right size, not idle."""
    x = jfk_logit_rows
    n = x.shape[1]
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)  # float32
    m = n - n % lanes
    acc = e[:, :m].reshape(len(x), -1, lanes).sum(axis=1, dtype=np.float32)  # each lane in sequence
    acc[:, : n - m] += e[:, m:]
    while acc.shape[1] > 1:
        acc = acc[:, : acc.shape[1] // 2] + acc[:, acc.shape[1] // 2 :]
    error = np.abs(acc[:, 0] / np.exp(shifted.astype(np.float64)).sum(axis=1) - 1)
    tolerance = md.probability_tolerance(n)
    print(f"{lanes} lanes over {len(x)} rows: relative error max {error.max():.2e}, tolerance {tolerance:.2e}")
    assert error.max() <= tolerance
    assert lanes > 8 or error.max() > tolerance / 10


class _RecordingInference:
    def __init__(self):
        self.rearranged = []

    def rearrange_kv_cache(self, source_indices):
        if list(source_indices) != list(range(len(source_indices))):
            self.rearranged.append(list(source_indices))


@pytest.mark.parametrize("beam_size,patience", [(3, None), (2, 2.0), (5, 1.0)])
def test_beam_search_steps_equal_whisper(beam_size, patience):
    n_audio, n_vocab, eot = 2, 300, 299
    rng = np.random.default_rng(beam_size)
    ours_inf, ref_inf = _RecordingInference(), _RecordingInference()
    ours = md.BeamSearchDecoder(beam_size, eot, ours_inf, patience)
    ref = wd.BeamSearchDecoder(beam_size, eot, ref_inf, patience)
    tokens = np.tile(np.array([[5, 6, 7]], dtype=np.int64), (n_audio * beam_size, 1))
    ref_tokens = torch.from_numpy(tokens.copy())
    sums = np.zeros(n_audio * beam_size, dtype=np.float32)
    ref_sums = torch.zeros(n_audio * beam_size)
    for step in range(30):
        logits = (rng.standard_normal((n_audio * beam_size, n_vocab)) * 2).astype(np.float32)
        logits[:, eot] += step / 6  # finishing gets likelier
        tokens, done = ours.update(tokens, logits, sums)
        ref_tokens, ref_done = ref.update(ref_tokens, torch.from_numpy(logits), ref_sums)
        assert np.array_equal(tokens, ref_tokens.numpy()) and done == ref_done
        tolerance = md.logprob_tolerance(n_vocab, np.abs(sums).max())
        np.testing.assert_allclose(sums, ref_sums.numpy(), rtol=0, atol=tolerance)
        for a, b in zip(ours.finished_sequences, ref.finished_sequences):
            assert list(a) == list(b) and list(a.values()) == pytest.approx(list(b.values()), abs=tolerance)
        if done:
            break
    assert ours_inf.rearranged == ref_inf.rearranged
    shape = (n_audio, beam_size, -1)
    seqs, lps = ours.finalize(tokens.reshape(shape), sums.reshape(n_audio, beam_size))
    ref_seqs, ref_lps = ref.finalize(ref_tokens.reshape(shape), ref_sums.reshape(n_audio, beam_size))
    assert seqs == [[t.tolist() for t in group] for group in ref_seqs]
    tolerance = md.logprob_tolerance(n_vocab, np.abs(sums).max())
    assert all(lp == pytest.approx(ref_lp, abs=tolerance) for lp, ref_lp in zip(lps, ref_lps))
    for penalty in (None, 0.0, 0.6, 1.0):
        ref_rank = wd.MaximumLikelihoodRanker(penalty).rank(ref_seqs, ref_lps)
        assert md.MaximumLikelihoodRanker(penalty).rank(seqs, ref_lps) == [int(i) for i in ref_rank]


def test_greedy_steps_equal_whisper():
    rng = np.random.default_rng(0)
    eot = 99
    ours, ref = md.GreedyDecoder(0.0, eot, rng), wd.GreedyDecoder(0.0, eot)
    tokens = np.array([[1, 2], [1, 2], [1, eot]], dtype=np.int64)
    ref_tokens = torch.from_numpy(tokens.copy())
    sums, ref_sums = np.zeros(3, dtype=np.float32), torch.zeros(3)
    for _ in range(5):
        logits = rng.standard_normal((3, 100)).astype(np.float32)
        tokens, done = ours.update(tokens, logits, sums)
        ref_tokens, ref_done = ref.update(ref_tokens, torch.from_numpy(logits), ref_sums)
        assert np.array_equal(tokens, ref_tokens.numpy()) and done == ref_done
        np.testing.assert_allclose(sums, ref_sums.numpy(), rtol=0, atol=md.logprob_tolerance(100, np.abs(sums).max()))


def test_sampling_is_reproducible_and_follows_the_distribution():
    logits = np.log(np.array([[0.7, 0.2, 0.1, 1e-30]], dtype=np.float32).repeat(4000, 0))
    draws = []
    for _ in range(2):
        decoder = md.GreedyDecoder(1.0, 3, np.random.default_rng(7))
        tokens, _ = decoder.update(np.zeros((4000, 1), dtype=np.int64), logits, np.zeros(4000, dtype=np.float32))
        draws.append(tokens[:, -1])
    assert np.array_equal(*draws)
    assert np.abs(np.bincount(draws[0], minlength=4) / 4000 - [0.7, 0.2, 0.1, 0.0]).max() < 0.03


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(without_timestamps=True, suppress_tokens="", suppress_blank=False),
        dict(prompt=(50, 51, 52) * 200, prefix="so my fellow", suppress_tokens="1,2,-1", beam_size=3, patience=2.0),
        dict(prompt="an initial prompt", temperature=0.5, best_of=4, max_initial_timestamp=None),
    ],
)
def test_task_setup_equals_whisper(torch_tiny_en, options):
    ours = md.DecodingTask(torch_tiny_en, md.WindowOptions(language="en", **options))
    ref_options = dict(options)
    if isinstance(ref_options.get("prompt"), tuple):
        ref_options["prompt"] = list(ref_options["prompt"])
    ref = wd.DecodingTask(torch_tiny_en.module, wd.DecodingOptions(language="en", fp16=False, **ref_options))
    assert ours.initial_tokens == ref.initial_tokens
    assert (ours.sample_begin, ours.sot_index, ours.n_group, ours.sample_len) == (
        ref.sample_begin,
        ref.sot_index,
        ref.n_group,
        ref.sample_len,
    )
    assert [type(f).__name__ for f in ours.logit_filters] == [type(f).__name__ for f in ref.logit_filters]
    for a, b in zip(ours.logit_filters, ref.logit_filters):
        if isinstance(a, md.SuppressTokens):
            assert a.suppress_tokens == list(b.suppress_tokens)
        if isinstance(a, md.ApplyTimestampRules):
            assert a.max_initial_timestamp_index == b.max_initial_timestamp_index
    assert type(ours.decoder).__name__ == type(ref.decoder).__name__


def test_invalid_window_options_are_rejected(torch_tiny_en):
    for bad in [
        dict(beam_size=2, best_of=2),
        dict(best_of=3),
        dict(patience=2.0),
        dict(length_penalty=2.0),
        dict(beam_size=1, patience=0.1),
    ]:
        with pytest.raises(MaxWhisperError):
            md.DecodingTask(torch_tiny_en, md.WindowOptions(**bad))


# --- whole transcriptions against whisper.transcribe -----------------------------------------


def window_tolerances(n_vocab: int, segment) -> tuple[float, float]:
    """How far a window's avg_logprob (absolute) and no_speech_prob (relative) may be from a float32
    reference's: an average of at most n_text_ctx / 2 + 1 log probabilities (the sample length)."""
    return md.logprob_tolerance(n_vocab, segment.avg_logprob * 225), md.probability_tolerance(n_vocab)


def assert_same_transcript(ours: TranscribeOutput, ref: dict, n_vocab: int = 51864):
    """Tokens, times, texts and threshold decisions (temperatures) equal; the probabilities within
    the tolerance of float32 sums. The decisions can be equal only where none was a close call."""
    assert not ours.close_calls
    assert ours.language == ref["language"]
    assert [list(s.tokens) for s in ours.segments] == [s["tokens"] for s in ref["segments"]]
    for s, r in zip(ours.segments, ref["segments"]):
        assert (s.id, s.seek, s.start, s.end, s.text, s.temperature) == (
            r["id"],
            r["seek"],
            r["start"],
            r["end"],
            r["text"],
            r["temperature"],
        )
        logprob_tolerance, probability_tolerance = window_tolerances(n_vocab, s)
        assert s.avg_logprob == pytest.approx(r["avg_logprob"], abs=logprob_tolerance)
        assert s.compression_ratio == r["compression_ratio"]
        assert s.no_speech_prob == pytest.approx(r["no_speech_prob"], rel=probability_tolerance, abs=0)
    assert ours.text == ref["text"]


_reference_cache: dict = {}


def reference(model: TorchModel, audio: np.ndarray, options: DecodeOptions, clip_timestamps=()) -> dict:
    """whisper.transcribe's result, computed once per model, audio and options in a session."""
    key = (id(model), id(audio), options, tuple(clip_timestamps))
    if key not in _reference_cache:
        extra = {"clip_timestamps": list(clip_timestamps)} if clip_timestamps else {}
        _reference_cache[key] = (model, audio, openai_transcribe(model.module, audio, options, **extra))
    return _reference_cache[key][2]


def run_both(model: TorchModel, audio: np.ndarray, options: DecodeOptions, clip_timestamps=()):
    ours = transcribe(model, whisper_mel(audio, model.dims.n_mels), options, clip_timestamps=clip_timestamps)
    return ours, reference(model, audio, options, clip_timestamps)


def test_jfk_greedy_equals_whisper(torch_tiny_en, jfk_audio):
    ours, ref = run_both(torch_tiny_en, jfk_audio, GREEDY)
    assert_same_transcript(ours, ref)
    assert "ask not what your country can do for you" in ours.text
    assert ours.language == "en" and ours.language_probability is None
    assert ours.encode_s > 0 and ours.decode_s > 0


def test_lecture_two_windows_greedy_equals_whisper(torch_tiny_en, lecture_60s_audio):
    ours, ref = run_both(torch_tiny_en, lecture_60s_audio, GREEDY)
    assert_same_transcript(ours, ref)
    assert len({s.seek for s in ours.segments}) >= 2  # more than one window
    assert ours.segments[-1].end > 45


def test_jfk_beam_search_equals_whisper(torch_tiny_en, jfk_audio):
    ours, ref = run_both(torch_tiny_en, jfk_audio, GREEDY.replace(beam_size=5))
    assert_same_transcript(ours, ref)


@pytest.mark.parametrize(
    "changes",
    [
        dict(without_timestamps=True),
        dict(initial_prompt="President Kennedy's inaugural address, 1961."),
        dict(condition_on_previous_text=False, temperature=(0.0, 0.4)),
        dict(suppress_tokens="", suppress_blank=False, no_speech_threshold=None),
    ],
    ids=["without_timestamps", "initial_prompt", "no_conditioning", "no_suppression"],
)
def test_jfk_options_equal_whisper(torch_tiny_en, jfk_audio, changes):
    ours, ref = run_both(torch_tiny_en, jfk_audio, GREEDY.replace(**changes))
    assert_same_transcript(ours, ref)


def test_jfk_clips_equal_whisper(torch_tiny_en, jfk_audio):
    ours, ref = run_both(torch_tiny_en, jfk_audio, GREEDY, clip_timestamps=(1.5, 6.0, 7.0))
    assert_same_transcript(ours, ref)
    assert ours.segments[0].seek == 150


def test_decode_one_window_equals_whisper(torch_tiny_en, jfk_audio):
    mel = whisper_mel(jfk_audio, 80)[:, :3000]
    for options in [dict(without_timestamps=True, prompt="Kennedy", prefix="And so")]:
        ours = md.decode(torch_tiny_en, mel, md.WindowOptions(language="en", **options))
        ref = wd.decode(
            torch_tiny_en.module, torch.from_numpy(mel), wd.DecodingOptions(language="en", fp16=False, **options)
        )
        assert (ours.tokens, ours.text, ours.language) == (ref.tokens, ref.text, ref.language)
        logprob_tolerance, probability_tolerance = window_tolerances(51864, ours)
        assert ours.avg_logprob == pytest.approx(ref.avg_logprob, abs=logprob_tolerance)
        assert ours.no_speech_prob == pytest.approx(ref.no_speech_prob, rel=probability_tolerance, abs=0)


def test_threshold_decisions_equal_whisper_s_or_are_reported_as_close(torch_tiny_en, jfk_audio):
    """Thresholds placed around the window's own avg_logprob and no_speech_prob: far from the
    value (3 tolerances) the fallback and the no-speech skip are decided as whisper.transcribe
    decides them and nothing is reported; within the tolerance a CloseCall says so, whichever way
    this run went."""
    first, _ = run_both(torch_tiny_en, jfk_audio, GREEDY)
    window = first.segments[0]
    logprob_tol, probability_tol = window_tolerances(51864, window)
    no_speech_tol = probability_tol * window.no_speech_prob
    cases = []
    for k in (-3, -1 / 3, 1 / 3, 3):  # temperature fallback: to 0.2 below the threshold
        cases.append(
            (
                "avg_logprob",
                abs(k) < 1,
                dict(
                    temperature=(0.0, 0.2),
                    logprob_threshold=window.avg_logprob + k * logprob_tol,
                    no_speech_threshold=None,
                ),
            )
        )
        cases.append(
            (
                "no_speech_prob",
                abs(k) < 1,
                dict(  # logprob_threshold 0: the skip is the no-speech rule's alone
                    temperature=(0.0,),
                    logprob_threshold=0.0,
                    no_speech_threshold=window.no_speech_prob + k * no_speech_tol,
                ),
            )
        )
    decided = {"avg_logprob": [], "no_speech_prob": []}  # (fell back, skipped) where not close
    for quantity, close, changes in cases:
        ours, ref = run_both(torch_tiny_en, jfk_audio, GREEDY.replace(**changes))
        calls = [c for c in ours.close_calls if c.quantity == quantity]
        assert bool(calls) == close, (quantity, changes, ours.close_calls)
        if close:
            assert calls[0].start == 0.0 and abs(calls[0].value - calls[0].threshold) <= calls[0].tolerance
            continue
        assert [(s.seek, s.temperature) for s in ours.segments] == [
            (s["seek"], s["temperature"]) for s in ref["segments"]
        ]
        decided[quantity].append((bool(ours.segments) and ours.segments[0].temperature > 0, not ours.segments))
    # both sides of each threshold were seen: kept, then fell back; skipped, then kept
    assert decided == {
        "avg_logprob": [(False, False), (True, False)],
        "no_speech_prob": [(False, True), (False, False)],
    }


def test_silence_equals_whisper(torch_tiny_en):
    ours, ref = run_both(torch_tiny_en, np.zeros(5 * 16000, dtype=np.float32), GREEDY)
    assert_same_transcript(ours, ref)
    assert ours.text.strip() == ""


def test_our_mel_gives_the_same_jfk_tokens(torch_tiny_en, jfk_audio):
    """With maxwhisper.audio's numpy mel (within ~1e-5 of torch's) instead of whisper's."""
    from maxwhisper.audio import N_SAMPLES, log_mel_spectrogram

    mel = log_mel_spectrogram(jfk_audio, torch_tiny_en.dims.n_mels, padding=N_SAMPLES)
    ours = transcribe(torch_tiny_en, mel, GREEDY)
    ref = reference(torch_tiny_en, jfk_audio, GREEDY)
    assert [list(s.tokens) for s in ours.segments] == [s["tokens"] for s in ref["segments"]]


# --- the protocol as the decoder uses it -----------------------------------------------------


class _Spy:
    """Wraps a WhisperModel; records every logits call and times the network."""

    def __init__(self, model):
        self.model, self.dims = model, model.dims
        self.is_multilingual, self.num_languages = model.is_multilingual, model.num_languages
        self.calls: list[list[tuple[int, int, tuple[int, ...]]]] = []  # per inference: (batch, n, positions)

    def encode(self, mel):
        return self.model.encode(mel)

    def inference(self):
        inner, calls = self.model.inference(), []
        self.calls.append(calls)

        class Inference:
            def logits(_, tokens, features, positions=(-1,)):
                calls.append((tokens.shape[0], tokens.shape[1], tuple(positions)))
                out = inner.logits(tokens, features, positions)
                assert out.dtype == np.float32 and out.shape[:2] == (tokens.shape[0], len(positions))
                return out

            def rearrange_kv_cache(_, source_indices):
                inner.rearrange_kv_cache(source_indices)

            def cleanup_caching(_):
                inner.cleanup_caching()

        return Inference()


def test_inference_calls_follow_the_protocol(torch_tiny_en, jfk_audio):
    spy = _Spy(torch_tiny_en)
    fractions = []
    out = transcribe(spy, whisper_mel(jfk_audio, 80), GREEDY.replace(initial_prompt="Kennedy"), fractions.append)
    assert out.segments
    first = spy.calls[0]
    batch, n0, positions = first[0]
    assert positions == (n0 - 1, -1)  # <|startofprev|> prompt <|startoftranscript|>: sot is last
    assert all(call == (batch, n0 + i, (-1,)) for i, call in enumerate(first[1:], start=1))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_english_only_model_refuses_other_languages_and_translation(torch_tiny_en):
    mel = np.zeros((80, 3100), dtype=np.float32)
    with pytest.raises(MaxWhisperError, match="English-only"):
        transcribe(torch_tiny_en, mel, GREEDY.replace(language="de"))
    with pytest.raises(MaxWhisperError, match="English-only"):
        transcribe(torch_tiny_en, mel, GREEDY.replace(task="translate"))
    with pytest.raises(MaxWhisperError, match="unknown language"):
        transcribe(torch_tiny_en, mel, GREEDY.replace(language="xx"))
    with pytest.raises(MaxWhisperError, match="log-Mel"):
        transcribe(torch_tiny_en, mel[:, :100], GREEDY)
    assert transcribe(torch_tiny_en, mel[:, :3000], GREEDY.replace(language="English")).segments == []


# --- a multilingual model: language detection, language and task tokens ---------------------


@pytest.fixture(scope="module")
def random_multilingual():
    """A small multilingual Whisper with random weights: the output is nonsense, but decoding it
    goes through language detection, the language and task tokens, and odd timestamp patterns."""
    dims = ModelDims(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=2,
    )
    rng = np.random.default_rng(0)
    state = {}
    for name, shape in expected_shapes(dims).items():
        if name.endswith("ln.weight") or name.endswith("ln_post.weight"):
            state[name] = np.ones(shape, np.float32)
        else:
            state[name] = (rng.standard_normal(shape) * (0.5 if "embedding" in name else 0.2)).astype(np.float32)
    ckpt = Checkpoint(name="random", dims=dims, state=state, source="random", ct2_dir=None)
    return TorchModel(ckpt)


@pytest.mark.parametrize(
    "changes", [dict(language=None), dict(language="de", task="translate")], ids=["detected", "german_translate"]
)
def test_random_multilingual_model_equals_whisper(random_multilingual, jfk_audio, changes):
    options = GREEDY.replace(temperature=(0.0,), **changes)  # only greedy can match exactly
    ours, ref = run_both(random_multilingual, jfk_audio, options)
    n_vocab = random_multilingual.dims.n_vocab
    assert_same_transcript(ours, ref, n_vocab)
    if options.language is None:
        _, probs = random_multilingual.module.detect_language(torch.from_numpy(whisper_mel(jfk_audio, 80)[:, :3000]))
        assert ours.language_probability == pytest.approx(probs[ours.language], rel=md.probability_tolerance(n_vocab))


# --- temperature fallback and the prompt, with a fake network (sampling can't match torch's) ---


class _RandomLogitsModel:
    """A WhisperModel whose logits are random (eot likely enough to end windows); records the
    first token sequence each decoding runs."""

    dims = ModelDims(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=8,
        n_audio_head=1,
        n_audio_layer=1,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=8,
        n_text_head=1,
        n_text_layer=1,
    )
    is_multilingual, num_languages = False, 99

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.first_tokens: list[list[int]] = []

    def encode(self, mel):
        return None

    def inference(self):
        model, eot = self, get_tokenizer(False).eot

        class Inference:
            steps = 0

            def logits(self, tokens, features, positions=(-1,)):
                if len(positions) == 2:
                    model.first_tokens.append(tokens[0].tolist())
                out = (model.rng.standard_normal((tokens.shape[0], len(positions), 51864)) * 2).astype(np.float32)
                out[..., eot] = 2.0 + self.steps  # ends after some 7 tokens
                self.steps += 1
                return out

            def rearrange_kv_cache(self, source_indices):
                pass

            def cleanup_caching(self):
                pass

        return Inference()


@pytest.mark.parametrize("schedule,prompt_kept", [((0.0, 0.2, 0.4), True), ((0.0, 0.6), False)])
def test_fallback_runs_the_schedule_and_resets_the_prompt_above_half(schedule, prompt_kept):
    model = _RandomLogitsModel()
    mel = np.zeros((80, 7000), dtype=np.float32)  # 40 s and the padding: at least two windows
    options = GREEDY.replace(temperature=schedule, logprob_threshold=0.0, no_speech_threshold=None)
    out = transcribe(model, mel, options)  # every decoding "fails": the last temperature's result is kept
    windows = len(model.first_tokens) // len(schedule)
    assert windows >= 2 and len(model.first_tokens) == windows * len(schedule)
    assert {s.temperature for s in out.segments} == {schedule[-1]}
    sot_prev = get_tokenizer(False).sot_prev
    later_prompts = [tokens[0] == sot_prev for tokens in model.first_tokens[len(schedule) :]]
    assert all(later_prompts) if prompt_kept else not any(later_prompts)
    again = transcribe(_RandomLogitsModel(), mel, options)  # the default rng is seeded: reproducible
    assert [s.tokens for s in again.segments] == [s.tokens for s in out.segments]
