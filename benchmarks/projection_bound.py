"""Whether fp32's vocabulary projection could read a smaller copy of its rows and still pick
openai-whisper's exact greedy token (tiny.en, the CPU):

    PYTHONPATH=. .venv/bin/python benchmarks/projection_bound.py [--clip physicsworks.flac] [--out FILE]

The projection is half of an fp32 one-token step ([step-split.md](results/step-split.md)). A
first pass over rows quantized per group of weights gives each text token's logit within a bound
that holds for any activation (the smaller of Cauchy-Schwarz on the weights' error and the sum of
each group's half step times the activation's L1 norm, plus float32 rounding of both passes). Only
the tokens whose upper bound reaches the largest lower bound could be the argmax; a second pass
would compute those exactly, and with a span also those whose upper bound lies within the span
below it, for the log probabilities. Timestamp and suppressed tokens stay exact (the timestamp
rule's logsumexp, the no-speech probability).

The activations are the decoder's final layer-norm outputs of openai-whisper's greedy transcript of
the clip, one per step. Per format and span: the bytes a step's first pass reads, the rows the
second pass computes per step, a check that the exact argmax is always among them, and the error of
a logsumexp that takes the first pass's values for the tokens the second pass leaves out.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import whisper
from maxwhisper_baselines.openai_backend import OpenAITranscriber
from whisper.tokenizer import get_tokenizer

from maxwhisper.audio import load_audio
from maxwhisper.bench.clips import audio_dir
from maxwhisper.bench.machine import machine_info

FORMATS = ((8, 384), (8, 64), (6, 32), (4, 64))  # (bits, weights per scale)
SPANS = (0, 4, 8)  # logits below the largest lower bound down to which the second pass computes exactly
UNIT = 2.0**-24  # float32's unit roundoff


def final_activations(clip: str) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's greedy transcript of the clip: the last position's final layer-norm output of
    every decoder call [steps, d], and the tied projection's rows [n_vocab, d]."""
    net = OpenAITranscriber("tiny.en", device="cpu").net
    seen = []
    net.decoder.ln.register_forward_hook(lambda module, args, out: seen.append(out[:, -1].detach().numpy().copy()))
    whisper.transcribe(net, load_audio(str(audio_dir() / clip)), fp16=False, temperature=0.0)
    return np.concatenate(seen).astype(np.float32), net.decoder.token_embedding.weight.detach().numpy().astype(
        np.float32
    )


def logsumexp(v: np.ndarray) -> float:
    top = v.max()
    return float(top + np.log(np.exp(v - top).sum()))


def study(xs: np.ndarray, w: np.ndarray, bits: int, group: int, span: float, allowed: np.ndarray) -> dict:
    n_vocab, d = w.shape
    grouped = w.reshape(n_vocab, d // group, group)
    step = np.abs(grouped).max(-1, keepdims=True) / (2 ** (bits - 1) - 1)
    step[step == 0] = 1
    coarse_w = (np.round(grouped / step) * step).reshape(n_vocab, d)
    error_norm = np.linalg.norm((w - coarse_w).astype(np.float64), axis=1)
    half_step = step[..., 0].astype(np.float64) / 2
    rounding = d * UNIT / (1 - d * UNIT) * (np.linalg.norm(w, axis=1) + np.linalg.norm(coarse_w, axis=1))
    candidates, lse_errors = [], []
    for x in xs.astype(np.float64):
        exact, coarse = w @ x, coarse_w @ x
        bound = np.minimum(np.linalg.norm(x) * error_norm, half_step @ np.abs(x).reshape(-1, group).sum(-1))
        bound += rounding * np.linalg.norm(x)
        lowest = (coarse - bound)[allowed].max()
        chosen = allowed & (coarse + bound >= lowest - span)
        assert chosen[np.flatnonzero(allowed)[exact[allowed].argmax()]], "the exact argmax was ruled out"
        candidates.append(int(chosen.sum()))
        mixed = np.where(chosen | ~allowed, exact, coarse)
        lse_errors.append(abs(logsumexp(mixed) - logsumexp(exact)))
    mb = (n_vocab * d * bits / 8 + n_vocab * (d // group) * 4) / 1e6
    return {
        "format": f"{bits}-bit, a scale per {group}, span {span}",
        "mb": mb,
        "candidates": np.array(candidates),
        "lse": np.array(lse_errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="physicsworks.flac")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    xs, w = final_activations(args.clip)
    tokenizer = get_tokenizer(False)
    allowed = np.zeros(w.shape[0], bool)
    allowed[: tokenizer.timestamp_begin] = True  # text tokens and eot, less what greedy decoding suppresses
    allowed[
        list(tokenizer.non_speech_tokens)
        + [
            tokenizer.sot,
            tokenizer.sot_prev,
            tokenizer.sot_lm,
            tokenizer.no_speech,
            tokenizer.transcribe,
            tokenizer.translate,
            tokenizer.no_timestamps,
        ]
    ] = False
    machine = machine_info()
    lines = [
        f"{machine['cpu']} ({machine['vector_isa']}); {args.clip}, tiny.en, "
        f"{len(xs)} decoder calls of openai-whisper's greedy transcript; "
        f"fp16-stored rows: {w.size * 2 / 1e6:.1f} MB",
        "",
        "| first pass | MB read | exact rows median | p90 | max | logsumexp error median | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for (bits, group), span in itertools.product(FORMATS, SPANS):
        r = study(xs, w, bits, group, span, allowed)
        c, e = r["candidates"], r["lse"]
        lines.append(
            f"| {r['format']} | {r['mb']:.1f} | {np.median(c):.0f} | {np.percentile(c, 90):.0f} | {c.max()} "
            f"| {np.median(e):.1e} | {e.max():.1e} |"
        )
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
