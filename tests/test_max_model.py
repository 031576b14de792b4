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
