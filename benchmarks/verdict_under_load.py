"""The Compare tab's verdict on a shared CPU: the tab's own comparison (`showcase.comparison`, three
rounds of a short clip, taken in turns) and verdict (`showcase.verdict`) run again and again while
background processes spin on the CPU, counting which implementation each verdict names fastest.

    .venv/bin/python benchmarks/verdict_under_load.py [--runs 10] [--loads 0 1 2]
        [--audio examples/jfk.flac] [--model tiny.en]

Each load is a number of busy processes (`bench --background-load`'s spinners) started before its
runs and stopped after them. Per verdict: the measure it rested on (wall-clock time where the CPU
was otherwise quiet, CPU time where other programs held cores), its winner, and each
implementation's best wall-clock and CPU seconds and the cores other programs kept busy during its
fastest run. Writes benchmarks/results/verdict-load-<device tag>-<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

import baselines  # noqa: E402
from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.bench.cli import start_spinner  # noqa: E402
from maxwhisper.bench.machine import device_tag, machine_info, versions  # noqa: E402
from maxwhisper.registry import BACKENDS, create_warmed_up, register  # noqa: E402
from showcase.comparison import run_comparison  # noqa: E402
from showcase.cpu_load import available_cores  # noqa: E402
from showcase.transcriptions import LocalTranscriptions  # noqa: E402
from showcase.verdict import fair_measure, winner  # noqa: E402

register(*baselines.BACKENDS)


def verdict(audio: str, model: str, transcriptions: LocalTranscriptions, cores: int) -> dict:
    """One comparison of every implementation, as the Compare tab runs it, and what its verdict says."""
    comparison = run_comparison(audio, list(BACKENDS), model, "cpu", DecodeOptions(), transcriptions)
    done = [p for p in comparison.panels.values() if p.runs]
    failed = {b: p.error for b, p in comparison.panels.items() if p.error}
    measure = fair_measure(done, cores) if len(done) > 1 else None
    return {
        "winner": winner(comparison, cores),
        "measure": measure.kind if measure else None,
        "rounds": comparison.rounds,
        "failed": failed or None,
        "implementations": {
            p.backend: {
                "wall_s": round(p.best.seconds, 3),
                "cpu_s": round(p.cheapest.cpu_s, 3) if p.cheapest else None,
                "other_cores": p.best.other_cores,
                "shared_cpu": p.best.shared_cpu or None,
            }
            for p in done
        },
    }


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"# The Compare tab's verdict under background load: {doc['model']}, {doc['audio']}",
        "",
        f"{m['cpu']} ({m['vector_isa']}), {m['cores']} cores; {doc['created']}. `{doc['command']}`",
        "",
        "| busy processes | verdicts | same winner | winners | measure | other programs' cores (median) | "
        "best wall s (median): " + ", ".join(doc["implementations"]) + " | CPU s (median) |",
        "|---:|---:|---:|---|---|---:|---|---|",
    ]
    for load, runs in doc["loads"].items():
        winners = Counter(r["winner"] or "none" for r in runs)
        measures = Counter(r["measure"] or "none" for r in runs)
        others = sorted(max(i["other_cores"] or 0.0 for i in r["implementations"].values()) for r in runs)

        def median(key: str, backend: str) -> str:
            values = sorted(
                r["implementations"][backend][key]
                for r in runs
                if backend in r["implementations"] and r["implementations"][backend][key] is not None
            )
            return f"{values[len(values) // 2]:.2f}" if values else "–"

        lines.append(
            f"| {load} | {len(runs)} | {winners.most_common(1)[0][1]} of {len(runs)} | "
            f"{', '.join(f'{w} {n}' for w, n in winners.most_common())} | "
            f"{', '.join(f'{k} {n}' for k, n in measures.most_common())} | {others[len(others) // 2]:.1f} | "
            f"{' / '.join(median('wall_s', b) for b in doc['implementations'])} | "
            f"{' / '.join(median('cpu_s', b) for b in doc['implementations'])} |"
        )
    lines += [
        "",
        "Each verdict is one comparison as the Compare tab runs it: each implementation once per round, "
        "three rounds, each one's best counting. Measure: wall (wall-clock time, where no other program kept "
        "half a core busy during the runs that count), cpu (the CPU seconds the app's process used during each "
        "run, where other programs did). Other programs' cores: the most any implementation's fastest run saw, "
        "from /proc/stat: every other process on the machine, not only the busy ones started here.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="verdicts per load")
    p.add_argument("--loads", nargs="+", type=int, default=[0, 1, 2], help="busy background processes")
    p.add_argument("--audio", default=str(ROOT / "examples" / "jfk.flac"))
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    transcriptions = LocalTranscriptions(create_warmed_up)
    for backend in BACKENDS:
        transcriptions.models.get(backend, args.model, "cpu")
    cores, loads = available_cores(), {}
    for load in args.loads:
        spinners = [start_spinner() for _ in range(load)]
        try:
            time.sleep(1.0)  # the spinners running before the first run
            loads[str(load)] = []
            for i in range(args.runs):
                run = verdict(args.audio, args.model, transcriptions, cores)
                loads[str(load)].append(run)
                print(
                    f"load {load} run {i + 1}: {run['winner']} by {run['measure']} "
                    f"{json.dumps(run['implementations'])}",
                    flush=True,
                )
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    machine = machine_info()
    doc = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python benchmarks/verdict_under_load.py " + " ".join(sys.argv[1:]),
        "machine": machine,
        "versions": versions(),
        "model": args.model,
        "audio": Path(args.audio).name,
        "implementations": list(BACKENDS),
        "loads": loads,
    }
    stem = args.out / f"verdict-load-{device_tag('cpu', machine)}-{args.model}"
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    Path(f"{stem}.md").write_text(markdown(doc), encoding="utf-8")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
