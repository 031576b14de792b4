"""The GPU check in one run, what a lent GPU machine runs first (benchmarks/README.md#gpu):

1. the cold start: `maxwhisper transcribe jfk.flac --device gpu` as a new process over an empty MAX
   cache that holds only the graphs compiled ahead on another machine (`--artifacts DIR`, built
   with `maxwhisper warm --device gpu --arch sm_90 --precision fp32,fp16`, which the rest of the
   run then loads too), the whole process timed;
2. per precision: MAX's load, its tokens on jfk and the lecture against openai-whisper float32's on
   the CPU, the lecture timed as it runs (greedy runs of several steps a call, replayed as captured
   device graphs), with one step a call, and without device graphs;
3. the decode's split on the lecture: token calls (steps and runs, each waited for), copies to the
   device, prompts and encoder, reads back, and the host's work between them, per token;
4. eight transcriptions of the lecture's first 60 s at once, decoded together as a service replica
   decodes its requests (`graph/shared_steps.py`), against one after another, tokens checked; and
   the lecture in batched long-form (`--batch-size 16`);
5. openai-whisper and faster-whisper on CUDA on the same lecture, the same weights;
6. optionally (`--selfcheck`) MAX's components against openai-whisper.

    python benchmarks/gpu_check.py [--device gpu] [--precisions fp32,fp16] [--runs 3]
        [--artifacts DIR] [--audio-dir DIR] [--selfcheck] [--out benchmarks/results]

Writes <out>/<device tag>-check-tiny.en.json and .md, and prints each figure as it comes.
`--device cpu` runs the same on the GPU's graphs on the CPU (the portable plan), to try the script
without a GPU. Exits 1 when fp32's tokens differ from openai-whisper's or a component fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import SAMPLE_RATE, load_audio  # noqa: E402
from maxwhisper.bench.clips import audio_dir  # noqa: E402
from maxwhisper.bench.machine import device_tag, machine_info, versions  # noqa: E402
from maxwhisper.scoring import wer  # noqa: E402

JFK, LECTURE = "jfk.flac", "physicsworks.flac"
BATCH = 16  # the batched long-form run's batch size (the issue's --batch-size 16 goal)
JFK_TEXT = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def say(*parts, end: str = "\n") -> None:
    print(*parts, end=end, flush=True)


def failure(e: Exception) -> str:
    """What did not run, in one line: the exception's type and its message's first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def compare(ours: list[int], reference: list[int], ours_text: str, reference_text: str) -> dict:
    """Tokens equal, or where they first differ and the word error rate of our text."""
    first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
    return {
        "tokens": len(ours),
        "identical": ours == reference,
        "first_difference": None if ours == reference else first,
        "wer_percent": round(100 * (wer(reference_text, ours_text) or 0.0), 2),
    }


def cold_start(artifacts: Path, jfk: Path, device: str) -> dict:
    """A new process's first jfk transcript over an empty MAX cache holding only `artifacts`."""
    with tempfile.TemporaryDirectory() as cache:
        graphs = Path(cache) / "maxwhisper" / "graphs"
        graphs.mkdir(parents=True)
        for mef in artifacts.glob("*.mef"):
            shutil.copy(mef, graphs)
        env = {**os.environ, "MODULAR_CACHE_DIR": cache, "MODULAR_TELEMETRY_ENABLED": "0"}
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "maxwhisper", "transcribe", str(jfk), "--device", device],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        seconds = time.perf_counter() - start
    text = " ".join("".join(c for c in run.stdout.lower() if c.isalnum() or c.isspace()).split())
    compiled = [line for line in run.stderr.splitlines() if "compiles" in line]
    return {
        "seconds": round(seconds, 2),
        "artifacts": len(list(artifacts.glob("*.mef"))),
        "exit": run.returncode,
        "jfk_sentence": JFK_TEXT in text,
        "compiled": compiled,
        "stderr_tail": run.stderr.strip()[-600:],
    }


def median_time(fn, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3), [round(t, 3) for t in times]


