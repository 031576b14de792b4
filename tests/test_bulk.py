"""Bulk jobs on Ray Data (`maxwhisper.transcribe_many`, `python -m maxwhisper transcribe-many`):
the inputs, manifests, results table and progress; on the session's local Ray instance, a folder
of clips with a corrupt, an empty and a silent file among them, each good file's tokens equal to
`transcribe()` on it alone, a rerun that skips what is done; the command killed midway and run
again on the test clips; a job spread over two virtual nodes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import AUDIO

from maxwhisper.api import DecodeOptions, MaxWhisperError
from maxwhisper.audio import MEDIA_SUFFIXES
from maxwhisper.bulk.inputs import collect_inputs
from maxwhisper.bulk.progress import Progress
from maxwhisper.bulk.table import ResultsTable, is_done
from maxwhisper.scoring import normalize

ROOT = Path(__file__).resolve().parents[1]
JFK_WORDS = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def rows_of(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]


def partial_files(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if ".partial-" in p.name]


# --- inputs, results table, progress (no Ray) -------------------------------------------------


def test_folders_are_searched_and_mirrored_and_manifests_list_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a/one.wav", "a/sub/two.MP3", "a/.hidden.wav", "a/notes.txt", "a/out/old.wav", "b/three.flac"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"x")
    files = collect_inputs(["a", "b/three.flac", "a/one.wav"], output="a/out")  # the output folder is left out
    assert [(f.name, f.relative) for f in files] == [
        ("a/one.wav", "a/one.wav"),
        ("a/sub/two.MP3", "a/sub/two.MP3"),
        ("b/three.flac", "b/three.flac"),
    ]
    assert all(Path(f.path).is_absolute() and f.size == 1 for f in files)
    assert [f.relative for f in collect_inputs(["a"])] == ["one.wav", "out/old.wav", "sub/two.MP3"]

    Path("lists").mkdir()
    Path("lists/files.txt").write_text("# the first archive\n../a/one.wav\n\n../a/sub/two.MP3\n")
    Path("lists/files.csv").write_text("speaker,path\nx,../a/one.wav\ny,../missing.wav\n")
    Path("lists/files.jsonl").write_text(json.dumps({"path": str(tmp_path / "b/three.flac")}) + "\n\n")
    assert [f.name for f in collect_inputs(["lists/files.txt"])] == ["a/one.wav", "a/sub/two.MP3"]
    listed = collect_inputs(["lists/files.csv"])  # a missing file is listed: its row will say so
    assert [(f.name, f.relative, f.size) for f in listed] == [
        ("a/one.wav", "a/one.wav", 1),
        ("missing.wav", "missing.wav", 0),
    ]
    assert [f.name for f in collect_inputs(["lists/files.jsonl"])] == [str(tmp_path / "b/three.flac")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: None, "input not found: nowhere"),
        (lambda: Path("nowhere").mkdir(), "no audio or video files in folder nowhere"),
        (lambda: Path("nowhere.csv").write_text("file\nx.wav\n"), "manifest nowhere.csv has no 'path' column"),
        (lambda: Path("nowhere.jsonl").write_text('{"path": "a.wav"}\n{oops\n'), "nowhere.jsonl, line 2: not JSON"),
        (lambda: Path("nowhere.txt").write_text("# nothing\n"), "manifest nowhere.txt lists no files"),
    ],
)
def test_bad_inputs_are_refused_before_anything_starts(tmp_path, monkeypatch, make, message):
    monkeypatch.chdir(tmp_path)
    make()
    name = next((p.name for p in tmp_path.iterdir()), "nowhere")
    with pytest.raises(MaxWhisperError, match=message):
        collect_inputs([name])


def test_the_table_drops_a_line_cut_short_and_keeps_one_row_per_file(tmp_path):
    table = ResultsTable(tmp_path)
    ok = {
        "output": "a.wav",
        "status": "ok",
        "backend": "max",
        "model": "tiny.en",
        "precision": "fp32",
        "options": {"batch_size": None},
    }
    table.append({**ok, "status": "error"})
    table.append(ok)
    with open(table.path, "a") as f:
        f.write('{"output": "b.wav", "sta')  # a job killed while writing a row
    assert table.read() == [ok]
    (tmp_path / "a.wav.txt").write_text("text\n")
    wanted = {k: ok[k] for k in ("backend", "model", "precision", "options")}
    assert is_done(ok, wanted, tmp_path, ["txt"])
    assert not is_done(ok, wanted, tmp_path, ["txt", "srt"])  # an output asked for now is missing
    assert not is_done(ok, {**wanted, "options": {"batch_size": 8}}, tmp_path, ["txt"])
    table.rewrite([])
    assert table.read() == []


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    lines = io.StringIO()
    progress = Progress(total_files=4, total_bytes=400, stream=lines, interval=0.0)
    progress.done({"status": "error", "duration": None}, 100)
    progress.start -= 600  # the workers' start and model load, before the first file: not in the time left
    progress.done({"status": "ok", "duration": 1800.0}, 100)
    progress.done({"status": "ok", "duration": 16.0}, 100)
    progress.close()
    first, second, third = lines.getvalue().splitlines()
    assert first == "1/4 files (1 failed), 0.0 min of audio, 0.0 audio h/h"  # no time left from one file
    assert second.startswith("2/4 files (1 failed), 0.50 h of audio, ") and second.endswith(" left")
    assert third.startswith("3/4 files (1 failed), 0.50 h of audio")
    assert third.endswith(", 0m00s left")  # the rate since the first file, not since the start
    progress = Progress(total_files=2, total_bytes=200, stream=lines, interval=0.0)
    progress.done({"status": "ok", "duration": 16.0}, 100)
    assert lines.getvalue().splitlines()[-1].startswith("1/2 files, 0.3 min of audio, ")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = Progress(total_files=2, total_bytes=200, stream=screen)
    progress.done({"status": "ok", "duration": 3600.0}, 100)
    progress.done({"status": "ok", "duration": 3600.0}, 100)
    progress.close()
    frames = screen.getvalue().split("\r")[1:]
    assert frames[0].startswith("[" + "#" * 12 + "." * 12 + "] 1/2 files, 1.00 h of audio")
    assert frames[1].startswith("[" + "#" * 24 + "] 2/2 files, 2.00 h of audio") and frames[1].endswith("\n")


def test_a_worker_starts_before_its_model_loads_and_its_first_call_waits_for_the_load(tmp_path, monkeypatch):
    """Ray Data counts an actor started when its __init__ returns and reads files only from then on:
    the model loads on a thread meanwhile, and the first call waits for it (or reports its failure)."""
    import threading

    from maxwhisper import registry
    from maxwhisper.api import BackendError
    from maxwhisper.bulk.worker import JobSettings, Transcribe

    release = threading.Event()

    def create_transcriber(backend, **_):
        assert release.wait(60)
        if backend == "nope":
            raise BackendError("unknown backend 'nope'")
        return object()

    monkeypatch.setattr(registry, "create_transcriber", create_transcriber)
    settings = JobSettings("faster", "tiny.en", "cpu", "fp32", 1, True, DecodeOptions(), str(tmp_path), ("txt",), None)
    batch = {
        "path": np.array([str(tmp_path / "empty.wav")]),
        "name": np.array(["empty.wav"]),
        "output": np.array(["empty.wav"]),
        "audio": np.array([b""], dtype=object),
        "read_s": np.array([0.1]),
        "error": np.array(["empty.wav: the audio file is empty (0 bytes)"]),
    }
    worker, failing = Transcribe(settings), Transcribe(dataclasses.replace(settings, backend="nope"))
    assert worker.loading.is_alive() and failing.loading.is_alive()  # started, the models still loading
    calls = {}
    first = threading.Thread(target=lambda: calls.update(row=json.loads(worker(batch)["row"][0])))
    first.start()
    first.join(0.5)
    assert first.is_alive() and not calls  # the first file waits for the model
    release.set()
    first.join(60)
    assert calls["row"]["status"] == "error" and "fatal" not in calls["row"]
    assert calls["row"]["error"] == "empty.wav: the audio file is empty (0 bytes)"
    row = json.loads(failing(batch)["row"][0])
    assert row["fatal"] and row["error"] == "unknown backend 'nope'"  # the driver stops the job with it


def test_max_workers_transcribe_several_files_at_once_unless_batched():
    """MAX's sequential loop shares encoder calls and steps between files, on a CPU or a GPU (the job
    test checks each file's tokens against transcribe() on it alone); batched long-form and
    faster-whisper take one."""
    from maxwhisper.bulk.job import FILES_AT_ONCE, files_at_once

    assert files_at_once("max", None) == FILES_AT_ONCE > 1  # either plan, on a CPU or a GPU
    assert files_at_once("max", 8) == 1
    assert files_at_once("faster", None) == 1


def test_a_job_hands_out_its_largest_files_first_to_workers_taking_one_at_a_time(ray_local, monkeypatch):
    """Longest first, the size standing for the length: the job ends on its smallest files, so no
    worker is left alone on a long recording at the end. Equal sizes keep the given order; workers
    taking several files at once get them in the given order. The job's pipeline reads them so."""
    from maxwhisper.bulk import job
    from maxwhisper.bulk.worker import JobSettings

    files = collect_inputs([str(AUDIO)])
    order = job.handed_out(files, at_once=1)
    assert sorted(f.relative for f in order) == sorted(f.relative for f in files)
    assert [f.size for f in order] == sorted((f.size for f in files), reverse=True)
    assert order[0].size > order[-1].size and order != files  # the folder's order is not by size
    assert job.handed_out(files, at_once=4) == files
    twins = [dataclasses.replace(files[0], name="a"), dataclasses.replace(files[0], name="b")]
    assert [f.name for f in job.handed_out(twins, at_once=1)] == ["a", "b"]

    read = []

    class Stop(Exception):
        pass

    def from_items(items, **_):
        read.extend(item["output"] for item in items)
        raise Stop

    monkeypatch.setattr(ray_local.data, "from_items", from_items)
    settings = JobSettings("faster", "tiny.en", "cpu", "fp32", 1, True, DecodeOptions(), "out", ("txt",), None)
    with pytest.raises(Stop):
        job._pipeline(files, settings, workers=1)
    assert read == [f.relative for f in order]


