"""What the benchmarks read from Linux's ``/proc``: a process tree's CPU time, a process's
resident memory, children and command line, the machine's busy CPU time and its CPU."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second, the unit of /proc's CPU times


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces and
    parentheses): [0] state, [1] parent pid, [11] utime, [12] stime (ticks, all threads)."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    out = []
    for proc in PROC.iterdir():
        if proc.name.isdigit():
            try:
                if int(_stat(int(proc.name))[1]) == pid:
                    out.append(int(proc.name))
            except (OSError, ValueError, IndexError):  # gone meanwhile
                pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` (all its threads) and of its live descendants (a
    gateway pool's workers, say); children that exited meanwhile count 0."""
    fields = _stat(pid)
    total = (int(fields[11]) + int(fields[12])) / TICK
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except (OSError, ValueError, IndexError):
            pass
    return total


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of ``pid`` (``VmRSS`` of ``/proc/PID/status``) in MiB; None for no
    pid or a process that is gone."""
    if pid is None:
        return None
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" if it is gone)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``: every state but idle
    and iowait), summed over its CPUs."""
    with open(PROC / "stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def parse_cpuinfo(text: str) -> tuple[str, str]:
    """The first CPU's model name and flags in the text of ``/proc/cpuinfo``."""
    model, flags = "unknown", ""
    for line in text.splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].strip()
    return model, flags


def cpu_info() -> dict:
    """The CPU the figures come from: model and flags from ``/proc/cpuinfo``, logical CPUs."""
    model, flags = parse_cpuinfo((PROC / "cpuinfo").read_text(encoding="utf-8"))
    return {"model": model, "flags": flags, "cpus": os.cpu_count()}
