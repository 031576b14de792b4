"""Live transcription (`maxwhisper.streaming`): LocalAgreement-2 on scripted hypotheses, the
stream loop over a scripted transcriber (arrival, prompts, trimming, latency), and MAX on jfk."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from maxwhisper.api import SAMPLE_RATE, DecodeOptions
from maxwhisper.streaming import LocalAgreement, StreamReport, StreamWord, stream_audio
from scripted import ScriptedTranscriber


def words(text: str, start: float = 0.0, step: float = 0.5) -> list[StreamWord]:
    return [StreamWord(start + i * step, start + (i + 1) * step, " " + w) for i, w in enumerate(text.split())]


def texts(ws: list[StreamWord]) -> str:
    return "".join(w.text for w in ws).strip()


def test_words_are_committed_once_two_hypotheses_agree():
    policy = LocalAgreement()
    assert policy.update(words("hello world")) == []
    assert texts(policy.update(words("Hello, world how"))) == "Hello, world"  # case and punctuation aside
    assert texts(policy.update(words("hello world how are"))) == "how"
    assert texts(policy.committed) == "Hello, world how" and texts(policy.tentative) == "are"
    assert texts(policy.finish()) == "are"
    assert texts(policy.committed) == "Hello, world how are"


def test_disagreement_commits_nothing_and_committed_text_never_changes():
    policy = LocalAgreement()
    policy.update(words("I scream"))
    assert policy.update(words("ice cream")) == []
    assert texts(policy.update(words("ice cream please"))) == "ice cream"
    # a later hypothesis that hears the committed words differently cannot change them
    assert texts(policy.update(words("I scream please now"))) == "please"
    assert texts(policy.committed) == "ice cream please"


def test_a_repeat_of_the_committed_tail_is_not_committed_twice():
    policy = LocalAgreement()
    policy.update(words("one two three"))
    assert texts(policy.update(words("one two three four"))) == "one two three"  # they end at 1.5 s
    # after a trim the model hears "three" again, timed just inside the committed end's slack
    again = [StreamWord(1.45, 1.6, " three")] + words("four five", start=1.6)
    assert texts(policy.update(again)) == "four"
    assert texts(policy.update(again + words("six", start=2.6))) == "five"
    assert texts(policy.committed) == "one two three four five"


def test_a_word_whose_time_moved_earlier_is_still_committed():
    policy = LocalAgreement()
    policy.update(words("ask not"))
    assert texts(policy.update(words("ask not what"))) == "ask not"  # "not" ends at 1.0 s
    # the next hypotheses time "not" and "what" 0.25 s earlier: "what" now starts before 1.0 s
    shifted = [StreamWord(w.start - 0.25, w.end - 0.25, w.text) for w in words("ask not what your")]
    assert texts(policy.update(shifted)) == "what"
    assert texts(policy.update(shifted + words("country", start=1.75))) == "your"
    assert texts(policy.committed) == "ask not what your"


def test_the_stream_commits_the_script_in_order_with_prompts_and_trimming():
    script = " ".join(f"w{i}" for i in range(80))  # 40 s of "speech"
    audio = np.arange(40 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE  # each sample holds its own time
    model = ScriptedTranscriber(script)
    report = stream_audio(model, audio, chunk_s=1.0)
    assert report.text == script
    assert report.updates == 40 and report.audio_s == 40.0 and report.compute_share == pytest.approx(0.25)
    assert all(lat >= 0 for lat in report.latencies)
    assert report.commit_times == sorted(report.commit_times)
    assert max(n for n, _ in model.calls) < 30  # the buffer was trimmed
    prompts = [p for _, p in model.calls if p]
    assert prompts and all(p.startswith("w") for p in prompts)


def test_text_that_never_settles_is_committed_at_the_forced_cut_not_lost():
    class Unsettled(ScriptedTranscriber):  # every hypothesis spells each word differently
        def transcribe(self, audio, options=DecodeOptions(), progress=None):
            result = super().transcribe(audio, options, progress)
            tag = f"v{len(self.calls)}"
            segments = [dataclasses.replace(seg, words=tuple(dataclasses.replace(w, word=w.word + tag)
                                                             for w in seg.words)) for seg in result.segments]
            return dataclasses.replace(result, segments=segments)

    audio = np.arange(60 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    report = stream_audio(Unsettled(" ".join(f"w{i}" for i in range(120))), audio, chunk_s=1.0)
    heard = [w.text.strip().split("v")[0] for w in report.words]
    assert heard == [f"w{i}" for i in range(120)]  # every word, once, in order
    early = [t for w, t in zip(report.words, report.commit_times) if w.end <= 20]
    assert early and max(early) < 40  # committed at a cut during the stream, not only at its end


def test_silence_keeps_the_buffer_short_and_the_user_prompt_comes_first():
    audio = np.arange(40 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    silent = ScriptedTranscriber("")
    report = stream_audio(silent, audio, chunk_s=1.0, options=DecodeOptions(initial_prompt="Physics lecture."))
    assert report.text == "" and report.words == []
    assert max(n for n, _ in silent.calls) <= 26  # cut 5 s before its end once past 25 s, though nothing was said
    assert {prompt for _, prompt in silent.calls} == {"Physics lecture."}
    talk = ScriptedTranscriber(" ".join(f"w{i}" for i in range(80)))
    stream_audio(talk, audio, chunk_s=1.0, options=DecodeOptions(initial_prompt="Physics lecture."))
    later = [p for _, p in talk.calls if p and p != "Physics lecture."]
    assert later and all(p.startswith("Physics lecture.") or len(p) >= 190 for p in later)


def report_with_latencies(latencies: list[float]) -> StreamReport:
    ws = words(" ".join(f"w{i}" for i in range(len(latencies))))
    return StreamReport(ws, [w.end + lat for w, lat in zip(ws, latencies)], compute_s=1.0, audio_s=10.0,
                        updates=len(latencies))


def test_latency_quantile_is_the_sorted_value_at_index_floor_q_n():
    report = report_with_latencies([3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert report.latencies == [3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert report.latency_quantile(0.9) == 10.0  # sorted[int(0.9 * 10)] = sorted[9]
    assert report.latency_quantile(0.5) == 6.0  # sorted[5]: the upper middle, not the average 5.5
    assert report.latency_quantile(0.0) == 1.0 and report.latency_quantile(1.0) == 10.0  # (clamped to n - 1)
    five = report_with_latencies([0.5, 2.5, 1.5, 4.5, 3.5])
    assert five.latency_quantile(0.9) == 4.5 and five.latency_quantile(0.5) == 2.5 and five.latency_quantile(0.2) == 1.5
    assert report_with_latencies([]).latency_quantile(0.9) is None  # nothing was committed
    with pytest.raises(ValueError):
        report.latency_quantile(90)


def test_stream_command_reports_the_median_and_p90_of_the_commit_latency(tmp_path, monkeypatch, capsys):
    import maxwhisper.__main__ as cli
    import maxwhisper.audio

    path = tmp_path / "talk.wav"
    path.write_bytes(b"")  # (only checked to exist: the audio comes from load_audio below)
    audio = np.arange(12 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    script = " ".join(f"w{i}" for i in range(24))
    monkeypatch.setattr(cli, "load_transcriber", lambda args, backend, kernels=None: ScriptedTranscriber(script))
    monkeypatch.setattr(maxwhisper.audio, "load_audio", lambda p, max_seconds=None: audio)
    assert cli.main(["stream", str(path)]) == 0
    out, err = capsys.readouterr()
    report = stream_audio(ScriptedTranscriber(script), audio, chunk_s=1.0)
    lat = sorted(report.latencies)
    assert len(lat) == 24 and report.latency_quantile(0.9) == lat[21]
    assert (f"{path}: 12.0 s in {report.updates} updates; commit latency median {(lat[11] + lat[12]) / 2:.2f} s, "
            f"p90 {lat[21]:.2f} s; compute {report.compute_share:.2f} s per audio second\n") in err
    assert out.strip().splitlines()[-1] == script
    silent = ScriptedTranscriber("")
    monkeypatch.setattr(cli, "load_transcriber", lambda args, backend, kernels=None: silent)
    assert cli.main(["stream", str(path)]) == 0
    assert f"{path}: 12.0 s in 12 updates; nothing was said\n" in capsys.readouterr().err


def test_max_streams_jfk(max_tiny_en, jfk_audio):
    from whisper.normalizers import EnglishTextNormalizer

    report = stream_audio(max_tiny_en, jfk_audio, chunk_s=1.0)
    normalise = EnglishTextNormalizer()
    assert normalise(report.text) == normalise(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.")
    assert report.updates >= 2 and all(lat >= 0 for lat in report.latencies)
    assert report.compute_share > 0


def test_stream_command_prints_committed_text_and_latency():
    import subprocess
    import sys
    from pathlib import Path

    from whisper.normalizers import EnglishTextNormalizer

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "maxwhisper", "stream", str(root.parent / "shared" / "audio" / "jfk.flac"),
                        "--backend", "faster", "--threads", "2"], cwd=root, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("[00:00.000 --> ") and "(committed at" in lines[0]
    normalise = EnglishTextNormalizer()
    assert normalise(lines[-1]) == normalise(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.")
    assert "commit latency median" in p.stderr and "Traceback" not in p.stderr
    bad = subprocess.run([sys.executable, "-m", "maxwhisper", "stream", "nope.wav", "--chunk", "0"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--chunk" in bad.stderr and "Traceback" not in bad.stderr
