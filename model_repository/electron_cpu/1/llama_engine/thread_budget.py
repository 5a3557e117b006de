"""How many llama.cpp threads the engine should use now: the cores it may run on
that other processes leave it.

llama.cpp's threads meet at a barrier after every operation of a step, so a step
goes at the pace of its slowest thread. When another process (a busy laptop, a
benchmark client, the gateway tokenizing a long prompt) takes one of those cores,
the thread on it waits for a time slice at every barrier and the whole step
waits with it: one busy process beside two engine threads stretched a 48-token
reply from 0.9 s to seconds, with token gaps of hundreds of milliseconds. One
thread fewer than the cores actually free has no partner to wait for.

A sampler thread reads, every ``period_s``, the CPU time of the engine's CPUs
(``/proc/stat``, only the CPUs in this process's affinity mask) and this
process's own CPU time (``/proc/self/stat``). Idle time plus our own time over
the period is the number of cores we could have had (``available``); the rest
went to other processes (or to the hypervisor: steal). The thread count follows
it with hysteresis:

- fewer threads at once when ``available < threads - lower_margin`` (by default
  under 1.6 cores for 2 threads: a busy process beside two threads leaves ~1.3);
- more threads when ``available >= threads + raise_margin`` (by default 1.6 for
  going from 1 to 2): a free core shows as idle time even while our one thread
  runs flat out.

The rule is in cores, not in fractions, so it reads the same on 2 cores and on
16: with one busy process a 16-core engine runs 15 threads.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """Cumulative seconds since boot (idle) and since this process started (ours)."""

    idle_s: float  # idle + iowait summed over the CPUs the engine may run on
    ours_s: float  # user + system time of this process, all its threads


def engine_cpus() -> frozenset[int]:
    """The CPUs this process may run on (taskset, cpuset)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """Cores a cgroup v2 CPU quota allows (``docker --cpus``), or None without one."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def usable_cores() -> int:
    """Cores the engine may use: its affinity mask, capped by a cgroup quota."""
    cores = len(engine_cpus())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def read_cpu_sample(cpus: frozenset[int], stat_path: str = "/proc/stat",
                    self_stat_path: str = "/proc/self/stat") -> CpuSample:
    idle_ticks = 0
    with open(stat_path) as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            if name == "cpu" or int(name[3:]) not in cpus:
                continue
            idle_ticks += int(fields[3]) + int(fields[4])  # idle, iowait
    with open(self_stat_path) as f:
        after_name = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    ours_ticks = int(after_name[11]) + int(after_name[12])  # utime, stime (fields 14 and 15)
    return CpuSample(idle_ticks / _TICKS_PER_S, ours_ticks / _TICKS_PER_S)


class ThreadBudget:
    """The thread count for the next steps, from successive CPU samples."""

    def __init__(self, max_threads: int, lower_margin: float = 0.4, raise_margin: float = 0.6):
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self.lower_margin = lower_margin
        self.raise_margin = raise_margin
        self.threads = max_threads
        self.available: float | None = None  # cores we could have had over the last period
        self._last: tuple[float, CpuSample] | None = None

    def observe(self, now: float, sample: CpuSample) -> int | None:
        """Feed one sample taken at ``now`` (monotonic seconds); returns the new
        thread count when it changes, else None."""
        last, self._last = self._last, (now, sample)
        if last is None or now <= last[0]:
            return None
        elapsed = now - last[0]
        available = ((sample.idle_s - last[1].idle_s) + (sample.ours_s - last[1].ours_s)) / elapsed
        self.available = available
        threads = self.threads
        if available < threads - self.lower_margin:
            threads = math.floor(available + self.lower_margin)
        elif available >= threads + self.raise_margin:
            threads = math.floor(available + 1 - self.raise_margin)
        threads = min(self.max_threads, max(1, threads))
        if threads == self.threads:
            return None
        self.threads = threads
        return threads


class ThreadBudgetWatch:
    """Keeps a ``ThreadBudget`` up to date from a thread of its own; the engine
    loop reads ``threads`` before each step (an int read, no lock needed)."""

    def __init__(self, budget: ThreadBudget, period_s: float = 0.25,
                 read: Callable[[], CpuSample] | None = None):
        self.budget = budget
        self.period_s = period_s
        cpus = engine_cpus()
        self._read = read or (lambda: read_cpu_sample(cpus))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-budget", daemon=True)

    @property
    def threads(self) -> int:
        return self.budget.threads

    def start(self) -> None:
        try:
            self.budget.observe(time.monotonic(), self._read())
        except (OSError, ValueError, IndexError) as exc:  # no /proc: the count stays fixed
            log.warning("cannot read CPU times (%s); llama.cpp threads stay at %d", exc, self.budget.threads)
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                before = self.budget.threads
                changed = self.budget.observe(time.monotonic(), self._read())
            except Exception:
                log.exception("reading CPU times failed; llama.cpp threads stay at %d", self.budget.threads)
                continue
            if changed is not None:
                log.info("llama.cpp threads %d -> %d: %.2f cores free for the engine over the last %.2f s",
                         before, changed, self.budget.available, self.period_s)
