"""`python -m maxwhisper warm`: every graph compiled into a new, empty MAX cache once per session,
after which a new process's transcription compiles nothing; bad names refused before any compile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maxwhisper.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT.parent / "shared" / "audio" / "jfk.flac"
# what a tiny.en fp32 model runs on the CPU: the first window's pair compiled as one unit, the rest one by one
UNITS = ("encoder+token_step", "decoder_step", "alignment", "cache_reorder", "batch_repeat")


def maxwhisper(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maxwhisper", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.fixture(scope="session")
def warmed(tmp_path_factory):
    """`warm` for tiny.en fp32 on the CPU in a new, empty MODULAR_CACHE_DIR (a cold compile of every
    graph: minutes on 2 cores): the cache, the environment naming it and the finished process."""
    cache = tmp_path_factory.mktemp("modular-cache")
    env = {**os.environ, "MODULAR_CACHE_DIR": str(cache), "MODULAR_TELEMETRY_ENABLED": "0", "MAXWHISPER_DEBUG": ""}
    return cache, env, maxwhisper(env, "warm", "--model", "tiny.en", "--precision", "fp32", "--device", "cpu")


def cache_files(cache: Path) -> dict[str, int]:
    """Every file under `cache` and when it was last written."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_warm_compiles_every_graph_and_then_a_transcription_compiles_nothing(warmed):
    cache, env, done = warmed
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = done.stdout.splitlines()
    for unit in UNITS:  # each unit once, with its seconds
        assert sum(f"tiny.en fp32 cpu: {unit} " in row and row.endswith(" s") for row in rows) == 1, done.stdout
    assert f"{len(UNITS)} compiled units ready in {cache}" in rows[-1]
    assert len(list((cache / "maxwhisper" / "graphs").glob("*.mef"))) == len(UNITS)

    before = cache_files(cache)
    # beams (the step graph, cache reorder, batch repeat) and word timestamps (alignment): every graph runs
    p = maxwhisper(env, "transcribe", str(JFK), "--device", "cpu", "--beam-size", "2", "--word-timestamps")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ask not what your country can do for you" in p.stdout
    assert cache_files(cache) == before  # nothing compiled: no file added to or rewritten in the cache


@pytest.mark.parametrize("flags, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--precision", "fp32,int9"], "unknown precision int9"),
    (["--device", "cpu", "--precision", "fp32,fp16"], "not fp16"),
    (["--precision", ","], "at least one"),
])
def test_warm_refuses_a_bad_model_or_precision_before_anything_compiles(capsys, monkeypatch, tmp_path, flags,
                                                                        message):
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["warm", *flags]) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and not out
    assert not (tmp_path / "cache").exists()
