"""`python -m maxwhisper transcribe-many INPUT... --output DIR`: its flags (`add_arguments`) and the
run (`main`); exit 0 when every file was transcribed, 1 when any failed (the results table and the
lines printed say which and why), 2 for a mistake in the arguments."""

from __future__ import annotations

import argparse
import logging

from ..__main__ import add_decode_arguments, add_model_arguments, positive_int
from ..api import DecodeOptions
from ..formats import FORMATS

log = logging.getLogger(__name__)


def formats(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(FORMATS)}, got {text!r}")
    return chosen


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio or video files, folders (searched recursively) or manifests (.txt: a path per line; "
        ".csv, .jsonl: a 'path' column)",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for the transcripts (mirroring the input tree) and results.jsonl; a rerun into the "
        "same folder skips the files done with the same settings",
    )
    g = p.add_argument_group("the job")
    g.add_argument(
        "--workers", type=positive_int, default=1, help="Ray Data actors, each loading the model once (default 1)"
    )
    g.add_argument(
        "--format",
        type=formats,
        default=["txt"],
        metavar="FORMATS",
        help=f"comma-separated, of {', '.join(FORMATS)} (default: txt)",
    )
    g.add_argument("--parquet", action="store_true", help="also write the results table as results.parquet")
    g.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: $RAY_ADDRESS where "
        "set, else a local instance started for the job",
    )
    add_model_arguments(p)
    add_decode_arguments(p)


def main(args: argparse.Namespace) -> int:
    from . import transcribe_many
    from .progress import audio_amount

    summary = transcribe_many(
        args.inputs,
        args.output,
        backend=args.backend,
        model=args.model,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        kernels=args.kernels,
        workers=args.workers,
        formats=args.format,
        parquet=args.parquet,
        address=args.address,
        max_seconds=args.max_seconds,
        options=DecodeOptions.from_values(vars(args)),
        progress=True,
    )
    for row in summary.failures:
        log.error(f"error: {row['error']}")
    rate = f" ({summary.audio_s / summary.wall_s:.1f} audio h/h)" if summary.audio_s and summary.wall_s else ""
    log.info(
        f"{summary.files} files: {summary.transcribed} transcribed, {summary.failed} failed, "
        f"{summary.skipped} already done; {audio_amount(summary.audio_s)} of audio in "
        f"{summary.wall_s:.1f} s{rate} with {summary.workers} worker(s), "
        f"after {summary.ray_start_s:.1f} s starting Ray; "
        f"results: {summary.results}"
    )
    return 1 if summary.failed else 0
