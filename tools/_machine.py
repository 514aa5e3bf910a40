"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_clock() -> tuple[float, float, float]:
    """(wall seconds, CPU seconds all processes used (from /proc/stat), CPU seconds this process and its
    finished children used)."""
    import resource

    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for a in ("ru_utime", "ru_stime"))
    return time.perf_counter(), busy, own


def other_load(start: tuple[float, float, float]) -> float:
    """Cores' worth of CPU that other processes used since ``start`` (NaN without /proc/stat)."""
    wall, busy, own = cpu_clock()
    return max(0.0, (busy - start[1]) - (own - start[2])) / (wall - start[0])
