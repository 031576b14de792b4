"""The benchmark harness: statistics, clips, accuracy and targets on synthetic
records, report rendering, and `--quick` end to end (every backend, a few minutes at most)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maxwhisper.bench.bulk import bulk_markdown
from maxwhisper.bench.cli import MODES, build_parser, spec_of, with_mode
from maxwhisper.bench.clips import DEFAULT_CLIPS, LONG_FORM, REFERENCES, audio_dir, load_clip, parse_clip, resolve_clips
from maxwhisper.bench.machine import device_tag, machine_info, slug
from maxwhisper.bench.records import (
    IMPLEMENTATIONS,
    add_accuracy,
    add_batched_accuracy,
    compute_targets,
    implementation_label,
    make_records,
    median_or_none,
    merge_round,
    ratio,
    spread,
)
from maxwhisper.bench.report import (
    markdown_report,
    targets_text,
    throughput_markdown,
    write_html,
    write_outputs,
    write_throughput_html,
)
from maxwhisper.bench.streaming import add_streaming_accuracy, stream_offsets, streaming_markdown

REPO = Path(__file__).resolve().parents[1]
AUDIO = audio_dir()


# --- statistics ---------------------------------------------------------------------------------


def test_spread_of_several_values():
    s = spread([4.0, 1.0, 3.0, 2.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["n"] == 4
    assert s["q1"] == pytest.approx(1.75) and s["q3"] == pytest.approx(3.25)
    assert s["iqr"] == pytest.approx(1.5)


def test_spread_of_one_value_and_of_none():
    s = spread([0.7])
    assert s["median"] == s["min"] == s["max"] == s["q1"] == s["q3"] == 0.7 and s["iqr"] == 0.0
    with pytest.raises(ValueError):
        spread([])


def test_median_or_none_and_ratio():
    assert median_or_none([3.0, 1.0, 2.0]) == 2.0
    assert median_or_none([1.0, None]) is None
    assert median_or_none([]) is None
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None


# --- implementations -----------------------------------------------------------------------------


def test_implementations_come_from_the_registry():
    from maxwhisper.cpu_features import has_bf16

    max_cpu = [("max", "fp32"), ("max", "int8")] + ([("max", "bf16")] if has_bf16() else [])  # bf16: AVX512_BF16
    assert IMPLEMENTATIONS == {
        "cpu": [*max_cpu, ("openai", "fp32"), ("faster", "fp32"), ("faster", "int8")],
        "gpu": [
            ("max", "fp32"),
            ("max", "fp16"),
            ("openai", "fp32"),
            ("openai", "fp16"),
            ("faster", "fp32"),
            ("faster", "fp16"),
            ("faster", "int8"),
        ],
    }
    assert implementation_label("faster", "int8") == "faster-whisper int8"
    assert implementation_label("other", "fp32") == "other fp32"


def test_decode_options_from_the_benchmark_s_flags():
    from maxwhisper.api import DecodeOptions

    parser = build_parser()
    flags = parser.parse_args(["clips", "--temperature", "0,0.2", "--beam-size", "2", "--language", "en"])
    assert spec_of(flags).decode == DecodeOptions(temperature=(0.0, 0.2), beam_size=2, language="en")
    assert spec_of(parser.parse_args(["clips"])).decode == DecodeOptions()


# --- clips --------------------------------------------------------------------------------------


def test_default_clips_and_channel_names():
    clips = resolve_clips(None)
    assert [c.name for c in clips] == list(DEFAULT_CLIPS)
    left, right = clips[1], clips[2]
    assert (left.channel, right.channel) == (0, 1) and left.path == right.path
    assert [c.name for c in resolve_clips(None, quick=True)] == ["jfk.flac"]
    assert parse_clip(str(AUDIO / "stereo_diarization.wav#1")).name == "stereo_diarization.wav#right"
    assert all(name in REFERENCES for name in DEFAULT_CLIPS if name != LONG_FORM)


def test_load_clip_takes_one_channel():
    left = load_clip(parse_clip(str(AUDIO / "stereo_diarization.wav#left")))
    right = load_clip(parse_clip(str(AUDIO / "stereo_diarization.wav#right")))
    both = load_clip(parse_clip(str(AUDIO / "stereo_diarization.wav")))
    assert left.dtype == np.float32 and left.shape == right.shape == both.shape == (5 * 16000,)
    assert not np.allclose(left, right)
    np.testing.assert_allclose((left + right) / 2, both, atol=1e-4)  # the downmix is the mean


def test_audio_folder_and_missing_files(tmp_path):
    from maxwhisper.api import AudioError

    with pytest.raises(AudioError):
        resolve_clips([str(tmp_path / "nope.wav")])
    with pytest.raises(AudioError):
        resolve_clips([str(tmp_path)])  # a folder without audio
    if (AUDIO / "jfk.flac").exists():
        names = [c.name for c in resolve_clips([str(AUDIO)])]
        assert "jfk.flac" in names and "MANIFEST.md" not in names and names == sorted(names)


def test_names_of_outputs():
    assert slug("Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz") == "intel-xeon-platinum-8480c"
    assert slug("AMD EPYC 7763 64-Core Processor") == "amd-epyc-7763"
    machine = {
        "cpu": "AMD EPYC",
        "cores": 2,
        "gpu": "NVIDIA H100 80GB HBM3",
        "gpus": [{"name": "NVIDIA H100 80GB HBM3"}],
    }
    assert device_tag("cpu", machine) == "cpu-amd-epyc-2c"
    assert device_tag("gpu", machine) == "gpu-nvidia-h100-80gb-hbm3"
    assert device_tag("cpu", {**machine, "vector_isa": "AVX-512 VNNI BF16"}) == "cpu-amd-epyc-avx512-vnni-bf16-2c"
    assert device_tag("cpu", {**machine, "vector_isa": "AVX2"}) == "cpu-amd-epyc-avx2-2c"
    under_level = {
        **machine,
        "vector_isa": "AVX2 (x86-64-v3 code on an AVX-512 VNNI BF16 CPU)",
        "cpu_level": "x86-64-v3",
    }
    assert device_tag("cpu", under_level) == "cpu-amd-epyc-x86-64-v3-2c"


def test_vector_isa_names_the_dot_products():
    from maxwhisper.bench import machine

    for flags, isa in (
        (set(), None),
        ({"avx", "avx2", "fma"}, "AVX2"),
        ({"avx2", "avx_vnni"}, "AVX2 VNNI"),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX-512 VNNI BF16"),
        ({"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}, "AVX-512 VNNI BF16 AMX"),
    ):
        assert machine.vector_isa(frozenset(flags)) == isa


def test_a_cpu_level_reaches_every_implementation_and_the_machine_record(monkeypatch):
    """`bench --cpu-level x86-64-v3` on an AVX-512 CPU: the workers inherit MAX's level and the other
    libraries' ISA limits, and the record says which code ran on which CPU."""
    from maxwhisper import cpu_features
    from maxwhisper.bench import machine

    host = cpu_features.CPU_LEVELS["x86-64-v4"] | {"avx512_vnni", "avx512_bf16"}
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda: host)
    monkeypatch.setattr(machine, "host_cpu_flags", lambda: host)
    monkeypatch.setattr(cpu_features, "_level", None)
    monkeypatch.setattr(os, "environ", {"PATH": os.environ["PATH"]})  # the test's own, dropped after it
    assert machine.machine_info()["vector_isa"] == "AVX-512 VNNI BF16"
    machine.keep_to_cpu_level("x86-64-v3")
    assert os.environ["MAXWHISPER_CPU_LEVEL"] == "x86-64-v3" and os.environ["CT2_FORCE_CPU_ISA"] == "AVX2"
    info = machine.machine_info()
    assert info["cpu_level"] == "x86-64-v3"
    assert info["vector_isa"] == "AVX2 (x86-64-v3 code on an AVX-512 VNNI BF16 CPU)"
    assert not cpu_features.bf16_attention_pays()


