"""How busy the machine is with other work while a benchmark measures: CPU time of the whole
machine (``/proc/stat``) less the CPU time of this process and its waited-for children.

A timed unit (one configuration in a child process, one tool run) starts once the other
processes leave the machine quiet, and reports how many cores they used while it ran;
one that was disturbed is measured again (see ``measured``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from perf.procfs import busy_seconds

log = logging.getLogger(__name__)
T = TypeVar("T")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Window:
    """Other processes' CPU use (in cores) since ``start``."""

    busy: float
    own: float
    wall: float

    @classmethod
    def start(cls) -> "Window":
        return cls(busy_seconds(), _own_s(), time.monotonic())

    def others_cores(self) -> float:
        wall = max(time.monotonic() - self.wall, 1e-3)
        return max(0.0, (busy_seconds() - self.busy) - (_own_s() - self.own)) / wall


def wait_quiet(max_cores: float, timeout_s: float, sample_s: float = 3.0) -> float:
    """Waits until other processes use at most ``max_cores`` over ``sample_s``, or
    ``timeout_s`` passed; returns the last sample."""
    deadline = time.monotonic() + timeout_s
    while True:
        window = Window.start()
        time.sleep(sample_s)
        cores = window.others_cores()
        if cores <= max_cores or time.monotonic() >= deadline:
            return cores
        log.info("machine busy (%.2f cores used by other processes); waiting", cores)
        time.sleep(10)


def measured(name: str, unit: Callable[[], T], max_cores: float = 0.2, tries: int = 2,
             wait_s: float = 600) -> tuple[T, float]:
    """Runs ``unit`` on a quiet machine; again (up to ``tries`` times) if other processes
    used more than ``max_cores`` while it ran. Returns the least disturbed result and the
    cores the others used during it."""
    best: tuple[T, float] | None = None
    for attempt in range(tries):
        if wait_s > 0:
            wait_quiet(max_cores, wait_s)
        window = Window.start()
        result = unit()
        cores = window.others_cores()
        if best is None or cores < best[1]:
            best = (result, cores)
        if cores <= max_cores:
            break
        log.warning("%s: other processes used %.2f cores while it ran (try %d of %d)", name, cores, attempt + 1, tries)
    return best
