"""Finding tritonserver's python backend stubs in a /proc-like tree and telling a dead one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.server.stub_watch import STUB_NAME, StubWatch, children, is_stub, parse_stat

TRITON = 4100
PR_SET_NAME = 15


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _process(proc: Path, pid: int, name: str, state: str, ppid: int) -> None:
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({name}) {state} {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0\n")


def _tree(proc: Path, stub_state: str = "S") -> Path:
    _process(proc, 1, "init", "S", 0)
    _process(proc, TRITON, "tritonserver", "S", 1)
    _process(proc, 4200, "triton_python_b", stub_state, TRITON)  # the kernel keeps 15 characters
    _process(proc, 4300, "triton_python_b", "Z", 77)  # another tritonserver's dead stub
    _process(proc, 4400, "bash", "Z", TRITON)  # not a stub
    (proc / "self").mkdir()  # not a process directory
    (proc / "4500").mkdir()  # a process gone while it was read: no stat
    return proc


def test_parse_stat_takes_the_name_between_the_first_and_last_parenthesis():
    state = parse_stat(12, "12 (a) b (c)) Z 34 12 12 0 -1\n")
    assert (state.pid, state.name, state.state, state.ppid) == (12, "a) b (c)", "Z", 34)


def test_children_are_found_by_parent_pid_and_stubs_by_name(tmp_path):
    found = children(TRITON, _tree(tmp_path))
    assert sorted(p.pid for p in found) == [4200, 4400]
    assert [p.pid for p in found if is_stub(p)] == [4200]


def test_a_live_stub_is_not_dead(tmp_path):
    watch = StubWatch(TRITON, _tree(tmp_path))
    assert watch.check() is None and watch.check() is None


def test_a_zombie_stub_is_dead_on_the_second_check_in_a_row(tmp_path):
    proc = _tree(tmp_path)
    watch = StubWatch(TRITON, proc)
    assert watch.check() is None
    _process(proc, 4200, "triton_python_b", "Z", TRITON)
    assert watch.check() is None  # one sighting may be an unload's exit just before Triton reaps it
    dead = watch.check()
    assert dead is not None and dead.pid == 4200


def test_a_stub_reaped_between_two_checks_is_not_dead(tmp_path):
    proc = _tree(tmp_path, stub_state="Z")
    watch = StubWatch(TRITON, proc)
    assert watch.check() is None
    (proc / "4200" / "stat").unlink()  # reaped by Triton: an unload, not a crash
    _process(proc, 4201, "triton_python_b", "S", TRITON)  # the instance loaded again
    assert watch.check() is None and watch.check() is None


def test_a_real_killed_child_is_seen_as_a_dead_stub_in_the_real_proc():
    """A child that nobody reaps, named as the stub is: what Triton leaves after a crash."""
    named = f"import ctypes, time; ctypes.CDLL(None).prctl({PR_SET_NAME}, b'{STUB_NAME}'); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", named])
    try:
        _wait_for(lambda: parse_stat(child.pid, Path(f"/proc/{child.pid}/stat").read_text()).name == STUB_NAME[:15])
        watch = StubWatch(os.getpid())
        assert watch.check() is None
        os.kill(child.pid, signal.SIGSEGV)
        _wait_for(lambda: parse_stat(child.pid, Path(f"/proc/{child.pid}/stat").read_text()).state == "Z")
        watch.check()
        dead = watch.check()
        assert dead is not None and dead.pid == child.pid
    finally:
        child.kill()
        child.wait()


def test_a_dead_stubs_signal_is_read_from_its_wait_status():
    """A real child killed by SIGSEGV and not yet reaped: a zombie whose stat names the signal."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSEGV)
        _wait_for(lambda: any(p.pid == child.pid and p.state == "Z" for p in children(os.getpid())))
        dead = next(p for p in children(os.getpid()) if p.pid == child.pid)
        assert dead.signal == signal.SIGSEGV
    finally:
        child.kill()
        child.wait()
    alive = parse_stat(12, "12 (a) S 34 " + " ".join(["0"] * 49))
    assert alive.exit_status == 0 and alive.signal is None
    exited = parse_stat(12, "12 (a) Z 34 " + " ".join(["0"] * 47) + f" {3 << 8} 0")  # exit code 3, no signal
    assert exited.exit_status == 768 and exited.signal is None
