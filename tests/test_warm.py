"""`python -m maxwhisper warm`: every graph compiled for a CPU level into a new, empty MAX cache once
per session, after which a new process on this CPU, without the level, transcribes compiling
nothing; bad names and levels refused before any compile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maxwhisper.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "tests" / "audio" / "jfk.flac"
# what a tiny.en fp32 model runs on the CPU: the first window's pair compiled as one unit, the rest one by one
UNITS = ("encoder+token_step", "decoder_step", "draft_cross", "token_run", "alignment", "cache_reorder", "batch_repeat")


def maxwhisper(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maxwhisper", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )


@pytest.fixture(scope="session")
def warmed(tmp_path_factory):
    """`warm --cpu-level x86-64-v3` (a cache built for any CPU with AVX2, as on another machine) for
    tiny.en fp32 in a new, empty MODULAR_CACHE_DIR (a cold compile of every graph: minutes on 2
    cores): the cache, the environment naming it and the finished process."""
    cache = tmp_path_factory.mktemp("modular-cache")
    env = {**os.environ, "MODULAR_CACHE_DIR": str(cache), "MODULAR_TELEMETRY_ENABLED": "0", "MAXWHISPER_DEBUG": ""}
    return (
        cache,
        env,
        maxwhisper(
            env, "warm", "--model", "tiny.en", "--precision", "fp32", "--device", "cpu", "--cpu-level", "x86-64-v3"
        ),
    )


def cache_files(cache: Path) -> dict[str, int]:
    """Every file under `cache` and when it was last written."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_warm_compiles_every_graph_and_then_a_transcription_compiles_nothing(warmed):
    """The artifacts are the level's, not this CPU's: a transcription, whose lookup tries this CPU's
    first, finds the level's, and a process on the cache names both for the first window's graphs.
    The first window's come shipped with the code for x86-64-v3 (`compiled.SHIPPED_GRAPHS`): warm
    loads them and copies them into the cache."""
    from maxwhisper.graph.compiled import SHIPPED_GRAPHS

    cache, env, done = warmed
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = done.stdout.splitlines()
    for unit in UNITS:  # each unit once, with its seconds
        assert sum(f"tiny.en fp32 cpu: {unit} " in row and row.endswith(" s") for row in rows) == 1, done.stdout
    assert f"{len(UNITS)} compiled units ready in {cache}" in rows[-1]
    artifacts = {p.name for p in (cache / "maxwhisper" / "graphs").glob("*.mef")}
    assert len(artifacts) == len(UNITS)

    before = cache_files(cache)
    # beams (the step graph, cache reorder, batch repeat) and word timestamps (alignment): every graph runs
    p = maxwhisper(env, "transcribe", str(JFK), "--device", "cpu", "--beam-size", "2", "--word-timestamps")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ask not what your country can do for you" in p.stdout
    assert cache_files(cache) == before  # nothing compiled: no file added to or rewritten in the cache

    names = subprocess.run(
        [sys.executable, "-c", FIRST_WINDOW_ARTIFACTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert names.returncode == 0, names.stderr[-3000:]
    host, *levels, shipped = names.stdout.split()
    assert host not in artifacts and levels[-1] in artifacts  # x86-64-v3: the last level tried in the cache
    assert shipped == levels[0]  # then the one shipped for this CPU's best level, by the same name
    assert (SHIPPED_GRAPHS / levels[-1]).read_bytes() == (cache / "maxwhisper" / "graphs" / levels[-1]).read_bytes()


# the artifact names a process on this CPU looks up for tiny.en fp32's first window, this CPU's first
FIRST_WINDOW_ARTIFACTS = """
from maxwhisper.checkpoint import load_checkpoint
from maxwhisper.graph.compiled import artifact_paths, custom_ops_unchecked
from maxwhisper.graph.model import MaxWhisper
net = MaxWhisper(load_checkpoint("tiny.en"))
with custom_ops_unchecked():
    graphs = [net.build(name)[0] for name in ("encoder", "token_step")]
print(*(path.name for path in artifact_paths(graphs)))
"""


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--precision", "fp32,int9"], "unknown precision int9"),
        (["--device", "cpu", "--precision", "fp32,fp16"], "not fp16"),
        (["--precision", ","], "at least one"),
        (["--cpu-level", "x86-64-v3", "--device", "gpu"], "give it with --device cpu"),
        (["--cpu-level", "x86-64-v3", "--device", "cpu", "--precision", "fp32,bf16"], "no x86-64 level has"),
    ],
)
def test_warm_refuses_a_bad_model_or_precision_before_anything_compiles(capsys, monkeypatch, tmp_path, flags, message):
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["warm", *flags]) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and not out
    assert not (tmp_path / "cache").exists()


