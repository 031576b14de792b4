"""`View`: what a tab hands the page to refresh for it (when a visitor opens the page, or on the
page's timer while work runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    outputs: list  # Gradio components of the tab
    values: Callable[[], tuple]  # their values now, in the same order
