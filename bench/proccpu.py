"""CPU time of processes by pid, read from ``/proc`` (Linux), for scenario 10's per-process figures.

``/proc/<pid>/stat`` holds the same user and system times ``getrusage`` reports for a process
(its threads included, its children not), in clock ticks. Reading it from outside lets the
benchmark take a process's CPU between two moments of its own choosing (the "go" and the last
event stored), leaving out interpreter start-up and shutdown. Where there is no ``/proc`` (or the
process is gone) the functions return None and the scenario reports the figure as unknown.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "pids_named"]

_PROC = Path("/proc")
try:
    _TICKS = float(os.sysconf("SC_CLK_TCK"))
except (AttributeError, ValueError, OSError):  # not a POSIX system with sysconf
    _TICKS = 100.0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process `pid` has used so far; None when it cannot be read."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rpartition(")")[2].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)
    except (IndexError, ValueError):
        return None


def pids_named(name: str) -> list[int]:
    """The pids of processes whose command name (``/proc/<pid>/comm``) is `name`."""
    found = []
    try:
        entries = list(_PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)
