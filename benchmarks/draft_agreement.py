"""How many of a drafted run's steps int8's decoder would keep, were it to draft fp32's runs
(docs/design.md#headroom): fp32 transcribes the clip in greedy runs, and for each run int8 reads
the same tokens (its own encoder's features of the same window) one token step a position, as a
run's drafts would, each position's raw argmax against fp32's raw argmax there. A run keeps its
steps up to the first that differs, that one included (`model.checked_steps`).

    PYTHONPATH=. .venv/bin/python benchmarks/draft_agreement.py [--clip physicsworks.flac]

Prints the agreement over every position of every run, and the steps a run keeps on average
against the steps fp32's runs took.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402

from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.audio import load_audio  # noqa: E402
from maxwhisper.bench.clips import audio_dir  # noqa: E402
from maxwhisper.bench.machine import machine_info  # noqa: E402
from maxwhisper.graph import model  # noqa: E402
from maxwhisper.registry import create_transcriber  # noqa: E402


def fp32_runs(fp32, audio: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """fp32's greedy runs on `audio`: each run's tokens before it, the tokens it chose and its window's mel."""
    runs, mels, encode, greedy_run = [], {}, fp32.net.encode, model.MaxChoosingInference.greedy_run

    def encoded(mel):
        features = encode(mel)
        mels[id(features)] = mel
        return features

    def recorded(self, tokens, features, rules):
        chosen, logprobs = greedy_run(self, tokens, features, rules)
        runs.append((tokens.copy(), chosen.copy(), mels[id(features)]))
        return chosen, logprobs

    fp32.net.encode, model.MaxChoosingInference.greedy_run = encoded, recorded
    try:
        fp32.transcribe(audio, DecodeOptions())
    finally:
        del fp32.net.encode
        model.MaxChoosingInference.greedy_run = greedy_run
    return runs


def argmaxes(net, tokens: np.ndarray, features, start: int) -> np.ndarray:
    """The raw argmax after each prefix of `tokens` [1, n] from position `start` on: the prefix up to
    `start` as a prompt, then one token step a position, as a run's steps take them."""
    inference = net.inference()
    return np.array(
        [inference.logits(tokens[:, :n], features)[0, -1].argmax() for n in range(start + 1, tokens.shape[1] + 1)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="physicsworks.flac")
    args = parser.parse_args()
    info = machine_info()
    print(f"CPU: {info.get('cpu')} ({info.get('cpu_family_model')}), {info.get('vector_isa')}; {args.clip}, tiny.en")
    fp32 = create_transcriber("max", "tiny.en", "cpu", "fp32")
    int8 = create_transcriber("max", "tiny.en", "cpu", "int8")
    list(fp32.compile_rest())  # greedy runs
    runs = fp32_runs(fp32, load_audio(str(audio_dir() / args.clip)))
    same = total = 0
    kept, features = [], {}  # each window's features by model, encoded once for all its runs
    for tokens, chosen, mel in runs:
        sequence = np.concatenate([tokens, chosen], axis=1).astype(np.int64)[:, :-1]
        start = tokens.shape[1] - 1  # the logits after the token before the run predict its first step
        for t in (int8, fp32):
            if (t, id(mel)) not in features:
                features[t, id(mel)] = t.net.encode(mel)
        ours, theirs = (argmaxes(t.net, sequence, features[t, id(mel)], start) for t in (int8, fp32))
        differ = np.nonzero(ours != theirs)[0]
        same, total = same + int((ours == theirs).sum()), total + len(ours)
        kept.append(int(differ[0]) + 1 if len(differ) else len(ours))
    steps = np.mean([c.shape[1] for _, c, _ in runs])
    print(f"{len(runs)} runs of fp32; int8's argmax is fp32's at {same} of {total} positions ({same / total:.4f})")
    print(f"steps a run would keep with int8's drafts: {np.mean(kept):.2f} on average; fp32's own kept {steps:.2f}")


if __name__ == "__main__":
    main()
