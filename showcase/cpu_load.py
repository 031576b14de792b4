"""What a transcription cost and what else used the CPU meanwhile (`OtherWork`): the CPU seconds
this process used during the run (all its threads: the transcriptions take turns, so that is the
run's own work unless the app's own work ran beside it), and how many cores other programs kept
busy on average: the busy time of the cores this process may use (/proc/stat, a hypervisor's steal
included) less this process's own CPU time. Other programs stretch a run's wall-clock time by
chance; its CPU seconds count its own work, which is why the verdict rests on them when other
programs were busy. Where /proc/stat is missing, the other programs are not measured (None)."""

from __future__ import annotations

import os
import time
from pathlib import Path

BUSY_CORES = 0.5  # other work on at least this many cores, on average, makes a run's timing "shared"
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (not idle, iowait; guest is in user)


def _cores() -> set[int]:
    """The cores this process may run on."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def _busy_seconds(cores: set[int], stat: Path) -> float | None:
    """Seconds the `cores` have been busy since boot, all processes together; None without /proc/stat."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK")


def available_cores() -> int:
    return len(_cores())


class OtherWork:
    """A context manager around a run: afterwards `own_s` is the CPU seconds this process used during
    it, and `cores` how many cores other work kept busy on average (0 to the cores this process may
    use), None where it cannot be measured."""

    def __init__(self, stat: Path = Path("/proc/stat")):
        self._stat = stat
        self._cores = _cores()
        self.cores: float | None = None
        self.own_s: float | None = None

    def __enter__(self) -> OtherWork:
        self._start = (time.monotonic(), _busy_seconds(self._cores, self._stat), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, own0 = self._start
        wall, busy = time.monotonic() - wall0, _busy_seconds(self._cores, self._stat)
        self.own_s = time.process_time() - own0
        if busy is None or busy0 is None or wall <= 0:
            return
        others = (busy - busy0) - self.own_s
        self.cores = min(max(others / wall, 0.0), float(len(self._cores)))
