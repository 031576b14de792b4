"""Where a bulk job's transcription time goes, file by file: the test clips (the set `bench --bulk`
repeats) through one backend's `transcribe()` in one process, after one untimed transcription, and
for each clip the seconds spent reading the file, in the log-Mel, the encoder and the rest
(decoding; with a batch size also the voice activity detector, which finds the chunks, and each
chunk's log-Mel), and for MAX the windows of each encoder call:

    .venv/bin/python benchmarks/bulk_stages.py --backend max|faster [--precision fp32] [--threads 2] [--batch-size 8]

Prints a line per clip and the sums, then the CPU seconds each of the process's threads spent over
the clips (Linux's /proc; threads that spent under 0.05 s left out); a job adds its workers' start and
model load, and audio read beside the transcriptions. To measure as a single-threaded bulk worker runs,
give its environment (`bulk.job._worker_env`) too: OMP_NUM_THREADS=1, and for MAX both
MODULAR_THREAD_BUSY_WAIT_US=0 and MODULAR_RUNTIME_THREAD_BUSY_WAIT_TIME_US=0.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import SAMPLE_RATE, load_audio  # noqa: E402
from maxwhisper.bench.bulk import clip_files  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread of this process, by thread name and id."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[f"{name} ({task.name})"] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="max")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args()
    clips = clip_files()
    start = time.perf_counter()
    t = create_transcriber(args.backend, model="tiny.en", device="cpu", precision=args.precision, threads=args.threads)
    print(
        f"{args.backend} {args.precision}, {args.threads} threads, batch {args.batch_size}: model ready in "
        f"{time.perf_counter() - start:.2f} s"
    )
    options = DecodeOptions(batch_size=args.batch_size)
    windows: list[int] = []
    if args.backend == "max":  # count the windows of each encoder call
        encode = t.net.encode
        t.net.encode = lambda mel: (windows.append(len(mel)), encode(mel))[1]
    t.transcribe(load_audio(clips[1]), options)  # untimed: first-call costs
    sums = dict.fromkeys(("audio", "read", "log-Mel", "encode", "decode", "total"), 0.0)
    cpu_before, process_before = thread_cpu_seconds(), time.process_time()
    for clip in clips:
        start = time.perf_counter()
        audio = load_audio(clip)
        read_s = time.perf_counter() - start
        windows.clear()
        r = t.transcribe(audio, options)
        stages = {
            "audio": len(audio) / SAMPLE_RATE,
            "read": read_s,
            "log-Mel": r.timings.features_s or 0.0,
            "encode": r.timings.encode_s,
            "decode": r.timings.decode_s,
            "total": r.timings.total_s,
        }
        print(
            f"{clip.name:26s} "
            + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
            + f", tokens {len(r.tokens)}"
            + (f", encoder calls (windows) {windows}" if windows else "")
        )
        for k, v in stages.items():
            sums[k] += v
    print(
        "sum: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in sums.items())
        + f"; audio hours per hour transcribing: {sums['audio'] / sums['total']:.1f}"
    )
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in thread_cpu_seconds().items()}
    print(
        f"CPU seconds over the clips: {time.process_time() - process_before:.2f}; by thread: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05)
    )


if __name__ == "__main__":
    main()
