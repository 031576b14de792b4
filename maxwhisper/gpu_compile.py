"""`python -m maxwhisper gpu-compile`: compiles every graph the GPU path runs for NVIDIA GPUs that
are not there (MAX's virtual devices), on any machine, CPU-only ones included, and keeps each
compiled graph in the cache where a real GPU of that architecture loads it (`graph.compiled`); a
table of graph, precision, architecture, result and seconds; exit 1 on any failure.
`maxwhisper warm --device gpu --arch ...` runs the same compiles.

Each architecture compiles in a child process of its own (`graph.virtual_gpu`); its rows come back
as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)
ARCHS = {"sm_80": "A100", "sm_86": "A10, RTX 3090", "sm_89": "L4, L40, RTX 4090", "sm_90": "H100, H200"}
PRECISIONS = ("fp32", "fp16")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arch",
        type=_csv,
        default=["sm_90", "sm_80", "sm_89"],
        help=f"comma-separated CUDA architectures (default: sm_90,sm_80,sm_89; "
        f"{', '.join(f'{a}: {n}' for a, n in ARCHS.items())})",
    )
    p.add_argument(
        "--precision", type=_csv, default=list(PRECISIONS), help="comma-separated: fp32, fp16 (default: both)"
    )
    p.add_argument("--model", default="tiny.en", help="installed model, CTranslate2 folder or .pt (default: tiny.en)")
    p.add_argument(
        "--graphs",
        type=_csv,
        default=None,
        help="comma-separated subset: encoder, decoder_step, alignment, cache_reorder, batch_repeat",
    )
    p.add_argument("--output", type=Path, default=None, help="also write the report to OUTPUT.json and OUTPUT.md")


def check(args: argparse.Namespace) -> None:
    from .api import MaxWhisperError

    if unknown := [a for a in args.arch if a not in ARCHS]:
        raise MaxWhisperError(f"unknown architecture {', '.join(unknown)}; known: {', '.join(ARCHS)}")
    if unknown := [p for p in args.precision if p not in PRECISIONS]:
        raise MaxWhisperError(f"unknown precision {', '.join(unknown)}; the GPU path runs {', '.join(PRECISIONS)}")
    from .checkpoint import load_checkpoint

    load_checkpoint(args.model)  # a model that is not installed: its message, before any child starts


def compile_arch(arch: str, args: argparse.Namespace) -> list[dict]:
    """One child process for `arch`; its rows as they arrive (printed), or one failed row if it died."""
    request = json.dumps({"arch": arch, "model": args.model, "precisions": args.precision, "graphs": args.graphs})
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: MAX's logs cannot fill it and stall the child
        child = subprocess.Popen(
            [sys.executable, "-m", "maxwhisper.gpu_compile", request], stdout=subprocess.PIPE, stderr=errors, text=True
        )
        rows = []
        for line in child.stdout:
            if line.startswith("{"):
                rows.append(json.loads(line))
                r = rows[-1]
                print(
                    f"{r['graph']:<14} {r['precision']:<5} {r['arch']:<6} {_result(r):<7}"
                    f"{r['seconds']:>8.1f}  {r['error'] or ''}".rstrip(),
                    flush=True,
                )
        child.wait()
        errors.seek(0)
        stderr = errors.read()
    if child.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {child.returncode}"
        rows.append(
            {
                "graph": "(process)",
                "precision": ",".join(args.precision),
                "arch": arch,
                "ok": False,
                "seconds": 0.0,
                "error": last,
            }
        )
        log.error(f"{arch}: the compile process failed: {last}")
    return rows


def _result(row: dict) -> str:
    return ("kept" if row.get("kept") else "ok") if row["ok"] else "FAILED"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"# MAX graphs of the GPU path compiled for virtual NVIDIA GPUs ({doc['model']})",
        "",
        f"`{doc['command']}` on {m['cpu']} ({m.get('vector_isa') or 'unknown ISA'}, {m['cores']} cores, "
        f"no GPU), MAX {doc['versions'].get('max')}. Compiled, not run: a virtual device executes nothing. "
        "Each compiled graph is kept in the cache, where a real GPU of its architecture loads it; kept: it "
        "was there already. Seconds: the compile, shorter where MAX's own disk cache held parts of it.",
        "",
        "| graph | precision | arch | GPUs | result | seconds |",
        "|---|---|---|---|---|---:|",
    ]
    for r in doc["graphs"]:
        result = _result(r) if r["ok"] else f"FAILED: {r['error']}"
        lines.append(
            f"| {r['graph']} | {r['precision']} | {r['arch']} | {ARCHS.get(r['arch'], '')} | {result} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from .bench.machine import machine_info, versions

    check(args)
    print(f"{'graph':<14} {'prec':<5} {'arch':<6} {'result':<7}{'seconds':>8}", flush=True)
    rows = [row for arch in args.arch for row in compile_arch(arch, args)]
    failed = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} compiled, {len(failed)} failed", flush=True)
    if args.output:
        command = (
            f"python -m maxwhisper gpu-compile --arch {','.join(args.arch)} --precision "
            f"{','.join(args.precision)} --model {args.model}"
            + (f" --graphs {','.join(args.graphs)}" if args.graphs else "")
            + f" --output {args.output}"
        )
        doc = {
            "command": command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": args.model,
            "machine": machine_info(),
            "versions": versions(),
            "graphs": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.parent.joinpath(args.output.name + ".json").write_text(
            json.dumps(doc, indent=1) + "\n", encoding="utf-8"
        )
        args.output.parent.joinpath(args.output.name + ".md").write_text(markdown(doc), encoding="utf-8")
    return 1 if failed or not rows else 0


def _child(request: str) -> int:
    from .checkpoint import load_checkpoint
    from .graph.virtual_gpu import compile_for

    r = json.loads(request)
    for row in compile_for(r["arch"], load_checkpoint(r["model"]), r["precisions"], r["graphs"]):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    status = _child(sys.argv[1])
    # every row is out: leave without the interpreter's teardown, where MAX's virtual device now and
    # then aborts ("terminate called without an active exception") after all its work is done
    os._exit(status)