def split(mx, samples) -> dict:
    """One lecture transcript with every graph call waited for and timed: where the decode's time goes."""
    from maxwhisper import decoding
    from maxwhisper.graph import device_steps

    net = mx.net
    spent = {"token_calls": [], "uploads": [], "graph_calls": [], "reads": []}
    append, appended = decoding.GreedyDecoder.append, [0]  # the tokens the decoding read, one call each

    def counted_append(self, *args):
        appended[0] += 1
        return append(self, *args)

    copies, tokens = [0], [0]
    run_graph, set_input, run, to_numpy = device_steps.run_graph, device_steps.StepBuffers.set, net.run, net.to_numpy

    inside = []  # a token step under way: its own graph call is not counted again

    def timed(kind, fn, *args):
        if inside:
            return fn(*args)
        inside.append(kind == "token_calls")
        start = time.perf_counter()
        try:
            out = fn(*args)
            if kind in ("token_calls", "graph_calls") and not net.device_ref.is_cpu():
                net.device.synchronize()
        finally:
            inside.pop()
        spent[kind].append(time.perf_counter() - start)
        return out

    def counted_set(buffers, name, array):
        copied = timed("uploads", set_input, buffers, name, array)
        copies[0] += copied
        return copied

    def token_call(n, b, name):
        tokens[0] += 1 if name == "token_step" else net.plan.steps_per_call
        return timed("token_calls", run_graph, n, b, name)

    device_steps.run_graph = token_call
    decoding.GreedyDecoder.append = counted_append
    device_steps.StepBuffers.set = counted_set
    net.run = lambda graph, *inputs: timed("graph_calls", run, graph, *inputs)
    net.to_numpy = lambda buffer: timed("reads", to_numpy, buffer)
    try:
        start = time.perf_counter()
        mx.transcribe(samples, DecodeOptions())
        total = time.perf_counter() - start
    finally:
        device_steps.run_graph, device_steps.StepBuffers.set = run_graph, set_input
        decoding.GreedyDecoder.append = append
        del net.run, net.to_numpy
    calls = spent["token_calls"]
    host = total - sum(map(sum, spent.values()))
    out = {
        "total_s": round(total, 3),
        "steps_per_call": net.plan.steps_per_call if net.runs else 1,
        "token_calls": len(calls),
        "steps": tokens[0],  # a run's steps after its window's end included
        "tokens": appended[0],
        "token_call_ms_median": round(1e3 * statistics.median(calls), 3) if calls else None,
        "token_calls_s": round(sum(calls), 3),
        "device_ms_per_token": round(1e3 * sum(calls) / max(appended[0], 1), 3),
        "device_copies": copies[0],
        "uploads_s": round(sum(spent["uploads"]), 3),
        "other_graph_calls": len(spent["graph_calls"]),
        "other_graph_calls_s": round(sum(spent["graph_calls"]), 3),
        "reads": len(spent["reads"]),
        "reads_s": round(sum(spent["reads"]), 3),
        "host_s": round(host, 3),
        "host_ms_per_token": round(1e3 * host / max(appended[0], 1), 3),
    }
    return out


def step_loop(mx, samples, n: int = 200) -> dict:
    """The token step alone, n times on one decoding's buffers: replayed (a GPU) and executed."""
    from maxwhisper.graph import device_steps

    net = mx.net
    held = {}
    original = device_steps.DeviceStepInference.cleanup_caching

    def keep(self):  # the decoding's buffers kept for the loop below
        held.setdefault("buffers", self.buffers)
        self.buffers = None
        device_steps.MaxChoosingInference.cleanup_caching(self)

    device_steps.DeviceStepInference.cleanup_caching = keep
    try:
        mx.transcribe(samples[: 16000 * 5], DecodeOptions())
    finally:
        device_steps.DeviceStepInference.cleanup_caching = original
    b = held["buffers"]
    out = {}
    for mode in ("replayed", "executed"):
        if mode == "replayed" and not net.captures:
            continue
        times = []
        for _ in range(n):
            b.held["positions"] = None  # the step moved the device's on: set again
            b.set("positions", np.full(len(b.held["tokens"]), 10, np.int64))
            start = time.perf_counter()
            if mode == "replayed":
                outputs = device_steps.run_graph(net, b, "token_step")
            else:
                outputs = net.run(net.token_step, *b.inputs.flat())
            net.to_numpy(outputs[1])
            times.append(time.perf_counter() - start)
        out[f"{mode}_ms_median"] = round(1e3 * statistics.median(times), 3)
    net.step_buffers.give_back(b)
    return out


