"""What an idle service costs: `python -m maxwhisper serve` started as a user starts it (a Ray
instance of its own), left without requests, and the CPU time of every one of its processes (the
command, Ray's GCS, raylet and agents, Serve's controller, the ingress and the model replicas) summed
over a minute, as a share of one core. CPU time, not wall time: other programs on the machine do
not inflate it.

    .venv/bin/python benchmarks/idle_cpu.py [--seconds 60] [--settle 30] [--out benchmarks/results]
        [-- SERVE ARGS ...]

It waits for `ready`, then `--settle` seconds (the replicas' first health checks, the start's last
work), then counts. Writes idle-cpu-<device tag>.json and .md: the total, each process's share,
the command, the CPU and its vector ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maxwhisper.bench.machine import device_tag, machine_info, versions  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root: psutil.Process) -> list[psutil.Process]:
    """`root` and every process under it (Ray's processes are the command's children, its workers the
    raylet's)."""
    return [root, *root.children(recursive=True)]


def label(p: psutil.Process) -> str:
    """The process's name; a Python process's script or module (Ray's agents and monitors are scripts)."""
    name = p.name()
    if not name.startswith("python"):
        return name
    args = p.cmdline()[1:]
    script = next((a for a in args if a.endswith(".py")), None)
    if script:
        return Path(script).name
    return " ".join(args[:2]) if args[:1] == ["-m"] else name


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    """Each live process's (label, user + system CPU seconds so far), by pid."""
    out = {}
    for p in processes:
        try:
            with p.oneshot():
                times = p.cpu_times()
                out[p.pid] = (label(p), times.user + times.system)
        except psutil.NoSuchProcess:
            pass
    return out


def measure(serve_args: list[str], seconds: float, settle: float) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "maxwhisper", "serve", "--port", str(port), *serve_args]
    env = {**os.environ, "MODULAR_TELEMETRY_ENABLED": "0", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        else:
            raise SystemExit("the service did not start:\n" + "".join(lines))
        time.sleep(settle)
        root = psutil.Process(proc.pid)
        before = cpu_seconds(tree(root))
        start = time.monotonic()
        time.sleep(seconds)
        after = cpu_seconds(tree(root))
        elapsed = time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    spent = {pid: (name, used - before.get(pid, (name, 0.0))[1]) for pid, (name, used) in after.items()}
    ended = [name for pid, (name, _) in before.items() if pid not in after]
    rows = sorted(
        (
            {"pid": pid, "name": name, "cpu_s": round(used, 3), "core_pct": round(100 * used / elapsed, 2)}
            for pid, (name, used) in spent.items()
        ),
        key=lambda r: -r["cpu_s"],
    )
    total = sum(r["cpu_s"] for r in rows)
    return {
        "command": " ".join(["python -m maxwhisper serve", *serve_args]),
        "seconds": round(elapsed, 1),
        "settle_s": settle,
        "processes": len(rows),
        "ended_meanwhile": ended,
        "cpu_s": round(total, 3),
        "core_pct": round(100 * total / elapsed, 2),
        "per_process": rows,
    }


def markdown(result: dict, script_command: str) -> str:
    m = result["machine"]
    lines = [
        f"# An idle service's CPU: {m['cpu']} ({m['cores']} cores, {m['vector_isa']})",
        "",
        f"`{script_command}`: `{result['command']}` started, {result['settle_s']:g} s after `ready` its "
        f"{result['processes']} processes counted for {result['seconds']:g} s without a request "
        f"(user + system CPU time of each, from psutil). CPU: {m['cpu']}, {m['cpu_family_model']}, "
        f"{m['vector_isa']}. Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v) + ".",
        "",
        f"**{result['core_pct']:.2f} % of one core** ({result['cpu_s']:.2f} CPU s in {result['seconds']:g} s)",
        "",
        "| process | pid | CPU s | % of a core |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['name']} | {r['pid']} | {r['cpu_s']:.3f} | {r['core_pct']:.2f} |" for r in result["per_process"]]
    if result["ended_meanwhile"]:
        lines += ["", f"Ended while counted (not summed): {', '.join(result['ended_meanwhile'])}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the idle service is counted (default 60)")
    p.add_argument("--settle", type=float, default=30.0, help="seconds after `ready` before counting (default 30)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("serve_args", nargs="*", help="after --: arguments for `maxwhisper serve`")
    args = p.parse_args()
    result = measure(args.serve_args, args.seconds, args.settle)
    result["machine"], result["versions"] = machine_info(), versions()
    print(json.dumps({k: v for k, v in result.items() if k != "per_process"}, indent=1))
    for row in result["per_process"]:
        print(f"  {row['name']:<40} {row['cpu_s']:8.3f} s  {row['core_pct']:6.2f} %")
    script = "benchmarks/idle_cpu.py" + "".join(f" {a}" for a in sys.argv[1:])
    name = f"idle-cpu-{device_tag('cpu', result['machine'])}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"script": script, **result}, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result, script))
    print(f"wrote {args.out / name}.json and .md")


if __name__ == "__main__":
    main()
