"""The GPU check in one run: for each precision, MAX's load time, its tokens on jfk and the lecture
against openai-whisper's float32 tokens on the CPU, and `selfcheck`'s components. What to run
first on a GPU machine (benchmarks/README.md#gpu).

    python benchmarks/gpu_check.py [--device gpu] [--precisions fp32,fp16] [--audio-dir DIR]
        [--out benchmarks/results]

Writes benchmarks/results/<device tag>-check-tiny.en.json and .md after each precision, keeping
the other precisions of an earlier run, so `--precisions fp32` and `--precisions fp16` can run
apart. `--device cpu` runs the same checks on the GPU's graphs on the CPU (the portable plan,
fp32), to try the script without a GPU. Exits 1 when a component fails or fp32's tokens differ.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import load_audio  # noqa: E402
from maxwhisper.bench.clips import audio_dir  # noqa: E402
from maxwhisper.bench.machine import device_tag, machine_info, versions  # noqa: E402
from maxwhisper.scoring import wer  # noqa: E402

CLIPS = ("jfk.flac", "physicsworks.flac")


def compare(ours: list[int], reference: list[int], ours_text: str, reference_text: str) -> dict:
    """Tokens equal, or where they first differ and the word error rate of our text."""
    first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
    return {"tokens": len(ours), "reference_tokens": len(reference), "identical": ours == reference,
            "first_difference": None if ours == reference else first,
            "wer_percent": round(100 * (wer(reference_text, ours_text) or 0.0), 2)}


def check_precision(device: str, precision: str, audio: Path, reference: dict, openai) -> dict:
    from maxwhisper.max_backend import MaxTranscriber
    from maxwhisper.selfcheck import run_checks

    start = time.perf_counter()
    mx = MaxTranscriber("tiny.en", device=device, precision=precision, kernels=False)
    out = {"precision": precision, "load_s": round(time.perf_counter() - start, 1), "clips": {}}
    for clip in CLIPS:
        samples = load_audio(audio / clip)
        first = time.perf_counter()
        result = mx.transcribe(samples, DecodeOptions())
        out["clips"][clip] = {"first_s": round(time.perf_counter() - first, 2),
                              **compare(list(result.tokens), reference[clip]["tokens"], result.text,
                                        reference[clip]["text"])}
        print(f"{precision} {clip}: {out['clips'][clip]}", flush=True)
    start = time.perf_counter()
    out["selfcheck"] = [{"name": r.name, "passed": r.passed, "rel_err": r.rel_err, "detail": r.detail}
                        for r in run_checks(mx, openai, audio / "jfk.flac")]
    out["selfcheck_s"] = round(time.perf_counter() - start, 1)
    print(f"{precision} selfcheck: {out['selfcheck']}", flush=True)
    return out


def markdown(run: dict) -> str:
    m = run["machine"]
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in m.get("gpus") or []) or "none"
    lines = [f"# The GPU check: {run['device']} (tiny.en)", "",
             f"`{run['command']}` ({run['created']}). GPU: {gpu}. Host: {m['cpu']} ({m['vector_isa']}, "
             f"{m['cores']} cores). Versions: "
             + ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v) + ".",
             "", "Tokens: MAX's greedy transcript (openai-whisper's temperature fallback) against openai-whisper "
             "float32 on the CPU. Load: the model's graphs, compiled or read from MAX's cache.", "",
             "| precision | load s | clip | first transcript s | tokens | against openai-whisper fp32 |",
             "|---|---:|---|---:|---:|---|"]
    for p in run["precisions"]:
        for clip, c in p["clips"].items():
            verdict = "identical" if c["identical"] else \
                f"differ from token {c['first_difference']}; WER {c['wer_percent']:g} %"
            lines.append(f"| {p['precision']} | {p['load_s']:g} | {clip} | {c['first_s']:g} | {c['tokens']} "
                         f"| {verdict} |")
    names = [r["name"] for r in run["precisions"][0]["selfcheck"]]
    lines += ["", "selfcheck (jfk.flac), relative error against openai-whisper float32 on the CPU:", "",
              "| component | " + " | ".join(p["precision"] for p in run["precisions"]) + " |",
              "|---|" + "---:|" * len(run["precisions"])]
    for i, name in enumerate(names):
        cells = [f"{r['rel_err']:.2e} {'PASS' if r['passed'] else 'FAIL'}"
                 for r in (p["selfcheck"][i] for p in run["precisions"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--precisions", default=None,
                        help="comma-separated (default: fp32,fp16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--audio-dir", type=Path, default=None,
                        help="holding jfk.flac and physicsworks.flac (default: the test audio, tests/audio)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from maxwhisper.registry import create_transcriber

    audio = args.audio_dir or audio_dir()
    precisions = (args.precisions or ("fp32,fp16" if args.device == "gpu" else "fp32")).split(",")
    openai = create_transcriber("openai", "tiny.en", device="cpu")
    reference = {}
    for clip in CLIPS:
        result = openai.transcribe(load_audio(audio / clip), DecodeOptions())
        reference[clip] = {"tokens": list(result.tokens), "text": result.text}
    machine = machine_info()
    run = {"device": args.device, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine,
           "versions": versions(), "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
           "precisions": []}
    stem = f"{device_tag(args.device, machine)}-check-tiny.en"
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / f"{stem}.json"  # the other precisions of an earlier run stay: one call per precision
    if earlier.exists():
        run["precisions"] = [p for p in json.loads(earlier.read_text())["precisions"]
                             if p["precision"] not in precisions]
    for precision in precisions:  # written after each: a cold GPU compile takes minutes per precision
        run["precisions"].append({**check_precision(args.device, precision, audio, reference, openai),
                                  "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        run["precisions"].sort(key=lambda p: p["precision"] != "fp32")  # fp32 first, the others as they came
        (args.out / f"{stem}.json").write_text(json.dumps(run, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(run))
        print(f"wrote {args.out / stem}.json and .md", flush=True)
    failed = [r["name"] for p in run["precisions"] for r in p["selfcheck"] if not r["passed"]]
    failed += [clip for p in run["precisions"] if p["precision"] == "fp32"
               for clip, c in p["clips"].items() if not c["identical"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