def together(mx, samples, n: int = 8) -> dict:
    """`n` transcriptions of `samples` from `n` threads, decoded together (`max_batch` n), against
    the same one after another: seconds for all, and whether each kept the tokens it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from maxwhisper.graph.shared_steps import SharedModel

    alone = mx.transcribe(samples, DecodeOptions()).tokens
    start = time.perf_counter()
    for _ in range(n):
        mx.transcribe(samples, DecodeOptions())
    one_by_one = time.perf_counter() - start
    mx.decoder_model = shared = SharedModel(mx.net, n)
    try:
        with ThreadPoolExecutor(n) as pool:
            start = time.perf_counter()
            results = list(pool.map(lambda _: mx.transcribe(samples, DecodeOptions()), range(n)))
            at_once = time.perf_counter() - start
    finally:
        mx.decoder_model = mx.net
        shared.close()
    return {
        "transcriptions": n,
        "one_by_one_s": round(one_by_one, 3),
        "together_s": round(at_once, 3),
        "same_tokens": all(r.tokens == alone for r in results),
        "shared_steps": shared.steps.steps,
        "rows_stepped": shared.steps.rows_stepped,
    }


def batched(mx, lecture, runs: int) -> dict:
    """The lecture in batched long-form (`--batch-size BATCH`): median seconds and times real time."""
    options = DecodeOptions(batch_size=BATCH)
    try:
        first = mx.transcribe(lecture, options)
        seconds, times = median_time(lambda: mx.transcribe(lecture, options), runs)
    except Exception as e:  # noqa: BLE001 - what did not run is a result too
        return {"error": failure(e)}
    real_time = round(len(lecture) / SAMPLE_RATE / seconds)
    return {
        "batch_size": BATCH,
        "lecture_s": seconds,
        "runs": times,
        "x_real_time": real_time,
        "tokens": len(first.tokens),
    }


def check_precision(device: str, precision: str, audio: Path, reference: dict, runs: int) -> dict:
    from maxwhisper.max_backend import MaxTranscriber

    start = time.perf_counter()
    mx = MaxTranscriber("tiny.en", device=device, precision=precision, kernels=False)
    out = {"precision": precision, "load_s": round(time.perf_counter() - start, 2), "clips": {}}
    say(f"MAX {precision}: loaded in {out['load_s']} s")
    for clip in (JFK, LECTURE):
        samples = load_audio(audio / clip)
        first = time.perf_counter()
        result = mx.transcribe(samples, DecodeOptions())
        out["clips"][clip] = {
            "first_s": round(time.perf_counter() - first, 3),
            **compare(list(result.tokens), reference[clip]["tokens"], result.text, reference[clip]["text"]),
        }
        say(f"MAX {precision} {clip}: {out['clips'][clip]}")
    lecture = load_audio(audio / LECTURE)
    out["lecture_s"], out["lecture_runs"] = median_time(lambda: mx.transcribe(lecture, DecodeOptions()), runs)
    say(f"MAX {precision} lecture: median {out['lecture_s']} s of {out['lecture_runs']}", end=" ")
    say(f"(device graphs: {mx.net.captures})")
    out["split"] = split(mx, lecture)
    say(f"MAX {precision} split: {out['split']}")
    if mx.net.runs:  # the same one step a call
        mx.net.runs = False
        out["lecture_steps_s"], runs_steps = median_time(lambda: mx.transcribe(lecture, DecodeOptions()), runs)
        out["lecture_steps_same_tokens"] = mx.transcribe(lecture, DecodeOptions()).tokens == result.tokens
        say(f"MAX {precision} lecture one step a call: median {out['lecture_steps_s']} s of {runs_steps}")
        out["split_steps"] = split(mx, lecture)
        say(f"MAX {precision} split, one step a call: {out['split_steps']}")
        mx.net.runs = True
    out["step_loop"] = step_loop(mx, lecture)
    say(f"MAX {precision} token step alone: {out['step_loop']}")
    out["together"] = together(mx, lecture[: 60 * SAMPLE_RATE])
    say(f"MAX {precision} 8 at once: {out['together']}")
    out["batched"] = batched(mx, lecture, runs)
    say(f"MAX {precision} lecture --batch-size {BATCH}: {out['batched']}")
    if mx.net.captures:  # the same without device graphs
        mx.net.captures = False
        mx.net.__dict__.pop("step_buffers", None)
        out["lecture_executed_s"], runs_executed = median_time(lambda: mx.transcribe(lecture, DecodeOptions()), runs)
        say(f"MAX {precision} lecture without device graphs: median {out['lecture_executed_s']} s of {runs_executed}")
    out["mx"] = mx
    return out


def baselines(device: str, audio: Path, runs: int) -> list[dict]:
    """openai-whisper and faster-whisper on the lecture, each precision the device runs."""
    from maxwhisper.registry import BACKENDS, create_transcriber

    lecture = load_audio(audio / LECTURE)
    rows = []
    for name in ("openai", "faster"):
        backend = BACKENDS.get(name)
        for precision in backend.precisions.get(device, ()) if backend else ():
            row = {"backend": name, "precision": precision}
            try:
                t = create_transcriber(name, "tiny.en", device=device, precision=precision)
                t.transcribe(lecture, DecodeOptions())  # warm-up
                row["lecture_s"], row["runs"] = median_time(lambda: t.transcribe(lecture, DecodeOptions()), runs)
            except Exception as e:  # noqa: BLE001 - what did not run is a result too
                row["error"] = failure(e)
            say(f"{name} {precision}: {row}")
            rows.append(row)
    return rows


def markdown(run: dict) -> str:
    m = run["machine"]
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in m.get("gpus") or []) or "none"
    lines = [
        f"# The GPU check: {run['device']} (tiny.en)",
        "",
        f"`{run['command']}` ({run['created']}). GPU: {gpu}, MAX's architecture name {run.get('arch')}. "
        f"Host: {m['cpu']} ({m['vector_isa']}, {m['cores']} cores). Versions: "
        + ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v)
        + ".",
        "",
    ]
    if cold := run.get("cold_start"):
        lines += [
            "## Cold start",
            "",
            f"A new process's first jfk transcript over an empty MAX cache holding {cold['artifacts']} graphs "
            f"compiled ahead on another machine: **{cold['seconds']} s**, the whole process "
            f"(exit {cold['exit']}, JFK sentence printed: {cold['jfk_sentence']}). Graphs it compiled: "
            f"{'; '.join(cold['compiled']) or 'none'}.",
            "",
        ]
    lines += [
        "## Tokens and times",
        "",
        "Tokens: MAX's greedy transcript against openai-whisper float32 on the CPU. "
        f"Lecture: median of {run['runs']} runs after the first.",
        "",
        "| precision | load s | jfk | lecture tokens | lecture s | one step a call s | without device graphs s |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for p in run["precisions"]:

        def verdict(c):
            return (
                "identical"
                if c["identical"]
                else f"differ from token {c['first_difference']}, WER {c['wer_percent']:g} %"
            )

        lines.append(
            f"| {p['precision']} | {p['load_s']} | {verdict(p['clips'][JFK])} | {verdict(p['clips'][LECTURE])} "
            f"| {p['lecture_s']} | {p.get('lecture_steps_s', '–')}"
            f"{'' if p.get('lecture_steps_same_tokens', True) else ' (other tokens)'} "
            f"| {p.get('lecture_executed_s', '–')} |"
        )
    lines += ["", "| baseline | precision | lecture s |", "|---|---|---:|"]
    for b in run["baselines"]:
        lines.append(f"| {b['backend']} | {b['precision']} | {b.get('lecture_s') or 'did not run: ' + b['error']} |")
    lines += ["", "## The decode's split (one lecture transcript, every graph call waited for)", ""]
    for p in run["precisions"]:
        lines.append(
            f"- {p['precision']}: {json.dumps(p['split'])}; one step a call: {json.dumps(p.get('split_steps'))}; "
            f"the token step alone: {json.dumps(p['step_loop'])}"
        )
    lines += ["", "## Eight transcriptions of the lecture's first 60 s at once, decoded together", ""]
    for p in run["precisions"]:
        lines.append(f"- {p['precision']}: {json.dumps(p.get('together'))}")
    lines += ["", f"## The lecture in batched long-form (`--batch-size {BATCH}`)", ""]
    for p in run["precisions"]:
        lines.append(f"- {p['precision']}: {json.dumps(p.get('batched'))}")
    if any("selfcheck" in p for p in run["precisions"]):
        lines += ["", "## selfcheck (jfk.flac)", ""]
        for p in run["precisions"]:
            for r in p.get("selfcheck", []):
                lines.append(f"- {p['precision']} {r['name']}: {r['rel_err']:.2e} {'PASS' if r['passed'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument(
        "--precisions", default=None, help="comma-separated (default: fp32,fp16 on a GPU, fp32 on the CPU)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of the lecture per implementation")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="a folder of .mef graphs compiled ahead: time the cold start over them first",
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=None,
        help="holding jfk.flac and physicsworks.flac (default: the test audio, tests/audio)",
    )
    parser.add_argument("--selfcheck", action="store_true", help="also MAX's components against openai-whisper")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    audio = args.audio_dir or audio_dir()
    precisions = (args.precisions or ("fp32,fp16" if args.device == "gpu" else "fp32")).split(",")
    machine = machine_info()
    run = {
        "device": args.device,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "versions": versions(),
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "runs": args.runs,
        "precisions": [],
        "baselines": [],
    }
    if args.artifacts:
        run["cold_start"] = cold_start(args.artifacts, audio / JFK, args.device)
        say(f"cold start: {run['cold_start']}")
        from maxwhisper.graph.kernel_package import cache_folder

        kept = cache_folder() / "graphs"  # this process loads them too, rather than compiling for minutes
        kept.mkdir(parents=True, exist_ok=True)
        for mef in args.artifacts.glob("*.mef"):
            shutil.copy(mef, kept)
    from maxwhisper.graph.model import describe_devices
    from maxwhisper.registry import create_transcriber

    run["arch"] = describe_devices()[1:]
    openai = create_transcriber("openai", "tiny.en", device="cpu")
    reference = {}
    for clip in (JFK, LECTURE):
        result = openai.transcribe(load_audio(audio / clip), DecodeOptions())
        reference[clip] = {"tokens": list(result.tokens), "text": result.text}
    stem = args.out / f"{device_tag(args.device, machine)}-check-tiny.en"
    args.out.mkdir(parents=True, exist_ok=True)

    def write():
        kept = [{k: v for k, v in p.items() if k != "mx"} for p in run["precisions"]]
        Path(f"{stem}.json").write_text(json.dumps({**run, "precisions": kept}, indent=1) + "\n")
        Path(f"{stem}.md").write_text(markdown({**run, "precisions": kept}))

    for precision in precisions:
        run["precisions"].append(check_precision(args.device, precision, audio, reference, args.runs))
        write()
    run["baselines"] = baselines(args.device, audio, args.runs)
    write()
    if args.selfcheck:
        from maxwhisper.selfcheck import run_checks

        for p in run["precisions"]:
            p["selfcheck"] = [
                {"name": r.name, "passed": r.passed, "rel_err": r.rel_err, "detail": r.detail}
                for r in run_checks(p["mx"], openai, audio / JFK)
            ]
            say(f"selfcheck {p['precision']}: {p['selfcheck']}")
        write()
    say(f"wrote {stem}.json and .md")
    failed = [r["name"] for p in run["precisions"] for r in p.get("selfcheck", []) if not r["passed"]]
    failed += [
        clip
        for p in run["precisions"]
        if p["precision"] == "fp32"
        for clip, c in p["clips"].items()
        if not c["identical"]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