def test_the_cpu_level_in_the_environment_is_checked_when_first_read(monkeypatch):
    """MAXWHISPER_CPU_LEVEL names a level for every MAX process; one this CPU lacks is a clear error."""
    from maxwhisper import cpu_features
    from maxwhisper.api import BackendError

    monkeypatch.setattr(cpu_features, "_level", None)
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda: cpu_features.CPU_LEVELS["x86-64-v3"])
    monkeypatch.setenv("MAXWHISPER_CPU_LEVEL", "x86-64-v4")
    with pytest.raises(BackendError, match="cannot run code compiled for x86-64-v4"):
        cpu_features.cpu_flags()
    monkeypatch.setenv("MAXWHISPER_CPU_LEVEL", "avx2")
    with pytest.raises(BackendError, match="MAXWHISPER_CPU_LEVEL='avx2' is no CPU level; valid levels: x86-64-v3"):
        cpu_features.cpu_flags()
    monkeypatch.setenv("MAXWHISPER_CPU_LEVEL", " x86-64-v3\n")
    assert cpu_features.cpu_flags() == cpu_features.CPU_LEVELS["x86-64-v3"] and cpu_features.cpu_level() == "x86-64-v3"


# --- records, accuracy, targets, rendering (synthetic: no backend runs) ------------------------