# --- the workers' CPUs and threads ------------------------------------------------------------

MAX_THREADS = """
import json, os, sys
from maxwhisper.graph.model import cpu_device
from max.engine import InferenceSession
threads = int(sys.argv[1]) if len(sys.argv) > 1 else None
InferenceSession(devices=[cpu_device(threads)])
counts = {"threads": len(os.listdir("/proc/self/task")), "cores": [sorted(os.sched_getaffinity(int(t)))
          for t in os.listdir("/proc/self/task")]}
try:
    cpu_device(threads + 1 if threads else 1)
except Exception as e:
    counts["again"] = str(e)
print(json.dumps(counts))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no fewer threads to ask MAX for")
def test_max_runs_on_the_threads_asked_for_and_they_may_run_on_every_core():
    def run(*args):
        p = subprocess.run(
            [sys.executable, "-c", MAX_THREADS, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MODULAR_TELEMETRY_ENABLED": "0"},
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])

    every, one = run(), run("1")
    assert one["threads"] == every["threads"] - (len(os.sched_getaffinity(0)) - 1)  # a pool of 1 thread, not all
    assert all(cores == sorted(os.sched_getaffinity(0)) for cores in one["cores"])  # none pinned to one core
    assert "already runs on 1 CPU threads in this process; it cannot change to 2" in one["again"]
    cores = len(os.sched_getaffinity(0))
    more = run(str(cores + 2))  # more threads than cores: every core, and asking more again is the same
    assert more["threads"] == every["threads"] and "again" not in more


def test_single_threaded_workers_do_not_spin_and_max_starts_with_their_environment():
    """A MAX pool of one thread sleeps at once after a call (its 200 us spin takes a core another
    worker or a read wants); MAX aborts unless both names of the setting agree, so a worker's
    environment must start it. Workers of several threads keep the spin (their threads wait for
    each other between ops)."""
    from maxwhisper.bulk.job import _worker_env

    single, several = _worker_env(1), _worker_env(2)
    assert single["OMP_NUM_THREADS"] == "1" and several == {"OMP_NUM_THREADS": "2"}
    assert single["MODULAR_THREAD_BUSY_WAIT_US"] == single["MODULAR_RUNTIME_THREAD_BUSY_WAIT_TIME_US"] == "0"
    p = subprocess.run(
        [sys.executable, "-c", MAX_THREADS, "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MODULAR_TELEMETRY_ENABLED": "0", **single},
    )
    assert p.returncode == 0, p.stderr
    assert "already runs on 1 CPU threads" in json.loads(p.stdout.strip().splitlines()[-1])["again"]
    for name in single.keys() - {"OMP_NUM_THREADS"}:  # MAX reads each name: one set alone aborts it
        p = subprocess.run(
            [sys.executable, "-c", MAX_THREADS, "1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MODULAR_TELEMETRY_ENABLED": "0", name: "0"},
        )
        assert p.returncode != 0, name


RUNTIME_THREAD = """
import json, os, sys, time
import maxwhisper.graph.model
from maxwhisper.audio import load_audio
from maxwhisper.registry import create_transcriber
if sys.argv[2] == "default":  # the kernel's default timer slack, 50 us
    maxwhisper.graph.model.RUNTIME_THREAD_SLACK_NS = 50_000
