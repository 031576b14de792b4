"""Each MAX component checked against openai-whisper's PyTorch module built from the same weights.

Used by the tests, by `python -m maxwhisper selfcheck` and by the app's Component tests tab. The
reference is the registry's "openai" backend (the 'baselines' extra); torch is imported here only,
when a check runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .api import DecodeOptions
from .audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim
from .tokenizer import get_tokenizer

COMPONENTS = ("conv_stem", "attention", "encoder_block", "encoder", "decoder_step", "transcript")
# max |MAX - reference| / max |reference|, by what MAX computes in: float32 with another summation
# order on a CPU; on a GPU float32 matmuls may run as TF32 (10-bit mantissa); float16 rounds the
# activations to 11 significant bits ~5 times per layer, ~2^-11 each, in series through 8-64 layers
RELATIVE_TOLERANCE = {"cpu fp32": 1e-3, "gpu fp32": 1e-2, "fp16": 5e-2}


def relative_tolerance(device: str, precision: str) -> float:
    return RELATIVE_TOLERANCE["fp16" if precision == "fp16" else f"{device} fp32"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    max_abs_err: float  # for "transcript": the number of tokens that differ
    rel_err: float
    seconds: float  # time of the MAX computation (compile excluded)
    detail: str = ""


def default_audio() -> Path:
    """jfk.flac from the test audio (`bench.clips.audio_dir`) if present, else a clip the gradio
    package ships."""
    import importlib.util

    from .bench.clips import audio_dir

    jfk = audio_dir() / "jfk.flac"
    spec = importlib.util.find_spec("gradio")
    if jfk.exists() or spec is None:
        return jfk
    return Path(spec.origin).parent / "media_assets" / "audio" / "cate_blanch.mp3"


def _compare(name: str, ours: np.ndarray, ref: np.ndarray, seconds: float, tolerance: float) -> CheckResult:
    err = float(np.abs(ours - ref).max())
    rel = err / max(float(np.abs(ref).max()), 1e-12)
    return CheckResult(name, rel < tolerance, err, rel, seconds, f"shape {tuple(ours.shape)}")


def _timed(fn: Callable, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run_checks(
    max_transcriber=None, reference=None, audio_path: str | Path | None = None, components: tuple[str, ...] = COMPONENTS
) -> Iterator[CheckResult]:
    """Yield one CheckResult per component as it finishes.

    max_transcriber: a loaded `MaxTranscriber` (default: tiny.en on CPU, fp32), on any device and
    precision: the tolerances follow them (`relative_tolerance`).
    reference: the registry's "openai" transcriber of the same model on CPU (float32; default: loaded here).
    """
    from .max_backend import MaxTranscriber
    from .registry import create_transcriber

    mx = max_transcriber or MaxTranscriber("tiny.en", device="cpu")
    ref = reference or create_transcriber("openai", mx.model, device="cpu")
    import torch  # installed with the reference

    from .graph.components import build_component

    net, torch_net = mx.net, ref.net
    tolerance = relative_tolerance(mx.device, mx.precision)
    audio = load_audio(audio_path or default_audio())
    mel = pad_or_trim(log_mel_spectrogram(audio, net.dims.n_mels), N_FRAMES)[None]
    t_mel = torch.from_numpy(mel)

    with torch.no_grad():
        enc = torch_net.encoder
        stem = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(t_mel)))).permute(0, 2, 1)
        block_in = stem + enc.positional_embedding[: stem.shape[1]]
        refs = {
            "conv_stem": (mel, block_in),  # the convolutions and the positional embedding
            "attention": (block_in.numpy(), enc.blocks[0].attn(enc.blocks[0].attn_ln(block_in))[0]),
            "encoder_block": (block_in.numpy(), enc.blocks[0](block_in)),
        }
    for name in components:
        if name in refs:
            graph = build_component(net, name)
            x, expected = refs[name]
            (out,), seconds = _timed(graph.execute, net.to_device(x))
            yield _compare(name, net.to_numpy(out), expected.numpy(), seconds, tolerance)
        elif name == "encoder":
            features, seconds = _timed(net.encode, mel)
            with torch.no_grad():
                yield _compare(name, net.features_numpy(features), enc(t_mel).numpy(), seconds, tolerance)
        elif name == "decoder_step":
            features = net.encode(mel)
            tok = get_tokenizer(net.is_multilingual, num_languages=net.num_languages, language="en", task="transcribe")
            tokens = np.array([[*tok.sot_sequence_including_notimestamps, *tok.encode(" And so my fellow Americans")]])
            n = tokens.shape[1]
            inference = net.inference()

            def prompt_then_step():  # both paths of the step graph: a prompt call, then one cached token
                prompt = inference.logits(tokens[:, :-1], features, tuple(range(n - 1)))
                return np.concatenate([prompt, inference.logits(tokens, features, (-1,))], axis=1)

            ours, seconds = _timed(prompt_then_step)
            with torch.no_grad():
                expected = torch_net.decoder(torch.from_numpy(tokens), torch.from_numpy(net.features_numpy(features)))
            yield _compare(name, ours, expected.numpy(), seconds, tolerance)
        elif name == "transcript":
            options = DecodeOptions()
            result, seconds = _timed(mx.transcribe, audio, options)
            expected = ref.transcribe(audio, options)
            ours_t, ref_t = result.tokens, expected.tokens
            diff = sum(a != b for a, b in zip(ours_t, ref_t)) + abs(len(ours_t) - len(ref_t))
            # float16 may move a timestamp by a step where float32 does not: there the text must agree
            passed = diff == 0 or (mx.precision == "fp16" and result.text == expected.text)
            yield CheckResult(
                name,
                passed,
                float(diff),
                diff / max(len(ref_t), 1),
                seconds,
                f"{len(ours_t)} tokens; MAX: {result.text.strip()!r}",
            )
        else:
            raise ValueError(f"unknown component {name!r}; valid: {', '.join(COMPONENTS)}")


def add_arguments(p) -> None:
    p.add_argument("audio", nargs="?", help="speech clip for the checks (default: jfk.flac or a clip gradio ships)")
    p.add_argument("--model", default="tiny.en", help="model name or path (default: tiny.en)")
    p.add_argument("--components", default=None, help=f"comma list of {', '.join(COMPONENTS)} (default: all)")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "gpu"], help="where MAX runs (default: cpu; the reference: CPU)"
    )
    p.add_argument(
        "--precision", default="fp32", choices=["fp32", "fp16"], help="MAX's precision (default: fp32; fp16: GPU)"
    )
    p.add_argument(
        "--no-kernels", dest="kernels", action="store_false", help="the portable plan on the CPU: the graphs a GPU runs"
    )


def main(args) -> int:
    """Print one row per component as it finishes; exit 1 if any fails."""
    from .max_backend import MaxTranscriber
    from .registry import create_transcriber

    reference = create_transcriber("openai", args.model, device="cpu")  # before MAX compiles: the extra is there
    mx = MaxTranscriber(args.model, device=args.device, precision=args.precision, kernels=args.kernels)
    components = args.components.split(",") if args.components else COMPONENTS
    print(
        f"model {mx.model}, MAX graphs compiled/loaded in {mx.compile_s:.1f} s, plan {mx.plan.describe()}; "
        f"pass: within {relative_tolerance(mx.device, mx.precision):g} of the reference's largest value",
        flush=True,
    )
    print(f"{'component':<15} {'result':<6} {'max abs err':>12} {'rel err':>10} {'time s':>8}  detail", flush=True)
    failed = 0
    for r in run_checks(mx, reference, args.audio, tuple(c.strip() for c in components)):
        failed += not r.passed
        print(
            f"{r.name:<15} {'PASS' if r.passed else 'FAIL':<6} {r.max_abs_err:>12.3g} {r.rel_err:>10.2e} "
            f"{r.seconds:>8.3f}  {r.detail}",
            flush=True,
        )
    print("all components match the reference" if not failed else f"{failed} component(s) FAILED")
    return 1 if failed else 0
