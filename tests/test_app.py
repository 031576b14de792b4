"""The app's logic at handler level (maxwhisper.app_support), without a browser.

The real run loads the three tiny.en transcribers once per session (MAX: ~6 s from the compile
cache, minutes cold); the error paths use fakes and load nothing.
"""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from maxwhisper import app_support as support
from maxwhisper.api import CloseCall, DecodeOptions, Segment, Timings, TranscriptionResult
from maxwhisper.registry import BACKENDS

AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


@pytest.fixture(scope="session")
def app_cache() -> support.ModelCache:
    """A ModelCache with tiny.en loaded on cpu in each of the three implementations."""
    cache = support.ModelCache()
    for backend in BACKENDS:
        cache.get(backend, "tiny.en", "cpu")
    return cache


@pytest.fixture(scope="session")
def jfk_run(app_cache, tmp_path_factory):
    steps = []
    comparison = support.run_comparison(
        str(AUDIO / "jfk.flac"), list(BACKENDS), "tiny.en", "cpu", DecodeOptions(), app_cache, max_seconds=600,
        reference_text="And so, my fellow Americans: ask not what your country can do for you.",
        progress=lambda fraction, desc=None: steps.append((fraction, desc)), out_dir=tmp_path_factory.mktemp("out"))
    return comparison, steps


def test_three_transcripts_of_jfk(jfk_run):
    comparison, _ = jfk_run
    assert list(comparison.panels) == list(BACKENDS)
    for backend, panel in comparison.panels.items():
        assert panel.error is None, f"{backend}: {panel.error}"
        assert JFK in support.normalize(panel.text), backend
        assert "real time" in panel.summary
        assert panel.segments.startswith("[00:00.000 --> ")
    assert isinstance(comparison.timing_figure, go.Figure) and isinstance(comparison.rtf_figure, go.Figure)
    assert {t.name for t in comparison.timing_figure.data} == {"features", "encode", "decode", "other", "load",
                                                                "compile"}
    assert "11.0 s of audio" in comparison.message


def test_word_timestamps_and_prompt_reach_the_panels(app_cache, tmp_path):
    options = DecodeOptions(word_timestamps=True, initial_prompt="President Kennedy's inaugural address.",
                            condition_on_previous_text=False, hallucination_silence_threshold=2.0)
    comparison = support.run_comparison(str(AUDIO / "jfk.flac"), ["max", "openai"], "tiny.en", "cpu", options,
                                        app_cache, max_seconds=600, reference_text="", out_dir=tmp_path)
    max_panel, openai_panel = comparison.panels["max"], comparison.panels["openai"]
    assert max_panel.error is None and openai_panel.error is None
    assert re.search(r"Americans,?@\d+\.\d\ds\(0\.\d\d\)", max_panel.segments), max_panel.segments
    assert max_panel.segments == openai_panel.segments  # same words, times and probabilities to 2 decimals


def test_compared_with_openai_and_the_reference_text(jfk_run):
    panels = jfk_run[0].panels
    assert "Reference implementation" in panels["openai"].diff_html
    for backend in ("max", "faster"):  # same weights, same greedy decoding: the same tokens as openai-whisper
        assert "vs openai-whisper (PyTorch)</b>: WER 0.0 %, identical tokens" in panels[backend].diff_html
    for panel in panels.values():  # the pasted text stops half way: the rest shows as added words
        assert "vs your reference text</b>: WER 57.1 %" in panel.diff_html
        assert "<ins" in panel.diff_html


def test_downloads(jfk_run):
    files = [Path(f) for f in jfk_run[0].panels["max"].files]
    assert [f.name for f in files] == ["jfk.max.txt", "jfk.max.srt", "jfk.max.vtt"]
    assert JFK in support.normalize(files[0].read_text())
    assert "00:00:00,000 --> 00:00:07,740" in files[1].read_text()
    assert files[2].read_text().startswith("WEBVTT")


def test_progress_goes_forward_to_done(jfk_run):
    steps = jfk_run[1]
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("MAX Graph" in desc and "transcribing" in desc for _, desc in steps)


def test_component_checks_table(app_cache):
    """The table around selfcheck.run_checks (all components are checked in test_max_model); these
    three reuse the loaded graphs, the others compile their own."""
    components = ("encoder", "decoder_step", "transcript")
    updates = list(support.run_component_checks(app_cache, "tiny.en", "cpu", components))
    rows, message = updates[-1]
    assert [r[0] for r in rows] == list(components)
    assert all(r[1] == "✓ pass" for r in rows), rows
    assert rows[2][2] == "0 tokens differ" and len(rows[0]) == len(support.CHECK_HEADERS)
    assert message.startswith("**3/3 passed**")
    assert [len(r) for r, _ in updates] == [0, 0, 1, 2, 3, 3]  # rows arrive one by one


