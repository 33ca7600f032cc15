"""Resource readings of a running process from /proc: peak resident memory and CPU time."""

from __future__ import annotations

__all__ = ["ProcSample", "cpu_seconds", "peak_rss_mb", "sample"]

import os
from dataclasses import dataclass
from pathlib import Path

#: clock ticks per second, the unit of utime/stime in /proc/<pid>/stat
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """CPU seconds used so far and peak resident memory of one process."""

    cpu_s: float
    peak_rss_mb: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` so far (utime + stime, /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # the command name may hold spaces; fields after its closing parenthesis are fixed
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def sample(pid: int) -> ProcSample:
    """Both readings at once; zeros once the process is gone."""
    try:
        return ProcSample(cpu_s=cpu_seconds(pid), peak_rss_mb=peak_rss_mb(pid))
    except (OSError, ValueError, IndexError):
        return ProcSample(cpu_s=0.0, peak_rss_mb=0.0)
