"""Scoring (maxwhisper.scoring): the normaliser, WER, agreement and the word diff, and that the app
and the benchmark, which both score with it, report the same WER for the same texts."""

from __future__ import annotations

import pytest

from maxwhisper import scoring
from maxwhisper.bench.clips import REFERENCES
from maxwhisper.bench.records import add_accuracy, make_records
from showcase.comparison import comparison_html


def test_normalisation_ignores_case_punctuation_and_number_spelling():
    assert scoring.normalize(" And so, my fellow Americans!") == "and so my fellow americans"
    assert scoring.normalize("ten dollars") == scoring.normalize("$10")
    assert (
        scoring.wer(
            REFERENCES["jfk.flac"],
            " and so my fellow americans ask not what your country can do for you ask what you can do for your country",
        )
        == 0.0
    )


def test_wer_counts_substitutions_deletions_insertions():
    assert scoring.wer("a b c d", "a x c d") == pytest.approx(0.25)
    assert scoring.wer("a b c d", "a b") == pytest.approx(0.5)
    assert scoring.wer("a b", "a b c d") == pytest.approx(1.0)  # two insertions
    assert scoring.wer("a b c", "") == 1.0
    assert scoring.wer("", "anything") is None
    assert scoring.wer(", ; !", "x") is None  # nothing left after normalising


def test_pooled_wer_weighs_by_reference_words():
    # 1 error in 4 words + 1 error in 1 word = 2 / 5, not the mean of 0.25 and 1.0
    assert scoring.pooled_wer([("a b c d", "a b c x"), ("e", "f")]) == pytest.approx(0.4)
    assert scoring.pooled_wer([("", "x")]) is None


def test_agreement_is_one_minus_wer_floored_at_zero():
    assert scoring.agreement("a b c d", "a b c d") == 1.0
    assert scoring.agreement("a b c d", "a b c x") == pytest.approx(0.75)
    assert scoring.agreement("a", "b c d e") == 0.0


def test_word_diff(monkeypatch):
    # the app's own normaliser kept "don't"; openai-whisper's, which the benchmark uses, expands it
    assert (
        scoring.normalize("And so, my fellow Americans — ask NOT! Don't") == "and so my fellow americans ask not do not"
    )
    wer, diff = scoring.word_diff("the cat sat", "the cat sat")
    assert wer == 0 and diff == "the cat sat"
    wer, diff = scoring.word_diff("the cat sat on", "the bat sat on it")
    assert wer == pytest.approx(0.5)
    assert '<del style="color:#b91c1c">cat</del>' in diff and ">bat</ins>" in diff and ">it</ins>" in diff
    assert scoring.word_diff("", "words") == (None, "words")
    assert scoring.word_diff("", "")[0] == 0.0
    assert scoring.word_diff("a b", "") == (1.0, '<del style="color:#b91c1c">a b</del>')
    monkeypatch.setattr(scoring, "normalize", lambda text: text)  # the normaliser leaves no HTML symbol to escape
    assert scoring.word_diff("do", "don't")[1].endswith(">don&#x27;t</ins>")  # escaped for HTML


def test_word_diff_with_context_shows_only_the_words_near_a_difference():
    text = "a b c d e f g h i j"
    assert scoring.word_diff(text, text, context=2) == (0.0, text)  # nothing differs: all of it
    wer, diff = scoring.word_diff(text, "a b x d e f g h i y", context=2)
    assert wer == pytest.approx(0.2)
    assert diff.startswith("a b <del") and ">x</ins> d e … h i <del" in diff and diff.endswith(">y</ins>")
    _, diff = scoring.word_diff(text, "a b c d e f g h i y", context=2)
    assert diff.startswith("… h i <del")  # the shared words before the only difference: the last two


@pytest.mark.parametrize(
    "reference, hypothesis, expected",
    [
        ("It cost ten dollars.", "it cost $10", 0.0),  # the app's former normaliser: 2 errors in 4 words
        ("Don't stop.", "do not stop", 0.0),  # the app's former normaliser: 2 errors in 2 words
        ("The cat sat on", "the bat sat on it", 0.5),
    ],
)
def test_the_app_and_the_benchmark_report_the_same_wer(reference, hypothesis, expected):
    run = {"total_s": 1.0, "features_s": None, "encode_s": None, "decode_s": None}
    clip = {
        "audio": "clip.flac",
        "audio_s": 1.0,
        "warmup_s": 1.0,
        "text": hypothesis,
        "tokens": [],
        "language": "en",
        "deterministic": True,
        "peak_rss_mib": 1.0,
        "runs": [run],
    }
    worker = {
        "backend": "max",
        "model": "tiny.en",
        "device": "cpu",
        "precision": "fp32",
        "load_s": 0.0,
        "compile_s": 0.0,
        "rss_after_load_mib": 1.0,
        "clips": [clip],
    }
    (record,), _ = make_records(worker, threads=1, repeats=1)
    add_accuracy([record], references={"clip.flac": reference})
    assert record.wer == pytest.approx(expected)
    shown = comparison_html("vs your reference text", reference, hypothesis)
    assert f"WER {100 * expected:.1f} %" in shown