t = create_transcriber("max", model="tiny.en", device="cpu", threads=1)
t.transcribe(load_audio(sys.argv[1]))

def wakeups():
    counts = {}
    for tid in os.listdir("/proc/self/task"):
        for line in open(f"/proc/self/task/{tid}/status"):
            if line.startswith("voluntary_ctxt_switches:"):
                counts[tid] = int(line.split()[1])
    return counts

before = wakeups()
time.sleep(1)
after = wakeups()
print(json.dumps(max(after[tid] - before.get(tid, 0) for tid in after)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timer slack and /proc are Linux's")
def test_max_s_polling_thread_wakes_rarely_once_a_model_has_run():
    """MAX starts a thread at a process's first graph call that waits 0.5 ms at a time, idle or
    not; the model's first call gives it a coarse timer slack, so an idle process's busiest thread
    wakes a few dozen times a second, not ~2000 (with the kernel's default slack)."""

    def busiest(slack: str) -> int:
        p = subprocess.run(
            [sys.executable, "-c", RUNTIME_THREAD, str(AUDIO / "jfk.flac"), slack],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MODULAR_TELEMETRY_ENABLED": "0"},
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])

    assert busiest("coarse") < 300
    assert busiest("default") > 1000  # the thread is there, and the check sees it


def test_workers_are_sized_on_the_cpus_that_a_job_just_ended_lets_go(ray_local):
    """Ray frees a finished job's actors' CPUs a moment after it ends: the next job's workers wait
    for them (sized on that moment they got a third of the machine), but not for CPUs held on."""
    import threading

    from maxwhisper.bulk.job import READ_CPUS, _worker_resources

    @ray_local.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    free = ray_local.available_resources()["CPU"]
    ending = Holder.remote()
    assert ray_local.get(ending.ready.remote())
    threading.Timer(0.5, ray_local.kill, args=(ending,)).start()
    assert _worker_resources("cpu", 1) == (free - READ_CPUS, 0.0)
    staying = Holder.remote()
    assert ray_local.get(staying.ready.remote())
    try:
        assert _worker_resources("cpu", 2) == ((free - 1 - READ_CPUS) / 2, 0.0)
    finally:
        ray_local.kill(staying)


# --- a job on the session's Ray instance -----------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three clips and three files that must fail, in folders, with a file that is not audio."""
    from maxwhisper.audio import SAMPLE_RATE, load_audio

    root = tmp_path_factory.mktemp("bulk") / "archive"
    (root / "talks").mkdir(parents=True)
    (root / "bad").mkdir()
    shutil.copy(AUDIO / "jfk.flac", root / "jfk.flac")
    shutil.copy(AUDIO / "stereo_diarization.wav", root / "talks" / "stereo.wav")
    sf.write(root / "talks" / "jfk-6s.ogg", load_audio(AUDIO / "jfk.flac")[: 6 * SAMPLE_RATE], SAMPLE_RATE)
    (root / "bad" / "corrupt.mp3").write_bytes(b"ID3" + bytes(range(256)) * 40)
    (root / "bad" / "empty.wav").write_bytes(b"")
    sf.write(root / "bad" / "silence.wav", np.zeros(3 * SAMPLE_RATE, np.int16), SAMPLE_RATE)
    (root / "notes.txt").write_text("not audio")
    return root


GOOD = ["jfk.flac", "talks/jfk-6s.ogg", "talks/stereo.wav"]
BAD = {
    "bad/corrupt.mp3": "archive/bad/corrupt.mp3",
    "bad/empty.wav": "archive/bad/empty.wav: the audio file is empty (0 bytes)",
    "bad/silence.wav": "archive/bad/silence.wav: the audio is silent",
}


def test_a_job_transcribes_each_file_once_and_a_rerun_does_only_what_is_left(
    ray_local, max_tiny_en, archive, tmp_path, monkeypatch
):
    import maxwhisper
    from maxwhisper.audio import load_audio

    monkeypatch.chdir(archive.parent)
    out = tmp_path / "out"
    summary = maxwhisper.transcribe_many("archive", out, device="cpu", formats=["txt", "json"], parquet=True)
    assert (summary.files, summary.transcribed, summary.failed, summary.skipped) == (6, 3, 3, 0)
    rows = {r["output"]: r for r in rows_of(out)}
    assert sorted(rows) == sorted(GOOD + list(BAD))
    for relative in GOOD:  # each file's tokens are those of transcribe() on it alone
        row = rows[relative]
        assert row["status"] == "ok" and row["error"] is None and row["path"] == f"archive/{relative}"
        assert row["backend"] == "max" and row["model"] == "tiny.en" and row["language"] == "en"
        assert row["outputs"] == [f"{relative}.txt", f"{relative}.json"] and row["duration"] > 0
        written = json.loads((out / f"{relative}.json").read_text())
        alone = max_tiny_en.transcribe(load_audio(archive / relative), DecodeOptions())
        assert [t for s in written["segments"] for t in s["tokens"]] == alone.tokens
        assert (out / f"{relative}.txt").read_text() == "".join(f"{s.text.strip()}\n" for s in alone.segments)
    assert normalize(rows["jfk.flac"]["text"]) == JFK_WORDS
    for relative, message in BAD.items():  # a message for people, naming the file as given
        assert rows[relative]["status"] == "error" and message in rows[relative]["error"]
        assert str(archive) not in rows[relative]["error"] and not rows[relative]["outputs"]
    assert not partial_files(out)
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(out / "results.parquet").column("output").to_pylist()) == sorted(rows)

    again = maxwhisper.transcribe_many("archive", out, device="cpu", formats=["txt", "json"])
    assert (again.transcribed, again.failed, again.skipped) == (0, 3, 3)  # the failed files are tried again
    assert {r["output"]: r for r in rows_of(out) if r["status"] == "ok"} == {
        k: v for k, v in rows.items() if v["status"] == "ok"
    }  # the rows of the files done are kept as they were
    batched = maxwhisper.transcribe_many("archive", out, device="cpu", formats=["txt", "json"], batch_size=2)
    assert (batched.transcribed, batched.failed, batched.skipped) == (3, 3, 0)  # other options: all done again
    rows = rows_of(out)
    assert sorted(r["output"] for r in rows) == sorted(GOOD + list(BAD))  # still each file once
    assert all(r["options"]["batch_size"] == 2 for r in rows)


