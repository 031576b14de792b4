"""Text for people, shared by the tabs: an implementation's label and colour, load times, error
messages without the server's paths."""

from __future__ import annotations

import html
import re

from maxwhisper.api import MaxWhisperError
from maxwhisper.registry import BACKENDS, color


def label(backend: str) -> str:
    return BACKENDS[backend].description if backend in BACKENDS else backend


def panel_title(backend: str, inner: str = "") -> str:
    """The head of an implementation's panel: its name over a rule in its colour, then `inner` (HTML)."""
    return (
        f"<div class='panel-head' style='border-color:{color(backend)}'><span class='panel-name'>"
        f"{html.escape(label(backend))}</span>{inner}</div>"
    )


def markdown_list(heading: str, items: list[str]) -> str:
    """Markdown: `heading` on a line of its own, then one list item per entry."""
    return heading + "\n\n" + "\n".join(f"- {item}" for item in items)


def hide_paths(text: str) -> str:
    """Absolute paths (the server's files) reduced to their file names; URLs kept."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+([^\s/'\"]+)", r"\1", text)


def load_text(load_s: float, compile_s: float | None) -> str:
    """'load X s', plus ' + compile Y s' when there was a compile."""
    return f"load {load_s:.1f} s" + (f" + compile {compile_s:.1f} s" if compile_s else "")


def error_message(e: BaseException) -> str:
    """A MaxWhisperError's message is meant for people; anything else is named by its type. No server paths."""
    return hide_paths(str(e) if isinstance(e, MaxWhisperError) else f"{type(e).__name__}: {e}")