def test_warm_refuses_a_cpu_level_this_cpu_lacks(capsys, monkeypatch, tmp_path):
    """The build machine runs what it compiles for a level: one without AVX-512 refuses x86-64-v4."""
    from maxwhisper import cpu_features

    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda: cpu_features.CPU_LEVELS["x86-64-v3"] | {"avx512f"})
    assert main(["warm", "--device", "cpu", "--cpu-level", "x86-64-v4"]) == 2
    out, err = capsys.readouterr()
    assert "lacks avx512bw, avx512cd, avx512dq, avx512vl" in err and len(err.strip().splitlines()) == 1 and not out
    assert cpu_features.cpu_level() is None and not (tmp_path / "cache").exists()


def test_a_cpu_level_answers_for_the_flags_the_plans_read(monkeypatch):
    """Under a level, the plans see its flags, not this CPU's: no bfloat16 attention on an AVX512_BF16 host."""
    from maxwhisper import cpu_features

    monkeypatch.setattr(cpu_features, "_level", None)  # restored after the test
    host = cpu_features.CPU_LEVELS["x86-64-v4"] | {"avx512_bf16", "avx512_vnni"}
    monkeypatch.setattr(cpu_features, "host_cpu_flags", lambda: host)
    assert cpu_features.has_bf16()
    cpu_features.use_cpu_level("x86-64-v3")
    assert cpu_features.cpu_level() == "x86-64-v3"
    assert cpu_features.cpu_flags() == cpu_features.CPU_LEVELS["x86-64-v3"]
    assert not cpu_features.has_bf16() and not cpu_features.bf16_attention_pays()


def test_every_graph_warmed_up_or_compiled_behind_on_another_thread():
    """`registry.create_warmed_up(every_graph=True)`, as a service replica starts: every graph of the
    plan is ready before the first request. Without it, as the app's models, the first window's graphs
    alone; `compile_rest` on another thread (the app's warm-up) readies the others, their seconds in
    `compile_s` but not in what this thread compiled, so a transcription here leaves none of them
    out of its time."""
    import threading

    from maxwhisper.audio import load_audio
    from maxwhisper.graph.model import first_graphs, graph_names
    from maxwhisper.registry import create_warmed_up

    every = create_warmed_up("max", every_graph=True, model="tiny.en", device="cpu")
    assert set(every.net.graphs) == set(graph_names(every.net.plan)) and len(every.net.graphs) == len(UNITS) + 1

    t = create_warmed_up("max", model="tiny.en", device="cpu")
    assert set(t.net.graphs) == set(first_graphs(t.net.plan))
    compiled, here, done = t.compile_s, t.net.compile_s_this_thread(), []
    behind = threading.Thread(target=lambda: done.extend(t.compile_rest()))
    behind.start()
    behind.join()
    assert [name for name, _ in done] == [n for n in graph_names(t.net.plan) if n not in first_graphs(t.net.plan)]
    assert t.compile_s - compiled == pytest.approx(sum(seconds for _, seconds in done), abs=0.05)
    assert t.net.compile_s_this_thread() == here
    result = t.transcribe(load_audio(str(JFK)))
    assert "ask not what your country" in result.text and 0 < result.timings.total_s