# --- input errors and failures: fakes, nothing loaded -----------------------------------------

class FakeTranscriber:
    def __init__(self, backend, text="hello world", error=None, close_calls=()):
        self.backend, self.model, self.device, self.precision = backend, "fake", "cpu", "fp32"
        self.load_s, self.compile_s = 0.5, 0.0
        self.text, self.error, self.close_calls = text, error, close_calls

    def transcribe(self, audio, options=DecodeOptions()):
        if self.error:
            raise self.error
        seg = Segment(0, 0, 0.0, 1.0, " " + self.text, (1, 2))
        return TranscriptionResult(self.text, [seg], "en", self.backend, "fake", "cpu", "fp32", len(audio) / 16000,
                                   Timings(0.5, 0.0, None, 0.1, None, 0.2), options, close_calls=self.close_calls)


def no_loading(*args, **kwargs):
    raise AssertionError("a bad input must be refused before any model is loaded")


def corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(b"ID3 this is not an mp3 file" * 20)
    return str(path)


@pytest.mark.parametrize("audio, max_seconds, expected", [
    (None, None, "no audio was given"),
    (b"", None, "empty"),
    ((16000, np.zeros(0, np.int16)), None, "no samples"),
    ((16000, np.zeros(16000, np.int16)), None, "silent"),
    (corrupt_file, None, "cannot read"),
    ((16000, np.full(3 * 16000, 1000, np.int16)), 2.0, "3.0 s long, more than the 2 s limit"),
    (str(AUDIO / "jfk.flac"), 5.0, "more than the 5 s limit"),
])
def test_bad_audio_is_a_message_not_an_exception(audio, max_seconds, expected, tmp_path):
    audio = audio(tmp_path) if callable(audio) else audio
    comparison = support.run_comparison(audio, list(BACKENDS), "tiny.en", "cpu", DecodeOptions(),
                                        support.ModelCache(no_loading), max_seconds=max_seconds)
    assert comparison.message.startswith("⚠ Cannot use this audio:")
    assert expected in comparison.message
    assert comparison.panels == {} and comparison.timing_figure is None


def test_no_implementation_chosen():
    comparison = support.run_comparison(b"", [], "tiny.en", "cpu", DecodeOptions(), support.ModelCache(no_loading))
    assert "at least one implementation" in comparison.message


def test_a_close_threshold_decision_is_shown(tmp_path):
    call = CloseCall(start=30.0, temperature=0.0, quantity="avg_logprob", value=-1.0001, threshold=-1.0,
                     tolerance=4e-4, decision="fell back to the next temperature")
    fakes = {"max": FakeTranscriber("max", close_calls=(call,)), "openai": FakeTranscriber("openai")}
    comparison = support.run_comparison((16000, np.full(16000, 1000, np.int16)), ["max", "openai"], "fake", "cpu",
                                        DecodeOptions(), support.ModelCache(lambda backend, **kw: fakes[backend]),
                                        out_dir=tmp_path)
    shown = comparison.panels["max"].diff_html
    assert "too close to call" in shown and "window at 30.00 s" in shown and "logprob_threshold -1" in shown
    assert "too close to call" not in comparison.panels["openai"].diff_html


def test_one_failing_implementation_does_not_hide_the_others(tmp_path):
    fakes = {"max": FakeTranscriber("max", error=RuntimeError("kernel exploded")),
             "openai": FakeTranscriber("openai", "hello world"), "faster": FakeTranscriber("faster", "hello word")}
    cache = support.ModelCache(lambda backend, **kwargs: fakes[backend])
    audio = (16000, np.full(16000, 1000, np.int16))
    comparison = support.run_comparison(audio, ["faster", "max", "openai"], "fake", "cpu", DecodeOptions(), cache,
                                        out_dir=tmp_path)
    panels = comparison.panels
    assert list(panels) == ["max", "openai", "faster"]  # shown in the registry's order
    assert panels["max"].error == "RuntimeError: kernel exploded" and "Failed" in panels["max"].summary
    assert panels["openai"].text == "hello world" and panels["faster"].text == "hello word"
    assert "WER 50.0 %, identical tokens" in panels["faster"].diff_html
    assert "<del" in panels["faster"].diff_html and "<ins" in panels["faster"].diff_html
    assert "Failed: MAX Graph" in comparison.message
    assert [t.y for t in comparison.rtf_figure.data][0] == ("openai-whisper (PyTorch)", "faster-whisper (CTranslate2)")
    other = next(t for t in comparison.timing_figure.data if t.name == "other")  # stages not measured
    assert other.x == pytest.approx((0.1, 0.1))


