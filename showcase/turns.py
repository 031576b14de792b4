"""The turns the comparisons' transcriptions take: one at a time, first come first served."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Turns:
    """One transcription at a time, first come first served. A waiter learns its place and what runs
    (`activity`, set by whoever holds the turn)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()  # the turn's holder first, then its waiters in order
        self.activity = ""
        self._background = ""  # work outside the turns that shares the CPU (e.g. the component checks)

    def busy(self) -> bool:
        return bool(self._queue)

    def waiting(self) -> int:
        return max(len(self._queue) - 1, 0)

    @contextmanager
    def turn(self, on_wait: Callable[[int, str], None]) -> Iterator[str]:
        """Hold the turn for the `with` block; until then call on_wait(runs ahead, their activity) each second.
        A waiter that leaves (on_wait raising) gives up its place. Yields the background work running
        beside the turn ("" if none): known when the turn starts, as none is claimed while a turn is held."""
        me = object()
        with self._cond:
            self._queue.append(me)
        try:
            with self._cond:
                while self._queue[0] is not me:
                    on_wait(self._queue.index(me), self.activity)
                    self._cond.wait(1.0)
                overlapped = self._background
            yield overlapped
        finally:
            with self._cond:
                if self._queue[0] is me:
                    self.activity = ""
                self._queue.remove(me)
                self._cond.notify_all()

    def claim_background(self, what: str) -> None:
        """Wait until no transcription runs or waits, then mark `what` as running beside the turns."""
        with self._cond:
            while self.busy():
                self._cond.wait(1.0)
            self._background = what

    def release_background(self) -> None:
        with self._cond:
            self._background = ""

    def status(self) -> str:
        if not self.busy():
            return ""
        waiting = self.waiting()
        return f"**Now running:** {self.activity or 'a transcription'}" + (f" · {waiting} waiting" if waiting else "")
