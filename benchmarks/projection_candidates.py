"""Whether a first pass cheaper than the whole 4-bit rows finds the greedy token (tiny.en):

    PYTHONPATH=. .venv/bin/python benchmarks/projection_candidates.py [--out FILE]

A drafted run ([design](../docs/design.md#drafted-runs)) drafts each step's token from a cheap
projection and checks its 8 tokens once against the exact one: a wrong draft costs the rest of its
run, so a draft must find the greedy token nearly always. For each way of choosing candidates among
the text tokens (timestamps and special tokens stay whole): the MB a step reads for it, and how
often, or how far down, openai-whisper's greedy text token is found among the candidates, per clip:

- clusters: `weights.vocab_clusters`' k-means clusters of the rows (as `vocab_draft_int4` reads
  them), those whose centroids score highest searched whole;
- low rank: the rows' top r principal directions;
- fewer bits: rows quantized per group, as `vocab_projection_int4` does with 4.

The activations are the decoder's final layer-norm outputs of openai-whisper's greedy transcripts
(`projection_bound.final_activations`).
"""

from __future__ import annotations

import argparse

import numpy as np
from projection_bound import final_activations

from maxwhisper.bench.machine import machine_info
from maxwhisper.graph.weights import vocab_clusters

TEXT = 50256  # tiny.en's text tokens come before it
CLIPS = ("jfk.flac", "hotwords.mp3", "stereo_diarization.wav", "physicsworks.flac")


def quantized(rows: np.ndarray, bits: int, group: int) -> np.ndarray:
    grouped = rows.reshape(len(rows), -1, group)
    top = 2 ** (bits - 1) - 1
    step = np.maximum(np.abs(grouped).max(-1, keepdims=True), 1e-30) / top
    return (np.clip(np.round(grouped / step), -top, top) * step).reshape(rows.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args()
    acts, w = {}, None
    for clip in CLIPS:
        acts[clip], w = final_activations(clip)
    text = w[:TEXT]
    d = text.shape[1]
    tops = {clip: (x @ text.T).argmax(1) for clip, x in acts.items()}
    steps = ", ".join(f"{c} {len(x)}" for c, x in acts.items())
    lines = [f"{machine_info()['cpu']}; tiny.en; openai-whisper's greedy steps: {steps}", ""]

    lines += [
        "| clusters | searched | rows read, padding and special rows included (median) | MB (centroids, 4-bit rows) | "
        + " | ".join(f"{c}: top found" for c in acts)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(acts),
    ]
    for k in (256, 1024):
        rows, starts, centroids = vocab_clusters(w, TEXT, k, 16)
        group_of = np.zeros(len(w), np.int64)
        for g in range(k + 1):
            members = rows[starts[g] * 16 : starts[g + 1] * 16]
            group_of[members[members >= 0]] = g
        sizes = np.diff(starts) * 16  # each group's rows as the kernel reads them, padding included
        for searched in (64, 96):
            found, read = [], []
            for clip, x in acts.items():
                best = 1 + np.argsort(-(x @ centroids[1:].T), 1)[:, :searched]
                found.append(np.mean([group_of[t] in b for t, b in zip(tops[clip], best, strict=True)]))
                read += [int(sizes[0] + sizes[b].sum()) for b in best]
            mb = (k * d * 4 + np.median(read) * (d / 2 + d / 64 * 4)) / 1e6
            found_text = " | ".join(f"{f:.1%}" for f in found)
            lines.append(f"| {k} | {searched} | {np.median(read):.0f} | {mb:.1f} | {found_text} |")

    def ranks(approx_of) -> str:
        """Per clip, the 99th percentile and the largest count of candidates scored above the top."""
        out = []
        for clip, x in acts.items():
            approx = approx_of(x)
            above = (approx > approx[np.arange(len(x)), tops[clip]][:, None]).sum(1)
            out.append(f"{np.percentile(above, 99):.0f} / {above.max()}")
        return " | ".join(out)

    lines += [
        "",
        "| first pass | MB | " + " | ".join(f"{c}: tokens above the top, p99 / max" for c in acts) + " |",
        "|---|---:|" + "---:|" * len(acts),
    ]
    mean = text.mean(0)
    _, _, directions = np.linalg.svd(text - mean, full_matrices=False)
    for r in (64, 128):
        basis = directions[:r].T
        low = (text - mean) @ basis
        approx = ranks(lambda x, basis=basis, low=low: (x @ basis) @ low.T + (x @ mean)[:, None])
        lines.append(f"| rank {r} (float; MB in int8) | {len(w) * r / 1e6:.1f} | {approx} |")
    for bits, group in ((4, 64), (3, 32), (2, 16)):
        copy = quantized(text, bits, group)
        mb = len(w) * (d * bits / 8 + d / group * 4) / 1e6
        lines.append(f"| {bits} bits, a scale per {group} | {mb:.1f} | {ranks(lambda x, c=copy: x @ c.T)} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
