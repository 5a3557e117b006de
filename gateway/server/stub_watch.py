"""Telling a dead python backend stub from ``/proc``.

Triton's python backend runs each model instance in a ``triton_python_backend_stub``
child process. When that child dies (a crash in llama.cpp, the OOM killer, a
stray signal) while ``tritonserver`` lives, this Triton build does not reap it
(it stays a zombie), keeps the model READY and answers every request "Stub
process '<instance>' is not healthy", for ever. Nothing in Triton's API shows it;
``/proc`` does: the stub is a child of the tritonserver process in state ``Z``.

``StubWatch.check()`` scans ``/proc`` for the stubs of one tritonserver process
and names a stub found a zombie on two checks in a row (an instance Triton
unloads exits and is reaped within milliseconds: one sighting could be that
moment; a crashed stub stays a zombie until Triton exits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
_COMM_LEN = 15  # the kernel keeps a process name's first 15 bytes (TASK_COMM_LEN - 1)
_DEAD_STATES = ("Z", "X")  # zombie (exited, not reaped), dead


@dataclass(frozen=True)
class ProcessState:
    pid: int
    name: str  # /proc/<pid>/comm: at most 15 characters
    state: str  # R, S, D, Z, ...
    ppid: int
    exit_status: int | None = None  # a dead process's wait status (stat field 52), else None

    @property
    def signal(self) -> int | None:
        """The signal that ended a dead process, or None (exited, or alive)."""
        if not self.exit_status or self.state not in _DEAD_STATES:
            return None
        signo = self.exit_status & 0x7F
        return signo if signo not in (0, 0x7F) else None


def parse_stat(pid: int, text: str) -> ProcessState:
    """``/proc/<pid>/stat``: the name sits in parentheses and may hold spaces and ')'."""
    close = text.rindex(")")
    fields = text[close + 2:].split()
    exit_status = int(fields[49]) if len(fields) > 49 else None  # field 52 of stat(5), fields[0] is field 3
    return ProcessState(pid=pid, name=text[text.index("(") + 1:close], state=fields[0], ppid=int(fields[1]),
                        exit_status=exit_status)


def children(parent_pid: int, proc: Path = Path("/proc")) -> list[ProcessState]:
    """The processes whose parent is ``parent_pid`` (one read of each ``stat`` in ``proc``)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = parse_stat(int(entry.name), (entry / "stat").read_text())
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not a process
            continue
        if state.ppid == parent_pid:
            found.append(state)
    return found


def is_stub(process: ProcessState) -> bool:
    return process.name == STUB_NAME[:_COMM_LEN]


class StubWatch:
    """The python backend stubs of the tritonserver process ``triton_pid``."""

    def __init__(self, triton_pid: int, proc: Path = Path("/proc")) -> None:
        self.triton_pid = triton_pid
        self._proc = proc
        self._zombies: set[int] = set()  # stubs seen dead at the last check

    def check(self) -> ProcessState | None:
        """A stub dead on this check and the one before, else None."""
        dead = {p.pid: p for p in children(self.triton_pid, self._proc)
                if is_stub(p) and p.state in _DEAD_STATES}
        confirmed = [dead[pid] for pid in sorted(dead) if pid in self._zombies]
        self._zombies = set(dead)
        return confirmed[0] if confirmed else None
