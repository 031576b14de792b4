"""Lecture streams replayed with update times from a fixed cost model instead of the clock, so that
two versions of `maxwhisper.streaming` (or two values of its constants) are compared on the same
hypotheses' timing: a real stream's text depends on where its hypotheses end, which moves with
the machine's load, and its WER moves by a word or two between runs.

    .venv/bin/python benchmarks/streaming_replay.py [--precision fp32] [--offsets 0,0.5] [--set PAUSE_S=0.3]

Each offset streams the lecture as `bench --streaming` does (1 s chunks, the chunk boundaries
shifted by the offset), MAX tiny.en on the CPU, an update's transcription counted as taking
`maxwhisper.bench.cost_model`'s seconds (about MAX fp32's on an AVX-512 Zen 4), the
stream's end hearing the buffer again (`Streamer.finish`) as one 30 s window. Prints the
words wrong against the lecture's pseudo-reference (normalised, as the benchmark scores them), the
offline transcript's first, then per offset with the latency, the segments held back, the loop ratio
and each difference (reference -> stream).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

import jiwer  # noqa: E402

from maxwhisper import streaming  # noqa: E402
from maxwhisper.audio import load_audio  # noqa: E402
from maxwhisper.bench.clips import audio_dir, pseudo_reference  # noqa: E402
from maxwhisper.bench.cost_model import CostModelled  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402
from maxwhisper.scoring import normalize  # noqa: E402

CLIP = "physicsworks.flac"


def differences(reference: str, text: str) -> tuple[int, list[str]]:
    """Words wrong (substituted, deleted, inserted) and each difference as "reference -> text"."""
    out = jiwer.process_words(reference, text)
    ref, hyp = reference.split(), text.split()
    shown = [
        f"{' '.join(ref[c.ref_start_idx : c.ref_end_idx])} -> {' '.join(hyp[c.hyp_start_idx : c.hyp_end_idx])}"
        for c in out.alignments[0]
        if c.type != "equal"
    ]
    return out.substitutions + out.deletions + out.insertions, shown


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="fp32")
    p.add_argument("--offsets", default="0,0.5", help="chunk boundary shifts in seconds, comma-separated")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a `maxwhisper.streaming` constant to change (repeatable), e.g. PAUSE_S=0.3",
    )
    args = p.parse_args()
    for assignment in args.set:
        name, _, value = assignment.partition("=")
        if not (name.isupper() and isinstance(getattr(streaming, name, None), (int, float))):
            p.error(f"maxwhisper.streaming has no constant {name!r}")
        try:
            setattr(streaming, name, type(getattr(streaming, name))(value))
        except ValueError:
            p.error(f"{name} takes a number, not {value!r}")
    t = create_transcriber("max", model="tiny.en", device="cpu", precision=args.precision)
    audio = load_audio(audio_dir() / CLIP)
    reference = normalize(pseudo_reference(CLIP))
    n = len(reference.split())
    offline, _ = differences(reference, normalize(t.transcribe(audio).text))
    t = CostModelled(t)
    print(f"offline: {offline} of {n} words wrong ({100 * offline / n:.2f} %)", flush=True)
    for offset in (float(x) for x in args.offsets.split(",")):
        report = streaming.stream_audio(t, audio, 1.0, offset_s=offset)
        wrong, shown = differences(reference, normalize(report.text))
        print(
            f"chunks shifted {offset:g} s: {wrong} words wrong ({100 * (wrong - offline) / n:+.2f} points), "
            f"latency median {report.latency_quantile(0.5):.2f} s, p90 {report.latency_quantile(0.9):.2f} s, "
            f"{report.held_back} held back, loop ratio {report.loop_ratio:.2f}",
            flush=True,
        )
        print("    " + " | ".join(shown), flush=True)


if __name__ == "__main__":
    main()
