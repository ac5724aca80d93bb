"""How busy the machine is with work other than the benchmark (Linux ``/proc/stat``).

On a shared CPU box another process's threads steal cores from torch's OpenMP pool, and a
parallel region then waits for its slowest thread: a single busy neighbour can slow a
2-thread run several times over. The benchmark therefore waits for a quiet machine before each
run and reports the foreign load it saw during the run, so a disturbed figure is visible.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

__all__ = ["CpuWindow", "busy_fraction", "wait_for_quiet"]

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_times() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / _TICK, total / _TICK


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs that were busy over the next ``seconds`` (0..1)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1e-9)


def wait_for_quiet(max_busy: float, timeout: float) -> tuple[bool, float]:
    """Wait until two consecutive 1 s windows are below ``max_busy``; give up after ``timeout``.

    Returns (quiet, seconds waited).
    """
    start, calm = time.monotonic(), 0
    while time.monotonic() - start < timeout:
        calm = calm + 1 if busy_fraction(1.0) < max_busy else 0
        if calm >= 2:
            return True, time.monotonic() - start
    return False, time.monotonic() - start


@dataclass
class CpuWindow:
    """Foreign CPU load over a stretch of this process's own work.

    foreign_fraction(): (all busy CPU time - this process's CPU time) / (wall * CPUs), the
    share of the machine that other processes used meanwhile.
    """

    busy: float = 0.0
    total: float = 0.0
    mine: float = 0.0

    def __post_init__(self) -> None:
        self.busy, self.total = _cpu_times()
        self.mine = _own_cpu()

    def own_seconds(self) -> float:
        """CPU seconds (user + system, all threads) this process used since the start."""
        return _own_cpu() - self.mine

    def foreign_fraction(self) -> float:
        busy, total = _cpu_times()
        mine = _own_cpu() - self.mine
        return max(0.0, (busy - self.busy - mine) / max(total - self.total, 1e-9))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