def test_the_command_says_which_files_failed_and_a_model_that_cannot_load_stops_the_job(
    ray_local, archive, tmp_path, monkeypatch, capsys
):
    import maxwhisper
    from maxwhisper.__main__ import main

    monkeypatch.chdir(archive.parent)
    assert main(["transcribe-many", "archive/bad", "--output", str(tmp_path / "bad"), "--backend", "faster"]) == 1
    err = capsys.readouterr().err
    assert "3 files: 0 transcribed, 3 failed, 0 already done; 0.0 min of audio in" in err and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and all(any(message in line for line in errors) for message in BAD.values())
    assert str(archive) not in err

    not_a_model = tmp_path / "not-a-model"  # a folder: the workers find it is not a model when they load it
    not_a_model.mkdir()
    with pytest.raises(MaxWhisperError, match="not-a-model is not a CTranslate2 model folder"):
        maxwhisper.transcribe_many(archive / "jfk.flac", tmp_path, backend="faster", model=str(not_a_model))
    assert (tmp_path / "results.jsonl").read_text() == ""  # nothing recorded: a rerun does it all
    with pytest.raises(MaxWhisperError, match="unknown format"):
        maxwhisper.transcribe_many(archive / "jfk.flac", tmp_path, formats=["docx"])


def test_an_unknown_model_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    from maxwhisper.__main__ import main

    monkeypatch.setattr("maxwhisper.bulk.job._start_ray", lambda address: pytest.fail("Ray started"))
    assert (
        main(["transcribe-many", str(AUDIO / "jfk.flac"), "--output", str(tmp_path / "out"), "--model", "tiny.xx"]) == 2
    )
    assert capsys.readouterr().err == (
        "error: unknown model 'tiny.xx': use one of base, tiny.en, a CTranslate2 model "
        "folder, or an openai-whisper .pt file\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_a_folder_is_a_clear_error(tmp_path, capsys):
    from maxwhisper.__main__ import main

    (tmp_path / "notes.txt").write_text("a file")
    for output, message in [
        (tmp_path / "notes.txt", f"the output {tmp_path / 'notes.txt'} is a file, not a folder"),
        (tmp_path / "notes.txt" / "out", f"cannot make the output folder {tmp_path}/notes.txt/out: Not a directory"),
    ]:
        assert main(["transcribe-many", str(AUDIO / "jfk.flac"), "--output", str(output)]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"


def test_a_local_job_starts_a_ray_instance_of_its_own_not_the_one_ray_start_recorded(tmp_path):
    """Ray, given no address, joins the cluster that the last `ray start` on the machine recorded
    (ray_current_cluster in its temp folder), whoever started it, and then refuses num_cpus; a job
    without --address starts its own instance, as the docs say."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's sockets go under it
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens there
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "maxwhisper",
                "transcribe-many",
                str(AUDIO / "jfk.flac"),
                "--output",
                str(tmp_path / "out"),
                "--backend",
                "faster",
            ],
            cwd=ROOT,
            env={**env, "RAY_TMPDIR": str(ray_tmp), "MAXWHISPER_DEBUG": ""},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        assert normalize((tmp_path / "out" / "jfk.flac.txt").read_text()) == JFK_WORDS
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_address_in_the_environment_is_the_cluster_joined_as_ray_does(tmp_path, monkeypatch):
    """Without `address`, a job goes where $RAY_ADDRESS points, as `ray.init()` would; only where it
    is unset does the job start an instance of its own."""
    from maxwhisper.bulk import job

    joined = []

    def start_ray(address):
        joined.append(address)
        raise MaxWhisperError("stop here")

    monkeypatch.setattr(job, "_start_ray", start_ray)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(MaxWhisperError, match="stop here"):
        job.transcribe_many(AUDIO / "jfk.flac", tmp_path / "a", backend="faster")
    monkeypatch.setenv("RAY_ADDRESS", "")
    with pytest.raises(MaxWhisperError, match="stop here"):
        job.transcribe_many(AUDIO / "jfk.flac", tmp_path / "b", backend="faster")
    assert joined == ["ray://head:10001", None]


def test_the_command_killed_midway_and_run_again_transcribes_every_clip_once(tmp_path):
    """`transcribe-many` on the test clips, killed (SIGKILL) after its first rows."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "maxwhisper",
        "transcribe-many",
        str(AUDIO),
        "--output",
        str(out),
        "--format",
        "txt,json",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while not (out / "results.jsonl").is_file() or len(rows_of(out)) < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no rows after 15 minutes"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    done_first = {r["output"]: r for r in rows_of(out)}
    clips = sorted(p.name for p in AUDIO.iterdir() if p.suffix in MEDIA_SUFFIXES)
    assert 2 <= len(done_first) < len(clips)
    (out / ".jfk.wav.txt.partial-1").write_text("half a transc")  # as a kill while writing would leave

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    assert (
        f"{len(clips)} files: {len(clips) - len(done_first)} transcribed, 0 failed, {len(done_first)} already done"
        in second.stderr
    )
    rows = rows_of(out)
    assert sorted(r["output"] for r in rows) == clips  # every clip exactly once
    assert all(r["status"] == "ok" for r in rows)
    assert all(done_first[r["output"]] == r for r in rows if r["output"] in done_first)  # not done again
    for clip in clips:
        assert (out / f"{clip}.txt").read_text().strip()
        assert json.loads((out / f"{clip}.json").read_text())["audio"] == str(AUDIO / clip)
    assert normalize((out / "jfk.wav.txt").read_text()) == JFK_WORDS
    assert not partial_files(out)


# Ray's virtual nodes need a cluster of their own: this runs in a subprocess, beside the session's
# local instance (one process holds one Ray connection)
TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
import maxwhisper

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
try:
    summary = maxwhisper.transcribe_many(sys.argv[1], sys.argv[2], backend="faster", workers=2,
                                         address=cluster.address)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    print(json.dumps({"transcribed": summary.transcribed, "failed": summary.failed, "nodes": nodes}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_job_spreads_over_two_nodes(tmp_path):
    manifest = tmp_path / "files.csv"
    copies = [tmp_path / "clips" / f"jfk-{i}.wav" for i in range(6)]
    copies[0].parent.mkdir()
    for copy in copies:
        shutil.copy(AUDIO / "jfk.wav", copy)
    manifest.write_text("path\n" + "".join(f"clips/{c.name}\n" for c in copies) + "clips/gone.wav\n")
    p = subprocess.run(
        [sys.executable, "-c", TWO_NODES, str(manifest), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert (report["transcribed"], report["failed"]) == (6, 1) and len(report["nodes"]) == 2
    rows = {r["output"]: r for r in rows_of(tmp_path / "out")}
    assert rows.pop("clips/gone.wav")["error"] == f"{tmp_path / 'clips/gone.wav'}: audio file not found"
    assert sorted(rows) == [f"clips/{c.name}" for c in copies]
    assert sorted({r["node"] for r in rows.values()}) == report["nodes"]  # both nodes transcribed files
    assert all(normalize(r["text"]) == JFK_WORDS for r in rows.values())


def test_reads_run_below_workers_of_several_threads_and_back_for_single_threaded_ones(tmp_path):
    """A task process reads for jobs of both kinds: its niceness follows the job's workers."""
    import threading

    from maxwhisper.bulk.worker import READ_NICE, read_audio

    clip = next(p for p in sorted(AUDIO.iterdir()) if p.suffix == ".flac")
    row = {"path": str(clip), "name": clip.name, "output": clip.name}
    niceness = []

    def reads():  # a thread of its own (Linux: niceness per thread), as a task process's thread
        for below in (True, False):
            out = read_audio(row, None, below_workers=below)
            assert out["error"] == "" and out["audio"]
            niceness.append(os.getpriority(os.PRIO_PROCESS, 0))

    def may_raise_priority():  # root or CAP_SYS_NICE: without it a thread's niceness only goes up
        os.setpriority(os.PRIO_PROCESS, 0, max(normal, READ_NICE))
        try:
            os.setpriority(os.PRIO_PROCESS, 0, normal)
            allowed.append(True)
        except PermissionError:
            allowed.append(False)

    normal, allowed = os.getpriority(os.PRIO_PROCESS, 0), []
    for target in (reads, may_raise_priority):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert niceness == [max(normal, READ_NICE), normal if allowed[0] else max(normal, READ_NICE)]
