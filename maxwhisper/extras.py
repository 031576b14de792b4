"""How maxwhisper is installed: the optional parts and the extra that installs each (pyproject.toml's
[project.optional-dependencies]), so that a feature whose extra is missing says in one line which to
install; and the checkout it runs from, if any."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .api import MaxWhisperError

# extra -> the modules of it that maxwhisper imports (tests/test_packaging.py checks them against pyproject.toml)
EXTRAS = {
    "batched": ("faster_whisper",),
    "baselines": ("torch", "whisper", "faster_whisper"),
    "app": ("gradio", "plotly", "jiwer"),
    "bench": ("jiwer", "plotly", "soundfile"),
    "serve": ("ray", "fastapi", "starlette", "uvicorn", "python_multipart"),
    "bulk": ("ray", "pyarrow", "pandas"),
}


class MissingExtra(MaxWhisperError):
    """A feature used without the extra that installs what it imports."""


def installed(extra: str) -> bool:
    """Whether every module of `extra` can be imported (none is imported to tell)."""
    return all(importlib.util.find_spec(module) is not None for module in EXTRAS[extra])


def how_to_install(extra: str) -> str:
    """What a message about a missing extra says to install it."""
    return f"the '{extra}' extra: pip install 'maxwhisper[{extra}]'"


def require(extra: str, feature: str) -> None:
    """Raises MissingExtra, naming the extra to install, where `extra` is not installed."""
    if not installed(extra):
        raise MissingExtra(f"{feature} needs {how_to_install(extra)}")


def checkout() -> Path | None:
    """The repository this maxwhisper runs from (a clone, installed editable or not); None where it
    is installed from a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None
