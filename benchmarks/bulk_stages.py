"""Where a bulk job's transcription time goes, file by file: the shared clips (the set `bench --bulk`
repeats) through one backend's `transcribe()` in one process, after one untimed transcription, and
for each clip the seconds spent reading the file, in the log-Mel, the encoder and the rest
(decoding; with a batch size also the voice activity detector, which finds the chunks, and each
chunk's log-Mel), and for MAX the windows of each encoder call:

    .venv/bin/python benchmarks/bulk_stages.py --backend max|faster [--precision fp32] [--threads 2] [--batch-size 8]

Prints a line per clip and the sums; a job adds its workers' start and model load, and audio read
beside the transcriptions.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import SAMPLE_RATE, load_audio  # noqa: E402
from maxwhisper.bench.bulk import shared_clips  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="max")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args()
    clips = shared_clips()
    start = time.perf_counter()
    t = create_transcriber(args.backend, model="tiny.en", device="cpu", precision=args.precision, threads=args.threads)
    print(f"{args.backend} {args.precision}, {args.threads} threads, batch {args.batch_size}: model ready in "
          f"{time.perf_counter() - start:.2f} s")
    options = DecodeOptions(batch_size=args.batch_size)
    windows: list[int] = []
    if args.backend == "max":  # count the windows of each encoder call
        encode = t.net.encode
        t.net.encode = lambda mel: (windows.append(len(mel)), encode(mel))[1]
    t.transcribe(load_audio(clips[1]), options)  # untimed: first-call costs
    sums = dict.fromkeys(("audio", "read", "log-Mel", "encode", "decode", "total"), 0.0)
    for clip in clips:
        start = time.perf_counter()
        audio = load_audio(clip)
        read_s = time.perf_counter() - start
        windows.clear()
        r = t.transcribe(audio, options)
        stages = {"audio": len(audio) / SAMPLE_RATE, "read": read_s, "log-Mel": r.timings.features_s or 0.0,
                  "encode": r.timings.encode_s, "decode": r.timings.decode_s, "total": r.timings.total_s}
        print(f"{clip.name:26s} " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
              + f", tokens {len(r.tokens)}" + (f", encoder calls (windows) {windows}" if windows else ""))
        for k, v in stages.items():
            sums[k] += v
    print("sum: " + ", ".join(f"{k} {v:.2f} s" for k, v in sums.items())
          + f"; audio hours per hour transcribing: {sums['audio'] / sums['total']:.1f}")


if __name__ == "__main__":
    main()