JFK_TEXT = (
    " And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)


def _worker(backend, precision, clips):
    return {
        "ok": True,
        "backend": backend,
        "model": "tiny.en",
        "device": "cpu",
        "precision": precision,
        "load_s": 0.5,
        "compile_s": 6.0 if backend == "max" else 0.0,
        "rss_after_load_mib": 500.0,
        "clips": [
            {
                "audio": name,
                "audio_s": audio_s,
                "warmup_s": 1.0,
                "text": text,
                "tokens": tokens,
                "language": "en",
                "deterministic": True,
                "peak_rss_mib": 600.0,
                "runs": [{"total_s": t, "features_s": 0.1, "encode_s": 0.2 * t, "decode_s": 0.5 * t} for t in totals],
            }
            for name, audio_s, text, tokens, totals in clips
        ],
    }


def _records():
    records = []
    lecture = "physicsworks.flac"
    for backend, precision, jfk_text, jfk_tokens, lecture_total in [
        ("max", "fp32", JFK_TEXT, [1, 2, 3], 5.0),
        ("openai", "fp32", JFK_TEXT, [1, 2, 3], 12.0),
        ("faster", "fp32", JFK_TEXT.replace("fellow", "yellow"), [1, 9, 3], 7.0),
        ("faster", "int8", JFK_TEXT, [1, 2, 3, 4], 4.0),
    ]:
        w = _worker(
            backend,
            precision,
            [
                ("jfk.flac", 11.0, jfk_text, jfk_tokens, [1.0, 2.0, 3.0]),
                (lecture, 203.3, "some lecture text here", [7, 8], [lecture_total] * 3),
            ],
        )
        recs, fails = make_records(w, threads=2, repeats=3)
        assert not fails
        records += recs
    add_accuracy(records)
    return records


def test_make_records_and_accuracy():
    records = _records()
    by = {(r.audio, r.implementation): r for r in records}
    m = by["jfk.flac", "MAX fp32"]
    assert m.total_s_median == 2.0 and m.total_s_min == 1.0 and m.total_s_max == 3.0
    assert m.rtfx == pytest.approx(5.5) and m.decode_s == pytest.approx(1.0)
    assert m.tokens_per_s == pytest.approx(3.0) and m.compile_s == 6.0
    assert m.wer == 0.0 and m.agreement == 1.0 and m.tokens_identical_to_openai is True
    f = by["jfk.flac", "faster-whisper fp32"]
    assert f.wer == pytest.approx(1 / 22) and f.agreement == pytest.approx(1 - 1 / 22)
    assert f.tokens_identical_to_openai is False and f.agreement_with == "openai-whisper fp32"
    assert by["jfk.flac", "faster-whisper int8"].tokens_identical_to_openai is False
    lecture = by["physicsworks.flac", "faster-whisper int8"]
    assert lecture.wer is None and lecture.agreement == 1.0  # no reference: agreement only
    for r in records:  # the keys the app's Benchmarks tab reads, in the JSON a run writes
        written = json.loads(json.dumps(dataclasses.asdict(r)))
        for key in (
            "audio",
            "audio_s",
            "backend",
            "model",
            "device",
            "precision",
            "total_s_median",
            "rtfx",
            "load_s",
            "compile_s",
            "features_s",
            "encode_s",
            "decode_s",
            "wer",
            "agreement",
        ):
            assert written[key] == getattr(r, key)


def test_failed_clip_becomes_a_failure():
    w = _worker("max", "fp32", [("jfk.flac", 11.0, "x", [1], [1.0])])
    w["clips"].append({"audio": "bad.wav", "error": "AudioError: nope"})
    recs, fails = make_records(w, threads=2, repeats=1)
    assert len(recs) == 1 and fails == [
        {
            "audio": "bad.wav",
            "backend": "max",
            "model": "tiny.en",
            "device": "cpu",
            "precision": "fp32",
            "error": "AudioError: nope",
        }
    ]


def test_rounds_pool_timed_runs_and_keep_failures_and_nondeterminism():
    first = _worker("max", "fp32", [("jfk.flac", 11.0, "x", [1], [1.0, 5.0]), ("a.wav", 2.0, "y", [2], [1.0])])
    later = _worker("max", "fp32", [("jfk.flac", 11.0, "x", [1], [2.0, 3.0]), ("a.wav", 2.0, "y", [3], [1.0])])
    first["clips"].append({"audio": "bad.wav", "error": "AudioError: nope"})
    later["clips"].append(dict(first["clips"][0], audio="bad.wav"))
    merge_round(first, later)
    recs, fails = make_records(first, threads=2, repeats=4)
    jfk, a = recs
    assert jfk.total_s_runs == [1.0, 5.0, 2.0, 3.0] and jfk.total_s_median == 2.5 and jfk.deterministic
    assert jfk.decode_s_runs == [0.5, 2.5, 1.0, 1.5] and jfk.decode_s == 1.25  # each run's, in order
    assert a.deterministic is False  # another round gave other tokens
    assert [f["audio"] for f in fails] == ["bad.wav"]


def test_targets():
    targets = compute_targets(_records())
    speed = {t["versus"]: t for t in targets if t["kind"] == "speed"}
    assert speed["faster-whisper fp32"]["audio"] == "physicsworks.flac" and speed["faster-whisper fp32"]["long_form"]
    assert speed["faster-whisper fp32"]["ratio"] == pytest.approx(7.0 / 5.0) and speed["faster-whisper fp32"]["met"]
    assert speed["faster-whisper int8"]["ratio"] == pytest.approx(4.0 / 5.0) and not speed["faster-whisper int8"]["met"]
    (w,) = [t for t in targets if t["kind"] == "wer"]
    assert w["audio"] == ["jfk.flac"] and w["delta_points"] == 0.0 and w["met"]
    text = targets_text(targets)
    assert "ratio 1.40" in text and "ratio 0.80" in text and "NOT MET" in text


def test_int8_targets_compare_like_with_like():
    """MAX int8 against faster-whisper int8 only: on the lecture 1.5x with VNNI and 1.3x without,
    on jfk 1.3x; its decoder tokens/s against MAX fp32's, 2x; its WER against openai-whisper fp32."""
    records = _records()
    w = _worker(
        "max",
        "int8",
        [
            ("jfk.flac", 11.0, JFK_TEXT, [1, 2, 3], [0.5] * 3),
            ("physicsworks.flac", 203.3, "some lecture text here", [7, 8], [2.9] * 3),
        ],
    )
    int8, _ = make_records(w, threads=2, repeats=3)
    for r in int8:  # decode_s is half the total in `_worker`: tokens/s 2 / 1.45 against MAX fp32's 2 / 2.5
        r.tokens_per_s = 2 / 1.45 if r.audio == "physicsworks.flac" else r.tokens_per_s
    records += int8
    add_accuracy(records)
    for vnni, lecture_met in ((True, False), (False, True)):
        targets = [t for t in compute_targets(records, vnni=vnni) if t["max_precision"] == "int8"]
        speed = {t["audio"]: t for t in targets if t["kind"] == "speed"}
        assert {t["versus"] for t in speed.values()} == {"faster-whisper int8"}
        assert speed["physicsworks.flac"]["ratio"] == pytest.approx(4.0 / 2.9)
        assert speed["physicsworks.flac"]["met"] is lecture_met
        assert speed["physicsworks.flac"]["target"] == (">= 1.5x" if vnni else ">= 1.3x")
        assert speed["jfk.flac"]["ratio"] == pytest.approx(2.0 / 0.5) and speed["jfk.flac"]["met"]
        (decoder,) = [t for t in targets if t["kind"] == "decoder"]
        assert decoder["ratio"] == pytest.approx(2.5 / 1.45) and not decoder["met"]
        (wer,) = [t for t in targets if t["kind"] == "wer"]
        assert wer["versus"] == "openai-whisper fp32" and wer["met"]
    text = targets_text(targets)
    assert (
        "decoder tokens/s on physicsworks.flac: MAX int8 1 vs MAX fp32 1 -> ratio 1.72 (target >= 2.0x): NOT MET"
        in text
    )


def _report_doc(records: list, results: list[dict] | None = None) -> dict:
    """A per-clip run's document; `results`: the records as a file has them (default: as written now)."""
    return {
        "schema_version": 2,
        "device": "cpu",
        "created": "now",
        "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 8.0, "gpu": None, "gpus": [], "load_average": [0, 0, 0]},
        "versions": {"max": "26.7.0"},
        "options": {"repeats": 3, "threads": 2, "quick": False, "decode": {"beam_size": 1, "temperature": [0.0]}},
        "results": [dataclasses.asdict(r) for r in records] if results is None else results,
        "targets": compute_targets(records),
        "failures": [{"backend": "faster", "precision": "fp16", "device": "cpu", "error": "not supported"}],
    }


def test_reports_render(tmp_path):
    doc = _report_doc(_records())
    paths = write_outputs(doc, tmp_path, "cpu-test")
    md = paths["md"].read_text()
    assert md.count("| jfk.flac (11.0 s) |") == 4 and "## Targets" in md and "not supported" in md
    assert "3 timed run(s)" in md and "rounds" not in md
    doc["options"]["rounds"] = 2
    assert "2 rounds, implementations in turn, each 3 timed run(s)" in markdown_report(doc)
    assert json.loads(paths["json"].read_text())["results"][0]["backend"] == "max"
    assert "plotly" in paths["html"].read_text()


def test_an_older_file_s_results_render_with_the_same_figures(tmp_path):
    """Results written before `rtf` was named `rtfx` (the same value) render as newer ones do, as
    the app shows them (`records.OLD_NAMES`)."""
    records = _records()
    older = [{("rtf" if k == "rtfx" else k): v for k, v in dataclasses.asdict(r).items()} for r in records]
    assert markdown_report(_report_doc(records, older)) == markdown_report(_report_doc(records))
    assert "| 5.5 |" in markdown_report(_report_doc(records, older))  # jfk: 11 s of audio in a median of 2 s
    write_html(_report_doc(records, older), tmp_path / "older.html")
    assert "5.5×" in (tmp_path / "older.html").read_text()


def test_batched_report_renders_with_targets_and_wer(tmp_path, monkeypatch):
    def row(batch, total, text):
        return {
            "batch_size": batch,
            "total_s_median": total,
            "total_s_min": total * 0.9,
            "total_s_max": total * 1.1,
            "encode_s": total / 2,
            "decode_s": total / 2,
            "audio_s_per_s": 203.3 / total,
            "n_chunks": 8,
            "text": text,
            "chunk_tokens": [[1, 2]] if batch == 1 else [[1, 3]],
            "peak_rss_mib": 900.0,
        }

    runs = [
        {
            "backend": "max",
            "precision": "fp32",
            "implementation": "MAX fp32",
            "rows": [
                row(1, 8.0, "the cat sat"),
                row(8, 4.0, "the cat sat"),
                {"batch_size": 16, "error": "MemoryError: "},
            ],
        },
        {
            "backend": "faster",
            "precision": "fp32",
            "implementation": "faster-whisper fp32",
            "rows": [row(1, 9.0, "the cat sat"), row(8, 8.0, "a cat sat")],
        },
    ]
    doc = {
        "device": "cpu",
        "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "vector_isa": "AVX2"},
        "options": {"repeats": 1},
        "throughput": {"model": "tiny.en", "audio": "lecture.flac", "audio_s": 203.3, "runs": runs},
    }
    monkeypatch.setattr("maxwhisper.bench.records.pseudo_reference", lambda name: "the cat sat")
    add_batched_accuracy(doc)
    assert [r.get("wer") for r in runs[1]["rows"]] == [0.0, pytest.approx(1 / 3)]
    assert [r.get("same_tokens_as_first") for r in runs[0]["rows"][:2]] == [True, False]
    md = throughput_markdown(doc)
    assert "| MAX fp32 | 8 | 8 | 4.00 |" in md and "| 2.00 |" in md and "FAILED: MemoryError" in md
    assert "-> 2.00x (target >= 2.5x): NOT MET" in md
    assert "-> -33.33 points (target within 0.5): NOT MET" in md
    assert "MAX batch 8 vs batch 1: 2.00x (target >= 1.3x): MET" in md and "AVX2" in md
    write_throughput_html(doc, tmp_path / "t.html")
    assert (tmp_path / "t.html").exists()


def _stream_row(audio, median, share, text, offline, loop=1.4, offset=0.0):
    """One stream's row as the streaming worker writes it: latencies median - 1, median, median + 1."""
    return {
        "audio": audio,
        "offset_s": offset,
        "audio_s": 11.0,
        "updates": 9,
        "compute_s": share * 11,
        "compute_share": share,
        "encode_s": share * 5.5,
        "update_median_s": 0.3,
        "update_p90_s": 0.5,
        "latency_median_s": median,
        "latency_p90_s": median + 1,
        "latencies": [median - 1, median, median + 1],
        "words": 3,
        "behind_median_s": 0.0,
        "behind_max_s": 1.0,
        "loop_ratio": loop,
        "held_back": 2,
        "text": text,
        "offline_text": offline,
        "offline_s": 0.5,
    }


def test_streaming_report_says_the_targets():
    runs = [
        {
            "backend": "max",
            "precision": "fp32",
            "implementation": "MAX fp32",
            "rows": [_stream_row("jfk.flac", 1.5, 0.3, "ask not what", "ask not what")],
        },
        {
            "backend": "faster",
            "precision": "fp32",
            "implementation": "faster-whisper fp32",
            "rows": [_stream_row("jfk.flac", 2.0, 0.5, "ask what", "ask not what")],
        },
        {
            "backend": "faster",
            "precision": "int8",
            "implementation": "faster-whisper int8",
            "rows": [_stream_row("jfk.flac", 1.8, 0.5, "ask not what", "ask not what")],
        },
        {
            "backend": "max",
            "precision": "fp32",
            "implementation": "MAX fp32",
            "rows": [_stream_row("lecture.flac", 2.5, 0.7, "3 2 1 3 2 1", "3 2 1", loop=5.9)],
        },
    ]
    add_streaming_accuracy(runs)
    assert runs[1]["rows"][0]["wer_vs_offline"] == pytest.approx(1 / 3)
    doc = {
        "device": "cpu",
        "created": "now",
        "machine": {"cpu": "Test CPU", "cores": 2, "vector_isa": "AVX2"},
        "options": {"background_load": 0},
        "failures": [{"implementation": "openai-whisper fp32", "error": "boom"}],
        "streaming": {"model": "tiny.en", "chunk_s": 1.0, "runs": runs},
    }
    md = streaming_markdown(doc)
    assert (
        "| jfk.flac | MAX fp32 | 0 s | 9 | 1.50 s | 2.50 s | 0.00 s / 1.00 s | 0.30 | 0.30 s / 0.50 s | 50 % | "
        "1.40 | 2 | 0.00 % |"
    ) in md and "Test CPU (AVX2)" in md
    assert (
        "- jfk.flac, MAX fp32: compute 0.30 s per audio second <= 0.6: met; commit latency median 1.50 s <= 2 s: "
        "met, p90 2.50 s <= 3.5 s: met; no loop committed (loop ratio 1.40 <= 2.4): met"
    ) in md
    # like with like (fp32 against fp32), and faster-whisper's lowest said beside it
    assert "  - median latency against faster-whisper fp32 (2.00 s): 1.33x lower (at least 1.3x): met" in md
    assert "  - median latency against faster-whisper's lowest (faster-whisper int8 1.80 s): 1.20x lower\n" in md
    assert (
        "- lecture.flac, MAX fp32: compute 0.70 s per audio second <= 0.6: NOT MET; commit latency median "
        "2.50 s <= 2 s: NOT MET, p90 3.50 s <= 3.5 s: met; no loop committed (loop ratio 5.90 <= 2.4): "
        "NOT MET"
    ) in md
    assert "FAILED: openai-whisper fp32: boom" in md


def test_streaming_targets_are_judged_over_all_of_a_clip_s_streams():
    from maxwhisper.bench.clips import REFERENCES

    reference = REFERENCES["jfk.flac"]
    missing_one = reference.replace(" not", "", 1)

    def row(median, share, text, offset):
        return _stream_row("jfk.flac", median, share, text, reference, loop=1.4 + offset, offset=offset)

    runs = [
        {
            "backend": "max",
            "precision": "fp32",
            "implementation": "MAX fp32",
            "rows": [row(1.5, 0.3, reference, 0.0), row(1.0, 0.65, missing_one, 0.5)],
        },
        {
            "backend": "faster",
            "precision": "fp32",
            "implementation": "faster-whisper fp32",
            "rows": [row(2.0, 0.5, reference, 0.0), row(1.5, 0.5, reference, 0.5)],
        },
    ]
    add_streaming_accuracy(runs)
    doc = {
        "device": "cpu",
        "created": "now",
        "machine": {"cpu": "Test CPU", "cores": 2, "vector_isa": "AVX2"},
        "options": {"background_load": 0},
        "failures": [],
        "streaming": {"model": "tiny.en", "chunk_s": 1.0, "runs": runs},
    }
    md = streaming_markdown(doc)
    assert "| jfk.flac | MAX fp32 | 0 s | 9 | 1.50 s |" in md and "| jfk.flac | MAX fp32 | 0.5 s | 9 | 1.00 s |" in md
    # latencies pooled (0 0.5 1 1.5 2 2.5: median 1.25 s, p90 2.5 s), the highest compute share and loop ratio
    assert (
        "- jfk.flac, MAX fp32 (2 streams): compute 0.65 s per audio second <= 0.6: NOT MET; commit latency median "
        "1.25 s <= 2 s: met, p90 2.50 s <= 3.5 s: met; no loop committed (loop ratio 1.90 <= 2.4): met"
    ) in md
    gap = 100 / len(reference.split())
    assert (
        f"  - streamed WER {gap / 2:.2f} % vs offline 0.00 % against the reference: +{gap / 2:.2f} points (the "
        f"streams' mean; each +0.00, +{gap:.2f}) (at most +1): NOT MET"
    ) in md
    # faster-whisper's pooled median (0.5 1 1.5 2 2.5 3: 1.75 s), not its first stream's 2.0 s
    assert "  - median latency against faster-whisper fp32 (1.75 s): 1.40x lower (at least 1.3x): met" in md


def test_a_worker_s_spec_reaches_it_as_it_was_sent():
    from maxwhisper.api import DecodeOptions
    from maxwhisper.bench.specs import WorkerSpec

    clip = parse_clip(str(AUDIO / "stereo_diarization.wav#left"))
    spec = WorkerSpec(
        kind="throughput",
        backend="max",
        model="tiny.en",
        device="cpu",
        precision="int8",
        threads=2,
        options=DecodeOptions(temperature=(0.0, 0.4), language="en", batch_size=8),
        clips=(clip,),
        repeats=3,
        batch_sizes=(1, 8),
        out="result.json",
    )
    assert WorkerSpec.from_json(spec.to_json()) == spec


def test_more_streams_than_milliseconds_in_a_chunk_are_refused(tmp_path, monkeypatch, capsys):
    from maxwhisper.__main__ import main
    from maxwhisper.api import MaxWhisperError

    assert stream_offsets(1.0, 4) == [0.0, 0.25, 0.5, 0.75]
    assert len(set(stream_offsets(0.3, 300))) == 300  # 1 ms apart: each its own shift
    with pytest.raises(MaxWhisperError, match="use --streams 300 or fewer"):
        stream_offsets(0.3, 301)  # 0.3 ms apart: at the milliseconds the results record, some the same
    # the command says so before any stream runs, in one line, with a bad argument's exit status
    monkeypatch.setattr("maxwhisper.bench.streaming.run_worker", lambda *args: pytest.fail("a stream ran"))
    assert main(["bench", "--streaming", "--chunk", "1", "--streams", "1001", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: --streams 1001 with --chunk 1: the streams' chunk boundaries would be shifted by less than 1 ms "
        "from one stream to the next, and some streams would be the same; use --streams 1000 or fewer\n"
    )


def test_streaming_results_state_the_command_that_runs_them_again(tmp_path, monkeypatch):
    import shlex

    from maxwhisper.bench.cli import cli

    monkeypatch.setattr(
        "maxwhisper.bench.streaming.run_worker", lambda spec, timeout: {"ok": False, "error": "not run"}
    )
    argv = [
        "streaming",
        "--backends",
        "max,faster",
        "--precisions",
        "int8",
        "--devices",
        "cpu",
        "--chunk",
        "0.5",
        "--streams",
        "3",
        "--temperature",
        "0",
        "--audio",
        str(AUDIO / "jfk.flac"),
        "--out",
        str(tmp_path),
    ]
    assert cli(argv) == 1  # every implementation "failed"
    (path,) = tmp_path.glob("streaming-*.json")
    command = json.loads(path.read_text())["command"]
    assert f"`{command}`" in path.with_suffix(".md").read_text()
    assert command.startswith("python -m maxwhisper bench streaming ")
    again, given = (spec_of(build_parser().parse_args(a)) for a in (shlex.split(command)[4:], argv))
    assert again == dataclasses.replace(given, out=None)  # the same run, wherever its results went


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["clips", "--devices", "cpu", "--models", "tiny.en,tiny.xx"],
            "unknown model 'tiny.xx': use one of base, tiny.en, a CTranslate2 model folder, or an "
            "openai-whisper .pt file",
        ),
        (["--devices", "cpu", "--precisions", "fp64"], "unknown precision(s) fp64; valid: fp32, fp16, bf16, int8"),
        (
            ["clips", "--devices", "cpu", "--backends", "openai", "--precisions", "int8"],
            "nothing to measure: none of the backends openai runs int8 on cpu",
        ),
        (
            ["streaming", "--devices", "cpu", "--precisions", "fp16"],
            "nothing to measure: none of the backends max, openai, faster runs fp16 on cpu",
        ),
        (
            ["batched", "--devices", "cpu", "--backends", "openai"],
            "nothing to measure: none of the backends openai runs any precision on cpu in this mode "
            "(max and faster only)",
        ),
        (
            ["--throughput", "--devices", "cpu", "--backends", "openai"],
            "nothing to measure: none of the backends openai runs any precision on cpu in this mode "
            "(max and faster only)",
        ),
        (
            ["bulk", "--backends", "openai"],
            "nothing to measure: none of the backends openai runs any precision on cpu in this mode "
            "(max and faster only)",
        ),
        (
            ["realtime", "--backends", "openai"],
            "nothing to measure: the realtime mode serves MAX fp32, MAX int8, faster-whisper fp32, faster-whisper int8",
        ),
        (["realtime", "--backends", "nope"], "unknown backend(s) nope; valid: max, openai, faster"),
        (
            ["--serve", "--throughput"],
            "--serve and --throughput are modes of their own: run one at a time "
            "(maxwhisper bench {clips,batched,streaming,bulk,serve,realtime})",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-precision",
        "openai-int8",
        "streaming-fp16-on-cpu",
        "batched-openai",
        "throughput-openai",
        "bulk-openai",
        "realtime-openai",
        "realtime-unknown-backend",
        "two-modes",
    ],
)
def test_a_run_with_nothing_to_measure_is_refused_before_it_writes_anything(
    tmp_path, monkeypatch, capsys, flags, message
):
    """A typo in --models or --precisions would otherwise write a results file of failures, or of
    nothing, over the committed one (the default --out); two modes at once, in the older spelling,
    are refused too."""
    import ray

    from maxwhisper.__main__ import main

    for module in ("cli", "streaming", "bulk"):
        monkeypatch.setattr(f"maxwhisper.bench.{module}.run_worker", lambda *args: pytest.fail("a worker ran"))
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("Ray started"))
    assert main(["bench", *flags, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not any(tmp_path.iterdir())


def test_each_mode_takes_its_own_options_and_its_spec_holds_exactly_them():
    """`bench MODE`: a mode's parser and its spec have the same options, no other mode's (an
    option of another mode is refused as argparse refuses any unknown one)."""
    modes = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    decoding = {"beam_size", "temperature", "language"}
    assert list(modes) == list(MODES)
    for name, mode in MODES.items():
        options = {a.dest for a in modes[name]._actions if a.dest != "help"}
        fields = {f.name for f in dataclasses.fields(mode.spec)}
        assert options - decoding == fields - {"decode"}, name
        assert (decoding <= options) == ("decode" in fields), name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--quick"])


def test_the_older_spelling_of_the_modes_runs_as_their_subcommands():
    """The docs' and committed results' older commands (`bench --realtime --realtime-p90 3.5`): the
    mode flag becomes the subcommand, that mode's older option names its own; no mode flag: clips."""
    assert with_mode([]) == ["clips"]
    assert with_mode(["--quick", "--out", "x"]) == ["clips", "--quick", "--out", "x"]
    assert with_mode(["--realtime", "--realtime-seconds", "43", "--realtime-p90=3.5"]) == [
        "realtime",
        "--seconds",
        "43",
        "--p90=3.5",
    ]
    assert with_mode(["--bulk", "--bulk-minutes", "30", "--bulk-workers", "1,2"]) == [
        "bulk",
        "--minutes",
        "30",
        "--workers",
        "1,2",
    ]
    assert with_mode(["--serve", "--serve-seconds", "5"]) == ["serve", "--seconds", "5"]
    assert with_mode(["--serve", "--realtime-seconds", "5"]) == ["serve", "--realtime-seconds", "5"]  # refused
    assert with_mode(["streaming", "--quick"]) == ["streaming", "--quick"] and with_mode(["-h"]) == ["-h"]
    old = build_parser().parse_args(with_mode(["--throughput", "--batch-sizes", "2", "--quick"]))
    assert spec_of(old) == spec_of(build_parser().parse_args(["batched", "--batch-sizes", "2", "--quick"]))


def test_realtime_report_says_the_most_sessions_kept_up_and_the_aim():
    """Each N's row, and MAX's most sessions kept up against the better faster-whisper's."""
    from maxwhisper.bench.realtime import realtime_markdown

    def run(setup, kept, failed):
        rows = [
            {
                "sessions": n,
                "words": 90 * n,
                "latency_median_s": 1.5,
                "latency_p90_s": 2.0 if n <= kept else 3.1,
                "latency_max_s": 4.0,
                "end_lag_max_s": 2.2,
                "sessions_ok": n,
                "wer_vs_whisper_medium": None,
                "wer_vs_first_n": 0.01,
                "keeps_up": n <= kept,
            }
            for n in range(1, failed + 1)
        ]
        return {"setup": setup, "rows": rows, "most_sessions_kept_up": kept}

    doc = {
        "command": "python -m maxwhisper bench --realtime --realtime-seconds 43",
        "created": "now",
        "machine": {"cpu": "Test CPU", "cores": 2, "vector_isa": "AVX2"},
        "versions": {"max": "26.7"},
        "options": {
            "clip": "physicsworks.flac, first 43 s",
            "audio_s": 43.0,
            "rate": 24000,
            "chunk_s": 0.1,
            "cpus_per_replica": 2.0,
            "max_batch": 8,
            "p90_bound_s": 2.5,
        },
        "runs": [
            run("MAX fp32", 3, 4),
            run("MAX int8", 2, 3),
            run("faster-whisper fp32", 1, 2),
            run("faster-whisper int8", 2, 3),
        ],
        "failures": [],
    }
    md = realtime_markdown(doc)
    assert "`python -m maxwhisper bench --realtime --realtime-seconds 43`" in md
    assert "| MAX fp32 | 4 | 360 | 1.5 | 3.1 | 4.0 | 2.2 | 4 of 4 | – | 1.0 | no |" in md
    assert "- MAX fp32: 3 sessions kept up against faster-whisper's 2 (1.50x; aim 1.5x): met" in md
    assert "- MAX int8: 2 sessions kept up against faster-whisper's 2 (1.00x; aim 1.5x): not met" in md
    for faster in doc["runs"][2:]:
        faster["most_sessions_kept_up"] = 0
    assert "- MAX fp32: 3 sessions kept up, faster-whisper none: no ratio to judge" in realtime_markdown(doc)


def test_a_ratio_just_under_its_target_is_not_printed_as_reaching_it():
    from maxwhisper.bench.report import ratio_text

    assert ratio_text(1.2975, 1.3) == "1.297"  # not "1.30": the report beside it says NOT MET
    assert ratio_text(1.2994, 1.3) == "1.299"
    assert ratio_text(1.304, 1.3) == ratio_text(1.3, 1.3) == "1.30"
    assert ratio_text(1.25, 1.3) == "1.25" and ratio_text(None, 1.3) == "–"


def test_bulk_report_says_the_targets():
    def run(backend, precision, workers, wall_s, nodes=1, batch=8):
        return {
            "implementation": implementation_label(backend, precision),
            "backend": backend,
            "precision": precision,
            "workers": workers,
            "batch_size": batch,
            "nodes": nodes,
            "files": 4,
            "failed": 0,
            "audio_s": 3600.0,
            "wall_s": wall_s,
            "rate": 3600.0 / wall_s,
            "transcribe_s": wall_s - 2,
            "read_s": 1.0,
            "write_s": 0.1,
            "node_files": [4] if nodes == 1 else [2, 2],
        }

    sequential = run("max", "fp32", 1, 80.0, batch=None)  # recorded without files_at_once, as older results were
    runs = [
        run("max", "fp32", 1, 60.0),
        run("max", "fp32", 2, 90.0),
        run("faster", "fp32", 1, 100.0),
        run("faster", "fp32", 2, 75.0),
        run("max", "fp32", 2, 95.0, nodes=2),
        sequential,
        run("faster", "fp32", 1, 120.0, batch=None),
    ]
    references = [
        {
            "implementation": "MAX fp32",
            "backend": "max",
            "precision": "fp32",
            "batch_size": 8,
            "wall_s": 50.0,
            "audio_s": 3600.0,
            "rate": 72.0,
        },
        {
            "implementation": "MAX fp32",
            "backend": "max",
            "precision": "fp32",
            "batch_size": None,
            "wall_s": 70.0,
            "audio_s": 3600.0,
            "rate": 51.4,
        },
    ]
    doc = {
        "created": "now",
        "command": "python -m maxwhisper bench --bulk",
        "machine": {"cpu": "Test CPU", "cores": 2, "vector_isa": "AVX2"},
        "bulk": {
            "model": "tiny.en",
            "files": 4,
            "audio_s": 3600.0,
            "repeats": 1,
            "ray_start_s": {"local": 2.0, "two_nodes": 3.0},
            "runs": runs,
            "references": references,
        },
    }
    md = bulk_markdown(doc)
    # older results: one local instance for every job, one Cluster for the two-node jobs
    assert (
        "2.0 s for the local instance, 3.0 s for two virtual nodes (each with half the cores), shared by the "
        "two-node jobs."
    ) in md
    assert "| MAX fp32 | 1 | 1 | 8 | 60.0 | 60.0 | 1.67 | 58.0 | 1.0 | 4 | 0 |" in md
    assert "| MAX fp32 | 2 | 2 | 8 | 95.0 | 37.9 | – | 93.0 | 1.0 | 2, 2 | 0 |" in md  # no faster job on two nodes
    assert (
        "- 1 worker(s), batch 8: MAX fp32 60.0 vs faster-whisper fp32 36.0 audio h/h = 1.67x (at least 1.3x): met"
    ) in md
    assert (
        "- 2 worker(s), batch 8: MAX fp32 40.0 vs faster-whisper fp32 48.0 audio h/h = 0.83x (at least 1.3x): NOT MET"
    ) in md
    assert "| MAX fp32 | 1 | 1 | none | 80.0 | 45.0 | 1.50 |" in md  # the sequential loop
    assert (
        "- 1 worker(s), batch none: MAX fp32 45.0 vs faster-whisper fp32 30.0 audio h/h = 1.50x (at least 1.3x): met"
    ) in md
    # best against best: MAX's 1 worker against faster-whisper's 2 workers
    assert (
        "- best against best: MAX fp32 60.0 (1 worker(s), batch 8) vs faster-whisper fp32 48.0 (2 worker(s), "
        "batch 8) = 1.25x (at least 1.3x): NOT MET"
    ) in md
    assert (
        "- pipeline overhead, MAX fp32 batch 8: 1 worker 60.0 s vs transcribe() in one process 50.0 s = +20.0 % "
        "(under 10 %): NOT MET"
    ) in md
    assert "pipeline overhead, MAX fp32 batch none" not in md  # four files at once against one at a time
    # a reference that takes as many files at once as the job's worker is compared; MAX int8 against
    # faster-whisper int8 needs only to be ahead
    runs.remove(sequential)  # the same job, now recording the four files its worker took at once
    runs += [{**sequential, "files_at_once": 4}, run("max", "int8", 2, 60.0), run("faster", "int8", 2, 66.0)]
    references.append({**references.pop(), "files_at_once": 4})
    md = bulk_markdown(doc)
    assert (
        "- pipeline overhead, MAX fp32 batch none: 1 worker 80.0 s vs transcribe() in one process 70.0 s = "
        "+14.3 % (under 10 %): NOT MET"
    ) in md
    assert "| MAX fp32 | none | 4 | 70.0 | 51.4 |" in md
    assert "- 2 worker(s), batch 8: MAX int8 60.0 vs faster-whisper int8 54.5 audio h/h = 1.10x (above 1x): met" in md
    assert (
        "- best against best: MAX int8 60.0 (2 worker(s), batch 8) vs faster-whisper int8 54.5 (2 worker(s), "
        "batch 8) = 1.10x (above 1x): met"
    ) in md


def test_bulk_job_order_rotates_the_implementations():
    """Each configuration's implementations rotated one further than the last's: with three, each
    goes first in turn (reversing the list by turns would never put the middle one first), and the
    two-node configuration, after the others, goes on from there."""
    from maxwhisper.bench.bulk import job_order

    impls = [("max", "fp32"), ("max", "int8"), ("faster", "fp32")]
    jobs = job_order(impls, [1, 2], [None, 8], [("max", "fp32"), ("faster", "fp32")], 8)
    assert len(jobs) == 14 and len(set(jobs)) == 14
    firsts = [jobs[i][:2] for i in range(0, 12, 3)]
    assert firsts == [("max", "fp32"), ("max", "int8"), ("faster", "fp32"), ("max", "fp32")]
    assert jobs[3:6] == [("max", "int8", 1, 8, 1), ("faster", "fp32", 1, 8, 1), ("max", "fp32", 1, 8, 1)]
    assert [j[2:] for j in jobs[::3][:4]] == [(1, None, 1), (1, 8, 1), (2, None, 1), (2, 8, 1)]
    assert jobs[12:] == [("max", "fp32", 2, 8, 2), ("faster", "fp32", 2, 8, 2)]  # the fifth configuration: 4 % 2
    assert job_order(impls[::2], [2], [8], impls[::2], 8)[2:] == [("faster", "fp32", 2, 8, 2), ("max", "fp32", 2, 8, 2)]


def test_bulk_jobs_take_turns_at_going_first_each_in_a_fresh_ray_instance(monkeypatch, tmp_path):
    """`bench --bulk` favours no backend: every job runs in a Ray instance of its own (a local one
    started before the job's reference; on two nodes a fresh Cluster), and the implementations go
    first by turns; the report keeps its order."""
    import ray
    import ray.cluster_utils

    from maxwhisper.bench import bulk

    events = []
    impls = [("max", "fp32"), ("faster", "fp32")]

    def job(folder, out, backend, precision, model, workers, options, address=None):
        events.append(("job", backend, workers, options.batch_size, address))
        return {
            "implementation": implementation_label(backend, precision),
            "backend": backend,
            "precision": precision,
            "workers": workers,
            "batch_size": options.batch_size,
            "nodes": 2 if address else 1,
            "files": 1,
            "failed": 0,
            "audio_s": 10.0,
            "wall_s": 1.0,
            "rate": 10.0,
            "transcribe_s": 1.0,
            "read_s": 0.1,
            "write_s": 0.0,
            "node_files": [1],
        }

    def reference(spec, timeout):
        events.append(("reference", spec.backend, 1, spec.options.batch_size, None))
        return {
            "ok": True,
            "implementation": implementation_label(spec.backend, spec.precision),
            "backend": spec.backend,
            "precision": spec.precision,
            "batch_size": spec.options.batch_size,
            "files_at_once": 1,
            "wall_s": 1.0,
            "audio_s": 10.0,
            "rate": 10.0,
        }

    class Cluster:
        started = 0

        def __init__(self, **kwargs):
            Cluster.started += 1
            self.address = f"cluster-{Cluster.started}"
            events.append(("cluster", self.address))

        add_node = wait_for_nodes = lambda self, **kwargs: None

        def shutdown(self):
            events.append(("cluster shutdown", self.address))

    written = {}
    monkeypatch.setattr(bulk, "bulk_clips", lambda folder, seconds: ([folder / "a.flac"], 10.0, 1))
    monkeypatch.setattr(bulk, "_start_local_ray", lambda cores: events.append(("ray",)) or 2.0)
    monkeypatch.setattr(bulk, "_start_ray_data", lambda: None)
    monkeypatch.setattr(bulk, "_job", job)
    monkeypatch.setattr(bulk, "run_worker", reference)
    monkeypatch.setattr(bulk, "write_mode_report", lambda doc, md, out, stem: written.update(doc=doc, md=md))
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "shutdown", lambda: events.append(("shutdown",)))
    monkeypatch.setattr(ray.cluster_utils, "Cluster", Cluster)
    run = spec_of(build_parser().parse_args(["bulk", "--workers", "1,2", "--batch-sizes", "8"]))
    assert bulk.main_bulk(run, impls, "tiny.en", {"cores": 2}, {}, tmp_path, "stem") == 0

    local = events[: next(i for i, e in enumerate(events) if e[0] == "cluster")]  # two-node jobs come last
    jobs = [e for e in local if e[0] == "job"]
    assert len(jobs) == 8 and len(set(jobs)) == 8  # 2 implementations x 2 worker counts x (none, 8)
    # each job: a fresh instance, its reference (1 worker) right before it, then the instance's end
    for i, e in enumerate(local):
        if e[0] == "job":
            before = local[i - 2 : i] if e[2] == 1 else local[i - 1 : i]
            assert before[0] == ("ray",) and local[i + 1] == ("shutdown",)
            assert e[2] != 1 or before[1] == ("reference", e[1], 1, e[3], None)
    firsts = [jobs[i][1] for i in range(0, 8, 2)]  # who goes first in each configuration
    assert firsts == ["max", "faster", "max", "faster"]
    assert [(j[2], j[3]) for j in jobs[::2]] == [(1, None), (1, 8), (2, None), (2, 8)]
    # each two-node job in a Cluster of its own, ended after it; the order goes on rotating
    assert events[len(local) :] == [
        ("cluster", "cluster-1"),
        ("job", "max", 2, 8, "cluster-1"),
        ("shutdown",),
        ("cluster shutdown", "cluster-1"),
        ("cluster", "cluster-2"),
        ("job", "faster", 2, 8, "cluster-2"),
        ("shutdown",),
        ("cluster shutdown", "cluster-2"),
    ]
    runs = written["doc"]["bulk"]["runs"]
    assert [(r["backend"], r["workers"], r["batch_size"], r["nodes"]) for r in runs] == [
        ("max", 1, None, 1),
        ("max", 1, 8, 1),
        ("max", 2, None, 1),
        ("max", 2, 8, 1),
        ("faster", 1, None, 1),
        ("faster", 1, 8, 1),
        ("faster", 2, None, 1),
        ("faster", 2, 8, 1),
        ("max", 2, 8, 2),
        ("faster", 2, 8, 2),
    ]
    assert written["doc"]["bulk"]["ray_start_s"]["local"] == [2.0] * 8
    assert len(written["doc"]["bulk"]["ray_start_s"]["two_nodes"]) == 2
    assert "2.0-2.0 s for a fresh local instance per job" in written["md"]
    assert "for a fresh pair of virtual nodes (each with half the cores) per two-node job" in written["md"]
    assert "rotated one further than the last's" in written["md"]


# --- the command ----------------------------------------------------------------------------------


def _run(*args, timeout=900):
    env = {**os.environ, "MODULAR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "maxwhisper.bench", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bad_arguments_exit_2(tmp_path):
    out = _run("--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path))
    assert out.returncode == 2 and "not found" in out.stderr
    out = _run("--backends", "max,nope", "--quick", "--out", str(tmp_path))
    assert out.returncode == 2 and "unknown backend" in out.stderr
    assert not list(tmp_path.iterdir())


def test_quick_end_to_end(tmp_path):
    out = _run("clips", "--quick", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    (json_path,) = tmp_path.glob("quick-cpu-*.json")
    assert json_path.with_suffix(".md").exists() and json_path.with_suffix(".html").exists()
    doc = json.loads(json_path.read_text())
    assert {"machine", "versions", "options", "results"} <= set(doc)
    assert doc["machine"]["cores"] == os.cpu_count() and doc["options"]["threads"] == os.cpu_count()
    assert doc["versions"]["max"] and doc["versions"]["faster-whisper"] and doc["versions"]["openai-whisper"]
    results = doc["results"]
    assert {(r["backend"], r["precision"]) for r in results} == set(IMPLEMENTATIONS["cpu"])
    for r in results:
        assert r["audio"] == "jfk.flac" and r["device"] == "cpu" and r["audio_s"] == pytest.approx(11.0)
        assert isinstance(r["wer"], float) and 0.0 <= r["wer"] < 0.5
        assert isinstance(r["agreement"], float) and r["tokens_identical_to_openai"] in (True, False)
        assert r["total_s_median"] > 0 and r["rtfx"] > 0 and r["decode_s"] is not None
    assert next(r for r in results if r["backend"] == "max")["compile_s"] > 0
    assert next(r for r in results if r["backend"] == "openai")["agreement"] == 1.0
    assert {t["kind"] for t in doc["targets"]} == {"speed", "decoder", "wer"}  # decoder: MAX int8 against MAX fp32
    assert "| jfk.flac (11.0 s) | MAX fp32 |" in out.stdout and "| jfk.flac (11.0 s) | MAX int8 |" in out.stdout
    assert "WER on jfk.flac" in out.stdout


def test_streaming_end_to_end(tmp_path):
    out = _run("streaming", "--quick", "--backends", "faster", "--precisions", "int8", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    (json_path,) = tmp_path.glob("quick-streaming-cpu-*-tiny.en.json")
    (row,) = json.loads(json_path.read_text())["streaming"]["runs"][0]["rows"]
    assert row["audio"] == "jfk.flac" and row["updates"] >= 5 and row["latency_median_s"] > 0
    assert row["wer"] is not None and row["wer_vs_offline"] is not None
    assert row["behind_max_s"] >= row["behind_median_s"] >= 0 and 0 < row["encode_s"] < row["compute_s"]
    assert row["loop_ratio"] < 2.4 and row["held_back"] >= 0 and 0 < row["update_median_s"] <= row["update_p90_s"]
    assert "| jfk.flac | faster-whisper int8 |" in json_path.with_suffix(".md").read_text()


def test_streaming_results_written_before_streams_were_pooled_still_render():
    """Results written before --streams have rows without offsets or latency lists."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    path = results / "streaming-cpu-amd-epyc-avx512-vnni-bf16-2c-tiny.en-load1.json"
    doc = json.loads(path.read_text())
    for run in doc["streaming"]["runs"]:
        for old in run["rows"]:
            del old["latencies"], old["offset_s"]
    row = doc["streaming"]["runs"][0]["rows"][0]
    md = streaming_markdown(doc)
    assert f"| {row['audio']} | {doc['streaming']['runs'][0]['implementation']} | 0 s |" in md
    assert f"commit latency median {row['latency_median_s']:.2f} s" in md


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo (Linux)")
def test_results_record_the_cpu_generation():
    """ "AMD EPYC" alone does not tell a Zen 4 from a Zen 5, whose vector units differ in width."""
    import re

    assert re.fullmatch(r"family \d+, model \d+", machine_info()["cpu_family_model"])


def test_a_background_load_spinner_ends_with_the_process_that_started_it_even_killed():
    # a benchmark killed (SIGTERM, SIGKILL) skips its clean-up: its spinners must not spin on
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os\nfrom maxwhisper.bench.cli import start_spinner\n"
            "print(start_spinner().pid, flush=True)\nos._exit(0)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    pid = int(started.stdout)

    def spinning() -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while spinning():
        assert time.monotonic() < deadline, "the spinner outlived the process that started it"
        time.sleep(0.1)
