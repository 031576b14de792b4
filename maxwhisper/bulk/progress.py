"""A bulk job's progress on stderr: on a terminal a bar of files and audio hours done, with the
throughput and the time left, redrawn in place; otherwise a plain line every `interval` seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def audio_amount(seconds: float) -> str:
    """Hours from 0.1 h on, minutes below (a short job's audio is not "0.00 h")."""
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


class Progress:
    """`total_files` files of `total_bytes` bytes to do; `done(row, size)` after each. The time left
    is estimated from the bytes still to read at the rate since the first file was done (files of
    one archive tend to share a format; the workers' start and model load before it would make the
    first files look slow), so it shows from the second file on."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO | None = None, interval: float = 10.0):
        self.total_files, self.total_bytes = total_files, max(total_bytes, 1)
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.interval = interval
        self.files = self.failed = self.bytes = 0
        self.audio_s = 0.0
        self.start = self.last_line = time.monotonic()
        self.first_at, self.first_bytes = 0.0, 0

    def done(self, row: dict, size: int) -> None:
        self.files += 1
        self.failed += row["status"] != "ok"
        self.bytes += size
        self.audio_s += row.get("duration") or 0.0
        now = time.monotonic()
        if self.files == 1:
            self.first_at, self.first_bytes = now, self.bytes
        if self.terminal:
            self.stream.write("\r" + self.line(now) + "\033[K")
            self.stream.flush()
        elif now - self.last_line >= self.interval or self.files == self.total_files:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
            self.last_line = now

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        fraction = self.bytes / self.total_bytes if self.files < self.total_files else 1.0
        text = (
            f"{self.files}/{self.total_files} files"
            + (f" ({self.failed} failed)" if self.failed else "")
            + f", {audio_amount(self.audio_s)} of audio, {self.audio_s / elapsed:.1f} audio h/h"
        )
        since_first = self.bytes - self.first_bytes
        if self.files > 1 and since_first > 0 and fraction < 1:
            rate = since_first / max(now - self.first_at, 1e-9)
            text += f", {_duration((self.total_bytes - self.bytes) / rate)} left"
        if self.terminal:
            filled = round(BAR_WIDTH * fraction)
            text = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " + text
        return text

    def close(self) -> None:
        if self.terminal and self.files:
            self.stream.write("\n")
            self.stream.flush()
