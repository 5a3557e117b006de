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

While the engine is idle (it used under ``IDLE_CORES`` over the last period) the
rule reads ``available`` over the last ``idle_window_s`` (5 s) instead of the last
period: a short burst of another process (a container health check's ``exec``
with Docker's own work for it, a cron job) takes up to a core-second, and read
over one 0.25 s period (or 2 s) it dropped a thread and brought it back every few
seconds on an idle machine. A neighbour that stays busy still takes the thread
within about 2.5 s, and while the engine runs, the last period decides, at once.

In a container with a CPU quota (``docker --cpus``: cgroup v2 ``cpu.max``, or
v1 ``cpu.cfs_quota_us``) the CPUs' idle time is the host's: a core idle on the
host may be one the quota does not give us. There the sampler also reads the
container's own CPU time (v2 ``cpu.stat`` ``usage_usec``, v1 ``cpuacct.usage``):
what the quota leaves us is the quota less what the container's other processes
(the gateway, Redis) used, and ``available`` is the smaller of that and the
host's idle time plus ours.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
IDLE_CORES = 0.05  # the engine used less than this over a period: it was idle


@dataclass(frozen=True)
class CpuSample:
    """Cumulative seconds since boot (idle) and since this process started (ours)."""

    idle_s: float  # idle + iowait summed over the CPUs the engine may run on
    ours_s: float  # user + system time of this process, all its threads
    group_s: float | None = None  # CPU time of the whole cgroup (container), when it has a quota


def engine_cpus() -> frozenset[int]:
    """The CPUs this process may run on (taskset, cpuset)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class CgroupDirs:
    """This process's cgroup directories: the unified (v2) one and the v1 ``cpu`` and
    ``cpuacct`` ones (only those that exist are read)."""

    v2: str
    cpu: str
    cpuacct: str


def own_cgroup_dirs(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> CgroupDirs:
    """Where this process's CPU quota and CPU time are, from ``/proc/self/cgroup``
    (``id:controllers:path`` lines). In a container the path is ``/`` (a cgroup
    namespace) or, without one, a host path not mounted inside: then the mount's root."""
    paths = {"v2": "/", "cpu": "/", "cpuacct": "/"}
    try:
        for line in open(proc_cgroup).read().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in (controllers.split(",") if controllers else ["v2"]):
                if name in paths:
                    paths[name] = path
    except (OSError, ValueError):
        pass

    def place(mount: str, path: str) -> str:
        inside = f"{mount}{path}".rstrip("/")
        return inside if os.path.isdir(inside) else mount

    return CgroupDirs(v2=place(root, paths["v2"]), cpu=place(f"{root}/cpu", paths["cpu"]),
                      cpuacct=place(f"{root}/cpuacct", paths["cpuacct"]))


def cgroup_cpu_limit(dirs: CgroupDirs | None = None) -> float | None:
    """Cores this process's CPU quota allows (``docker --cpus``, systemd ``CPUQuota=``;
    cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), or None without one."""
    dirs = dirs or own_cgroup_dirs()
    try:
        quota, period = open(f"{dirs.v2}/cpu.max").read().split()[:2]
    except FileNotFoundError:
        try:  # cgroup v1: a quota of -1 means none
            quota = open(f"{dirs.cpu}/cpu.cfs_quota_us").read().strip()
            period = open(f"{dirs.cpu}/cpu.cfs_period_us").read().strip()
            if int(quota) <= 0 or int(period) <= 0:
                return None
        except (OSError, ValueError):
            return None
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def cgroup_cpu_usage_s(path: str) -> float:
    """CPU seconds the cgroup's processes have used: ``usage_usec`` of cgroup v2's
    ``cpu.stat``, or cgroup v1's ``cpuacct.usage`` (nanoseconds)."""
    with open(path) as f:
        if path.endswith("cpuacct.usage"):
            return int(f.read()) / 1e9
        for line in f:
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    raise ValueError(f"no usage_usec in {path}")


def cgroup_usage_path(dirs: CgroupDirs | None = None) -> str | None:
    """Where this process's cgroup CPU time can be read (v2, else v1), or None."""
    dirs = dirs or own_cgroup_dirs()
    for path in (f"{dirs.v2}/cpu.stat", f"{dirs.cpuacct}/cpuacct.usage"):
        try:
            cgroup_cpu_usage_s(path)
            return path
        except (OSError, ValueError):
            continue
    return None


def usable_cores() -> int:
    """Cores the engine may use: its affinity mask, capped by a cgroup quota."""
    cores = len(engine_cpus())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def read_cpu_sample(cpus: frozenset[int], stat_path: str = "/proc/stat",
                    self_stat_path: str = "/proc/self/stat", group_stat_path: str | None = None) -> CpuSample:
    """Idle time of ``cpus``, this process's CPU time and, with ``group_stat_path``, its cgroup's."""
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
    group_s = cgroup_cpu_usage_s(group_stat_path) if group_stat_path else None
    return CpuSample(idle_ticks / _TICKS_PER_S, ours_ticks / _TICKS_PER_S, group_s)


class ThreadBudget:
    """The thread count for the next steps, from successive CPU samples."""

    def __init__(self, max_threads: int, lower_margin: float = 0.4, raise_margin: float = 0.6,
                 quota_cores: float | None = None, idle_window_s: float = 5.0):
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self.quota_cores = quota_cores  # the cgroup's CPU quota in cores, if it has one
        self.lower_margin = lower_margin
        self.raise_margin = raise_margin
        self.idle_window_s = idle_window_s
        self.threads = max_threads
        self.available: float | None = None  # cores we could have had over the period the rule read
        self.span_s = 0.0  # that period's length
        self._samples: deque[tuple[float, CpuSample]] = deque()  # the last idle_window_s, oldest first

    def observe(self, now: float, sample: CpuSample) -> int | None:
        """Feed one sample taken at ``now`` (monotonic seconds); returns the new
        thread count when it changes, else None."""
        if self._samples and now <= self._samples[-1][0]:
            return None
        self._samples.append((now, sample))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.idle_window_s:
            self._samples.popleft()  # the oldest kept sample starts a window of at least idle_window_s
        if len(self._samples) < 2:
            return None
        start = self._samples[-2]
        if (sample.ours_s - start[1].ours_s) / (now - start[0]) < IDLE_CORES:
            start = self._samples[0]  # idle: read the whole window, not one period
        self.available = available = self._available(start, (now, sample))
        self.span_s = now - start[0]
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

    def _available(self, first: tuple[float, CpuSample], last: tuple[float, CpuSample]) -> float:
        """Cores the engine could have had between two samples: idle time plus its own,
        within a cgroup quota less what the container's other processes used."""
        elapsed = last[0] - first[0]
        ours = (last[1].ours_s - first[1].ours_s) / elapsed
        available = (last[1].idle_s - first[1].idle_s) / elapsed + ours
        if self.quota_cores is not None and last[1].group_s is not None and first[1].group_s is not None:
            others = max(0.0, (last[1].group_s - first[1].group_s) / elapsed - ours)  # the container's other processes
            available = min(available, self.quota_cores - others)
        return available


class ThreadBudgetWatch:
    """Keeps a ``ThreadBudget`` up to date from a thread of its own; the engine
    loop reads ``threads`` before each step (an int read, no lock needed)."""

    def __init__(self, budget: ThreadBudget, period_s: float = 0.25,
                 read: Callable[[], CpuSample] | None = None):
        self.budget = budget
        self.period_s = period_s
        cpus = engine_cpus()
        # no quota (or no way to see the container's use of it): the CPUs' idle time only
        group_stat = cgroup_usage_path() if budget.quota_cores is not None else None
        self._read = read or (lambda: read_cpu_sample(cpus, group_stat_path=group_stat))
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
                         before, changed, self.budget.available, self.budget.span_s)
