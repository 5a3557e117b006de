"""The benchmarks' /proc readers (perf/procfs.py) against this process and a real child."""

import os
import subprocess
import sys
import time

import pytest

from perf import procfs


def burn(seconds: float) -> None:
    """Keeps this thread on the CPU for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def test_cpu_seconds_of_this_process_follow_its_own_clock():
    before, own_before = procfs.cpu_seconds(os.getpid()), own_cpu_s()
    burn(0.3)
    spent, own = procfs.cpu_seconds(os.getpid()) - before, own_cpu_s() - own_before
    assert spent >= 0.25
    assert spent == pytest.approx(own, abs=3 / procfs.TICK)


@pytest.fixture
def busy_child():
    """A child that burns 0.4 s of CPU, then sleeps (alive, its time counted) until killed."""
    code = ("import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
            "print('done', flush=True)\ntime.sleep(60)  # procfs-test-child")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "done"
    yield child
    child.kill()
    child.wait()


def test_a_process_tree_counts_its_live_children(busy_child):
    assert busy_child.pid in procfs.children(os.getpid())
    assert "procfs-test-child" in procfs.cmdline(busy_child.pid)
    assert procfs.cpu_seconds(busy_child.pid) >= 0.35
    # this process's own time plus its child's: the child is not waited for, so os.times() misses it
    tree = procfs.cpu_seconds(os.getpid())
    assert tree - own_cpu_s() >= 0.35
    assert procfs.children(busy_child.pid) == []


def test_a_process_that_is_gone_has_no_rss_and_no_command_line():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(done.stdout)
    assert procfs.rss_mb(gone) is None and procfs.rss_mb(None) is None
    assert procfs.cmdline(gone) == ""


def test_rss_grows_with_memory_this_process_touches():
    before = procfs.rss_mb(os.getpid())
    block = bytearray(64 * 1024 * 1024)  # zeroed: every page touched
    grown = procfs.rss_mb(os.getpid()) - before
    assert 60 <= grown <= 80
    del block


def test_the_machine_is_busy_at_least_while_this_process_computes():
    before = procfs.busy_seconds()
    burn(0.3)
    assert procfs.busy_seconds() - before >= 0.25


CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme avx2 sse4_2

processor\t: 1
model name\t: some other CPU
flags\t\t: fpu
"""


def test_cpuinfo_gives_the_first_cpus_model_and_flags():
    assert procfs.parse_cpuinfo(CPUINFO) == ("AMD EPYC 7B13", "fpu vme avx2 sse4_2")
    assert procfs.parse_cpuinfo("") == ("unknown", "")
    info = procfs.cpu_info()
    with open("/proc/cpuinfo") as f:
        assert (info["model"], info["flags"]) == procfs.parse_cpuinfo(f.read())
    assert info["cpus"] == os.cpu_count() and info["model"]