def test_model_cache_loads_each_key_once_across_threads():
    calls = []

    def create(backend, **kwargs):
        calls.append((backend, kwargs))
        time.sleep(0.2)
        return FakeTranscriber(backend)

    cache = support.ModelCache(create)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("openai", "tiny.en", "cpu"))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert cache.busy() and "openai-whisper (PyTorch) · tiny.en · cpu: loading" in cache.status()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(t) for t in got}) == 1
    assert not cache.busy() and "✓ openai-whisper (PyTorch) · tiny.en · cpu (load 0.5 s)" in cache.status()
    cache.get("openai", "tiny.en", "gpu")  # another key: another load
    assert len(calls) == 2


def test_model_cache_does_not_keep_a_failed_load():
    attempts = []

    def create(backend, **kwargs):
        attempts.append(backend)
        if len(attempts) == 1:
            raise RuntimeError("no memory")
        return FakeTranscriber(backend)

    cache = support.ModelCache(create)
    cache.warm_up([("max", "tiny.en", "cpu")]).join()
    assert "✗ MAX Graph (this project) · tiny.en · cpu failed: RuntimeError: no memory" in cache.status()
    assert cache.get("max", "tiny.en", "cpu").backend == "max" and len(attempts) == 2


def test_word_diff():
    assert support.normalize("And so, my fellow Americans — ask NOT! Don't") == "and so my fellow americans ask not don't"
    wer, diff = support.word_diff("the cat sat", "the cat sat")
    assert wer == 0 and diff == "the cat sat"
    wer, diff = support.word_diff("the cat sat on", "the bat sat on it")
    assert wer == pytest.approx(0.5)
    assert '<del style="color:#b91c1c">cat</del>' in diff and ">bat</ins>" in diff and ">it</ins>" in diff
    assert support.word_diff("", "words") == (None, "words")
    assert support.word_diff("", "")[0] == 0.0
    assert support.word_diff("do", "don't")[1].endswith(">don&#x27;t</ins>")  # escaped for HTML


# --- benchmarks and system tabs --------------------------------------------------------------

def test_benchmarks_without_results(tmp_path):
    text, table, rtf, stages = support.benchmark_view(tmp_path / "missing")
    assert "No committed benchmark results yet" in text and table == [] and rtf is None and stages is None


def test_benchmarks_table_and_charts(tmp_path):
    row = {"audio": "jfk.flac", "audio_s": 11.0, "backend": "max", "model": "tiny.en", "device": "cpu",
           "precision": "fp32", "total_s_median": 0.5, "rtf": 22.0, "load_s": 1.0, "compile_s": 6.0,
           "features_s": 0.05, "encode_s": 0.2, "decode_s": None, "wer": 0.0, "agreement": 1.0, "extra": "ignored"}
    doc = {"machine": {"cpu": "Xeon", "cores": 2, "gpus": [{"name": "x"}], "gpu": None},
           "versions": {"max": "26.7.0"}, "options": {"repeats": 3, "decode": {"beam_size": 1}},
           "results": [row, {**row, "backend": "openai", "rtf": 2.5, "encode_s": None}]}
    (tmp_path / "cpu-xeon-2c.json").write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("{not json")
    text, table, rtf, stages = support.benchmark_view(tmp_path)
    assert "`cpu-xeon-2c.json`" in text and "cpu `Xeon`" in text and "cores `2`" in text
    assert "decode.beam_size `1`" in text and "max `26.7.0`" in text and "`broken.json` could not be read" in text
    assert len(table) == 2 and table[0][:4] == ["cpu-xeon-2c.json", "jfk.flac", 11.0, "max"]
    assert len(table[0]) == 1 + len(support.BENCH_COLUMNS)
    assert [t.name for t in rtf.data] == ["max · cpu · fp32", "openai · cpu · fp32"]
    assert [t.name for t in stages.data] == ["features", "encode", "decode", "other"]
    assert stages.data[3].y == pytest.approx((0.25, 0.45))


def test_system_report():
    report = support.system_report(support.ModelCache(no_loading))
    assert "### Devices MAX sees" in report and "- `cpu`" in report
    for package in ("max", "torch", "ctranslate2"):
        assert f"- {package}: `" in report
    assert "**tiny.en**" in report and "PyPI" in report
    assert "MAX compile cache" in report and "MODULAR_CACHE_DIR" in report


def test_app_builds():
    import gradio as gr
    import app

    demo = app.build_demo(support.ModelCache(no_loading), max_seconds=60)
    assert isinstance(demo, gr.Blocks)
