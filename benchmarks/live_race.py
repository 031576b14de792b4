"""The Live tab's race measured: a clip fed in real time, 0.1 s at a time as a browser sends it,
to one `showcase.live_session.LiveSession` per implementation at once (the tab's own code), each
on a transcriber of its own, all sharing the CPU as they do in the app.

    .venv/bin/python benchmarks/live_race.py [--races max,faster max,faster,openai] [--paces 1.0]
        [--loads 0 1] [--audio examples/physicsworks-excerpt.flac] [--model tiny.en]

Each race, pace (the new audio an update waits for: `live_session.MIN_NEW_S`) and background load
(cores kept busy by spinning processes, as `bench --background-load`) is one run over the clip:
per implementation the commit latency (median, p90: when a word turned final minus when it was
said, on the wall clock), the seconds of computing per second of audio, how far behind it fell at
worst, and the WER of its streamed text against its own offline transcript. Writes
benchmarks/results/live-race-<device tag>-<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import SAMPLE_RATE, load_audio  # noqa: E402
from maxwhisper.bench.cli import start_spinner  # noqa: E402
from maxwhisper.bench.machine import device_tag, machine_info, versions  # noqa: E402
from maxwhisper.registry import create_warmed_up  # noqa: E402
from maxwhisper.scoring import wer  # noqa: E402
from maxwhisper.streaming import quantile  # noqa: E402
from showcase.live_session import LiveSession  # noqa: E402

CHUNK_S = 0.1  # a browser's microphone chunk


def race(transcribers: dict, audio, pace: float) -> dict[str, dict]:
    """One race over `audio` in real time; each implementation's figures."""
    sessions = {b: LiveSession(lambda t=t: t, min_new_s=pace) for b, t in transcribers.items()}
    step, behind = round(CHUNK_S * SAMPLE_RATE), {b: 0.0 for b in sessions}
    start = time.monotonic()
    for i, at in enumerate(range(0, len(audio), step)):
        time.sleep(max(0.0, start + (i + 1) * CHUNK_S - time.monotonic()))
        for b, session in sessions.items():
            session.add(audio[at : at + step], SAMPLE_RATE)
            behind[b] = max(behind[b], session.behind_s)
    for session in sessions.values():
        session.stop(timeout=0)
    deadline = time.monotonic() + 300
    while any(s.running for s in sessions.values()) and time.monotonic() < deadline:  # the last updates
        for b, session in sessions.items():
            behind[b] = max(behind[b], session.behind_s)
        time.sleep(CHUNK_S)
    figures = {}
    for b, s in sessions.items():
        figures[b] = {
            "words": len(s.committed),
            "text": "".join(w.text for w in s.committed).strip(),
            "latency_median_s": statistics.median(s.latencies) if s.latencies else None,
            "latency_p90_s": quantile(s.latencies, 0.9),
            "compute_share": s.compute_s / s.received_s,
            "behind_max_s": behind[b],
            "updates": s.updates,
            "error": s.error or None,
        }
    return figures


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"# Live race: {doc['model']}, {doc['audio']} ({doc['audio_s']:.0f} s) fed in real time",
        "",
        f"{m['cpu']} ({m['vector_isa']}), {m['cores']} cores; {doc['created']}. `{doc['command']}`",
        "",
        "| race | pace s | background load | implementation | words | commit latency median | p90 | "
        "computing per audio s | behind at worst | WER vs own offline |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in doc["runs"]:
        for b, f in run["figures"].items():
            lat = "–" if f["latency_median_s"] is None else f"{f['latency_median_s']:.2f} s"
            p90 = "–" if f["latency_p90_s"] is None else f"{f['latency_p90_s']:.2f} s"
            lines.append(
                f"| {'+'.join(run['race'])} | {run['pace_s']:g} | {run['load']} | {b} | {f['words']} | "
                f"{lat} | {p90} | {f['compute_share']:.2f} | {f['behind_max_s']:.1f} s | "
                f"{100 * f['wer_vs_offline']:.1f} % |"
            )
    lines += [
        "",
        "Each implementation streams the same audio on a transcriber of its own, all at once on the same "
        "cores (the Live tab's `LiveSession`). Pace: the new audio an update waits for. Commit latency: when a "
        "word turned final minus when it was said, on the wall clock, from the first chunk's arrival. "
        "Computing per audio s: the updates' seconds per second of audio (above 1 it falls behind). Behind at "
        "worst: the most audio received and not yet transcribed.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--races", nargs="+", default=["max,faster", "max,faster,openai"])
    p.add_argument("--paces", nargs="+", type=float, default=[1.0])
    p.add_argument("--loads", nargs="+", type=int, default=[0, 1])
    p.add_argument("--audio", default=str(ROOT / "examples" / "physicsworks-excerpt.flac"))
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    races = [r.split(",") for r in args.races]
    audio = load_audio(args.audio)
    backends = list(dict.fromkeys(b for r in races for b in r))
    transcribers = {b: create_warmed_up(b, model=args.model, device="cpu") for b in backends}
    offline = {b: t.transcribe(audio, DecodeOptions()).text for b, t in transcribers.items()}
    runs = []
    for load in args.loads:
        spinners = [start_spinner() for _ in range(load)]
        try:
            for pace in args.paces:
                for racers in races:
                    figures = race({b: transcribers[b] for b in racers}, audio, pace)
                    for b, f in figures.items():
                        f["wer_vs_offline"] = wer(offline[b], f["text"])
                        print(
                            f"{'+'.join(racers)} pace {pace:g} load {load}: {b} latency {f['latency_median_s']} "
                            f"share {f['compute_share']:.2f} behind {f['behind_max_s']:.1f}",
                            flush=True,
                        )
                    runs.append({"race": racers, "pace_s": pace, "load": load, "figures": figures})
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    machine = machine_info()
    doc = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python benchmarks/live_race.py " + " ".join(sys.argv[1:]),
        "machine": machine,
        "versions": versions(),
        "model": args.model,
        "audio": Path(args.audio).name,
        "audio_s": len(audio) / SAMPLE_RATE,
        "offline": offline,
        "runs": runs,
    }
    stem = args.out / f"live-race-{device_tag('cpu', machine)}-{args.model}"
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    Path(f"{stem}.md").write_text(markdown(doc), encoding="utf-8")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
