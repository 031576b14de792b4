"""What 4-bit decoder weights would cost int8's transcripts, before a kernel reads them
(docs/design.md#headroom): MAX int8 transcribes the clips with the checkpoint as it is, then with
the weights that a token step reads in each decoder layer (self-attention, cross-attention query
and output, the MLP) rounded to 4 bits in groups of `--groups` along each row (symmetric, a scale
per group, as GGML's q4_0 rounds), which int8 then quantizes as it does any weight.

    PYTHONPATH=. .venv/bin/python benchmarks/decoder_bits.py [--groups 32,64]

Prints, for each way: the lecture's WER against whisper-medium's transcript and its agreement with
MAX fp32's, the pooled WER on the clips with references, and the tokens the lecture took.
"""

from __future__ import annotations

import argparse
import os
from unittest.mock import patch

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402

from maxwhisper import checkpoint  # noqa: E402
from maxwhisper.api import DecodeOptions  # noqa: E402
from maxwhisper.bench.clips import DEFAULT_CLIPS, LONG_FORM, REFERENCES, audio_dir, load_clip, parse_clip  # noqa: E402
from maxwhisper.bench.machine import machine_info  # noqa: E402
from maxwhisper.max_backend import MaxTranscriber  # noqa: E402
from maxwhisper.scoring import agreement, pooled_wer, wer  # noqa: E402

STEP_WEIGHTS = (
    "attn.query",
    "attn.key",
    "attn.value",
    "attn.out",
    "cross_attn.query",
    "cross_attn.out",
    "mlp.0",
    "mlp.2",
)


def four_bit(weight: np.ndarray, group: int) -> np.ndarray:
    """`weight` [d_out, d_in] rounded to 4 bits in groups of `group` along each row: -8..7 times the
    group's largest |w| / 7."""
    rows = weight.reshape(weight.shape[0], -1, group)
    scale = np.abs(rows).max(axis=-1, keepdims=True) / 7
    q = np.clip(np.round(rows / np.where(scale == 0, 1, scale)), -8, 7)
    return (q * scale).reshape(weight.shape).astype(weight.dtype)


def transcripts(group: int | None, clips) -> dict[str, object]:
    """MAX int8's result for each clip, its decoder's step weights in 4 bits (group) or as they are."""

    def rounded(model: str):
        ckpt = checkpoint.load_checkpoint(model)
        for name, weight in ckpt.state.items():
            layer_part = name.split(".", 3)[-1].removesuffix(".weight")
            if name.startswith("decoder.blocks.") and name.endswith(".weight") and layer_part in STEP_WEIGHTS:
                ckpt.state[name] = four_bit(weight, group)
        return ckpt

    with patch("maxwhisper.max_backend.load_checkpoint", rounded if group else checkpoint.load_checkpoint):
        model = MaxTranscriber("tiny.en", device="cpu", precision="int8")
    return {clip.name: model.transcribe(load_clip(clip), DecodeOptions()) for clip in clips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="32,64", help="comma-separated group sizes (each divides 384)")
    args = parser.parse_args()
    folder = audio_dir()
    clips = [parse_clip(name, folder) for name in DEFAULT_CLIPS]  # the references' clips, then the lecture
    medium = (folder / "physicsworks.whisper-medium.txt").read_text()
    fp32 = MaxTranscriber("tiny.en", device="cpu", precision="fp32").transcribe(load_clip(clips[-1]), DecodeOptions())
    m = machine_info()
    print(f"{m['cpu']} ({m['vector_isa']}); tiny.en, greedy")
    print(f"fp32: lecture WER {100 * wer(medium, fp32.text):.2f} % against whisper-medium, {len(fp32.tokens)} tokens")
    for group in [None, *map(int, args.groups.split(","))]:
        results = transcripts(group, clips)
        lecture = results[LONG_FORM]
        pooled = pooled_wer((REFERENCES[c.name], results[c.name].text) for c in clips[:-1])
        print(
            f"int8, step weights {'as they are' if group is None else f'in 4 bits, groups of {group}'}: "
            f"lecture WER {100 * wer(medium, lecture.text):.2f} %, agreement with fp32 "
            f"{100 * agreement(fp32.text, lecture.text):.2f} %, {len(lecture.tokens)} tokens; "
            f"pooled WER of the clips with references {100 * pooled:.2f} %",
            flush=True,
        )


if __name__ == "__main__":
    main()
