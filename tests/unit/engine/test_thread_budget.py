"""The engine's llama.cpp thread count follows the cores other processes leave free."""

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_engine.thread_budget import (CgroupDirs, CpuSample, ThreadBudget, ThreadBudgetWatch, cgroup_cpu_limit,
                                        cgroup_cpu_usage_s, cgroup_usage_path, engine_cpus,
                                        own_cgroup_dirs, read_cpu_sample)


def run(budget: ThreadBudget, periods: list[tuple[float, float]], period_s: float = 0.25) -> list[int]:
    """Feed periods of (idle cores, cores we used); the thread count after each."""
    now, idle, ours = 0.0, 0.0, 0.0
    budget.observe(now, CpuSample(idle, ours))
    counts = []
    for idle_cores, our_cores in periods:
        now += period_s
        idle += idle_cores * period_s
        ours += our_cores * period_s
        budget.observe(now, CpuSample(idle, ours))
        counts.append(budget.threads)
    return counts


def test_a_free_machine_keeps_every_thread():
    # idle between requests, then decoding flat out on both cores, then the gateway taking a little
    assert run(ThreadBudget(2), [(2.0, 0.0), (0.1, 1.9), (0.0, 1.8), (0.3, 1.4)]) == [2, 2, 2, 2]


def test_a_busy_process_beside_two_threads_drops_one_at_once_and_it_comes_back_when_the_core_frees():
    # two threads beside a busy process get ~1.3 cores; one thread then gets its core, the other is taken;
    # the process ends: the second core shows idle although our one thread runs flat out
    counts = run(ThreadBudget(2), [(0.0, 1.3), (0.0, 1.0), (0.0, 1.0), (1.0, 1.0), (0.0, 2.0)])
    assert counts == [1, 1, 1, 2, 2]


def test_an_idle_engine_beside_a_busy_process_starts_its_next_request_on_the_free_core_only():
    assert run(ThreadBudget(2), [(1.0, 0.0), (1.0, 0.0)]) == [1, 1]


def test_an_idle_engine_keeps_its_threads_through_a_short_burst_of_another_process():
    # a container health check (its exec and Docker's work for it) takes up to a core-second every
    # 10 s: read over one period, or 2 s, it dropped a thread and brought it back (a log line each time)
    idle_second = [(2.0, 0.0)] * 4
    burst = [(0.0, 0.0)] * 2 + [(1.0, 0.0)] * 2  # 1 core-second in one second
    periods = idle_second * 10 + burst + idle_second * 9 + burst + idle_second * 10
    assert set(run(ThreadBudget(2), periods)) == {2}


def test_an_idle_engine_beside_a_process_that_stays_busy_gives_up_the_core_within_3_s():
    counts = run(ThreadBudget(2), [(2.0, 0.0)] * 20 + [(1.0, 0.0)] * 20)
    assert counts[:20] == [2] * 20
    assert counts[20:32].count(1) >= 1 and counts[32:] == [1] * 8
    # and once it is gone, the second thread comes back while the engine is still idle
    back = run(ThreadBudget(2), [(1.0, 0.0)] * 20 + [(2.0, 0.0)] * 20)
    assert back[:20] == [1] * 20 and back[-1] == 2


def test_a_busy_engine_reads_the_last_period_only_after_an_idle_window():
    # idle beside a busy process for a while (one thread), then a request: the engine runs its one
    # thread flat out and the other core turns idle: two threads at once, not after a window
    counts = run(ThreadBudget(2), [(1.0, 0.0)] * 20 + [(1.0, 1.0)])
    assert counts[19] == 1 and counts[20] == 2


def test_hysteresis_keeps_the_count_between_the_margins():
    # 1.65 cores keep two threads but do not bring back a second one: no flapping around the boundary
    assert run(ThreadBudget(2), [(0.2, 1.45)]) == [2]
    assert run(ThreadBudget(2), [(0.0, 1.3), (0.55, 1.0), (0.55, 1.0)]) == [1, 1, 1]
    assert run(ThreadBudget(2), [(0.0, 1.3), (0.65, 1.0)]) == [1, 2]


def test_the_rule_is_in_cores_so_a_16_core_engine_gives_up_only_what_is_taken():
    budget = ThreadBudget(16)
    # one busy process: 15 free; two: 14; then both gone
    assert run(budget, [(0.0, 15.1), (0.0, 14.2), (0.0, 14.0), (2.0, 14.0)]) == [15, 14, 14, 16]


def test_never_below_one_thread_nor_above_the_maximum():
    assert run(ThreadBudget(2), [(0.0, 0.1), (0.0, 0.0)]) == [1, 1]
    assert run(ThreadBudget(4), [(8.0, 0.0)]) == [4]
    with pytest.raises(ValueError):
        ThreadBudget(0)


def test_observe_reports_only_changes():
    budget = ThreadBudget(2)
    assert budget.observe(0.0, CpuSample(0.0, 0.0)) is None  # the first sample has nothing to compare with
    assert budget.observe(0.25, CpuSample(0.0, 0.3)) == 1
    assert budget.available == pytest.approx(1.2)
    assert budget.observe(0.5, CpuSample(0.0, 0.55)) is None
    assert budget.observe(0.5, CpuSample(0.5, 0.55)) is None  # no time passed: ignored


def test_cpu_samples_read_only_the_engines_cpus_and_this_process(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 1000 20 0 0 0 0 0\n"
                    "cpu0 50 0 25 400 10 0 0 0 0 0\n"
                    "cpu1 50 0 25 600 10 0 0 0 0 0\n"
                    "intr 12345\n")
    self_stat = tmp_path / "self"
    # the process name holds spaces and a parenthesis; utime and stime are fields 14 and 15
    self_stat.write_text("42 (python stub) x) S 1 42 42 0 -1 4194304 100 0 0 0 300 200 0 0 20 0 9 0 1\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert read_cpu_sample(frozenset({1}), str(stat), str(self_stat)) == CpuSample(610 / ticks, 500 / ticks)
    assert read_cpu_sample(frozenset({0, 1}), str(stat), str(self_stat)).idle_s == pytest.approx(1020 / ticks)


def test_cpu_samples_of_this_machine_move_with_this_process():
    cpus = engine_cpus()
    assert cpus and all(isinstance(c, int) for c in cpus)
    before = read_cpu_sample(cpus)
    x = 0
    for i in range(3_000_000):  # ~0.2 s of CPU
        x += i
    after = read_cpu_sample(cpus)
    assert after.ours_s > before.ours_s
    assert after.idle_s >= before.idle_s


def test_cgroup_quota_caps_the_cores(tmp_path):
    v2, v1 = tmp_path / "v2", tmp_path / "cpu"
    v2.mkdir(), v1.mkdir()
    dirs = CgroupDirs(v2=str(v2), cpu=str(v1), cpuacct=str(tmp_path / "cpuacct"))
    assert cgroup_cpu_limit(dirs) is None  # neither v2 nor v1 files
    (v1 / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(dirs) == 2.5  # cgroup v1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(dirs) is None
    (v1 / "cpu.cfs_quota_us").write_text("garbage\n")
    assert cgroup_cpu_limit(dirs) is None
    (v2 / "cpu.max").write_text("150000 100000\n")  # v2 first
    assert cgroup_cpu_limit(dirs) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(dirs) is None


def test_own_cgroup_dirs_follow_proc_self_cgroup_and_fall_back_to_the_mount_root(tmp_path):
    root = tmp_path / "fs"
    (root / "cpu" / "slice" / "svc").mkdir(parents=True)
    (root / "cpuacct" / "slice" / "svc").mkdir(parents=True)
    (root / "app").mkdir(parents=True)
    table = tmp_path / "cgroup"
    table.write_text("9:name=systemd:/\n4:cpu:/slice/svc\n3:cpuacct:/slice/svc\n2:memory:/x\n0::/app\n")
    dirs = own_cgroup_dirs(str(table), str(root))
    assert dirs == CgroupDirs(v2=f"{root}/app", cpu=f"{root}/cpu/slice/svc", cpuacct=f"{root}/cpuacct/slice/svc")
    # a container without a cgroup namespace sees the host's path, not mounted inside: the mount's root
    table.write_text("4:cpu,cpuacct:/docker/0123abcd\n0::/docker/0123abcd\n")
    dirs = own_cgroup_dirs(str(table), str(root))
    assert dirs == CgroupDirs(v2=str(root), cpu=f"{root}/cpu", cpuacct=f"{root}/cpuacct")
    assert own_cgroup_dirs(str(tmp_path / "absent"), str(root)).cpu == f"{root}/cpu"


def test_a_process_in_a_cgroup_with_a_quota_sees_the_quota_and_its_cpu_time(tmp_path):
    """For real, on this machine's cgroup v1 (or v2) hierarchy: a child process moved into a
    new cgroup with a 1.5-core quota reads that quota, caps its cores to 1, and sees the
    cgroup's CPU time grow with its own work."""
    name = f"electron-test-{os.getpid()}"
    v1 = os.path.isdir("/sys/fs/cgroup/cpu") and os.path.isdir("/sys/fs/cgroup/cpuacct")
    made = [f"/sys/fs/cgroup/cpu/{name}", f"/sys/fs/cgroup/cpuacct/{name}"] if v1 else [f"/sys/fs/cgroup/{name}"]
    try:
        for d in made:
            os.mkdir(d)
    except OSError as exc:  # a machine (an unprivileged container) that forbids new cgroups: its own is read
        assert exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT), exc
        for d in made:
            if os.path.isdir(d):
                os.rmdir(d)
        limit = cgroup_cpu_limit()
        assert limit is None or limit > 0
        return
    try:
        if v1:
            Path(made[0], "cpu.cfs_quota_us").write_text("150000")
            Path(made[0], "cpu.cfs_period_us").write_text("100000")
        else:
            Path(made[0], "cpu.max").write_text("150000 100000")
        code = ("import os, sys, time\n"
                "for d in sys.argv[1:]: open(os.path.join(d, 'cgroup.procs'), 'w').write(str(os.getpid()))\n"
                "from llama_engine.thread_budget import cgroup_cpu_limit, cgroup_usage_path, cgroup_cpu_usage_s,"
                " usable_cores\n"
                "path = cgroup_usage_path(); before = cgroup_cpu_usage_s(path)\n"
                "start = time.process_time()\n"
                "while time.process_time() - start < 0.2: pass\n"
                "print(cgroup_cpu_limit(), usable_cores(), path, cgroup_cpu_usage_s(path) - before)\n")
        engine_dir = Path(__file__).resolve().parents[3] / "model_repository" / "electron_cpu" / "1"
        done = subprocess.run([sys.executable, "-c", code, *made], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(engine_dir)})
        assert done.returncode == 0, done.stderr
        limit, cores, path, used = done.stdout.split()
        assert float(limit) == 1.5 and int(cores) == 1
        assert name in path and float(used) > 0.15  # the child burnt 0.2 s of its own CPU time in the group
    finally:
        for d in made:
            for _ in range(50):  # the child has exited; the kernel frees the group a moment later
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)


def test_the_watch_applies_samples_from_its_thread_and_stops():
    samples = iter([CpuSample(0.0, 0.0)] + [CpuSample(0.0, 0.01 * i) for i in range(1, 1000)])
    watch = ThreadBudgetWatch(ThreadBudget(2), period_s=0.01, read=lambda: next(samples))
    watch.start()
    try:
        import time
        deadline = time.monotonic() + 5
        while watch.threads != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.threads == 1  # ~1 core of ours and nothing idle: one thread
    finally:
        watch.stop()
    assert not watch._thread.is_alive()


def test_without_readable_cpu_times_the_count_stays_fixed():
    def unreadable():
        raise OSError("no /proc here")

    watch = ThreadBudgetWatch(ThreadBudget(2), period_s=0.01, read=unreadable)
    watch.start()
    watch.stop()
    assert watch.threads == 2 and not watch._thread.is_alive()


def run_in_container(budget: ThreadBudget, periods: list[tuple[float, float, float]], period_s: float = 0.25):
    """Feed periods of (host cores idle, cores we used, cores the container's other processes used)."""
    now, idle, ours, group = 0.0, 0.0, 0.0, 0.0
    budget.observe(now, CpuSample(idle, ours, group))
    counts = []
    for idle_cores, our_cores, other_cores in periods:
        now += period_s
        idle += idle_cores * period_s
        ours += our_cores * period_s
        group += (our_cores + other_cores) * period_s
        budget.observe(now, CpuSample(idle, ours, group))
        counts.append(budget.threads)
    return counts


def test_in_a_container_with_a_quota_the_containers_other_processes_count_and_idle_host_cores_do_not():
    # `docker --cpus 2` on an 8-core host: 6 host cores idle all along. The gateway beside the
    # engine in the same container takes 0.7 of the 2 cores: one thread; it goes quiet: two again.
    periods = [(6.0, 1.9, 0.05), (6.0, 1.3, 0.7), (6.0, 1.0, 0.7), (6.0, 1.0, 0.0), (6.0, 2.0, 0.0)]
    assert run_in_container(ThreadBudget(2, quota_cores=2.0), periods) == [2, 1, 1, 2, 2]
    # without the quota the host's idle cores hide the contention
    assert run_in_container(ThreadBudget(2), periods) == [2, 2, 2, 2, 2]
    # a sample without the cgroup's time (unreadable) falls back to the idle time
    budget = ThreadBudget(2, quota_cores=2.0)
    budget.observe(0.0, CpuSample(0.0, 0.0))
    budget.observe(0.25, CpuSample(1.5, 0.3))
    assert budget.threads == 2 and budget.available == pytest.approx(7.2)


def test_cgroup_cpu_usage_is_read_from_cpu_stat(tmp_path):
    stat = tmp_path / "cpu.stat"
    stat.write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_throttled 3\n")
    assert cgroup_cpu_usage_s(str(stat)) == 2.5
    proc_stat, self_stat = tmp_path / "stat", tmp_path / "self"
    proc_stat.write_text("cpu  1 0 1 10 0 0 0 0 0 0\ncpu0 1 0 1 10 0 0 0 0 0 0\n")
    self_stat.write_text("7 (x) S 1 7 7 0 -1 0 0 0 0 0 3 2 0 0 20 0 1 0 1\n")
    assert read_cpu_sample(frozenset({0}), str(proc_stat), str(self_stat), str(stat)).group_s == 2.5
    assert read_cpu_sample(frozenset({0}), str(proc_stat), str(self_stat)).group_s is None
    stat.write_text("user_usec 1\n")
    with pytest.raises(ValueError):
        cgroup_cpu_usage_s(str(stat))
    v1 = tmp_path / "cpuacct.usage"  # cgroup v1: nanoseconds
    v1.write_text("1500000000\n")
    assert cgroup_cpu_usage_s(str(v1)) == 1.5


def test_this_machines_cgroup_cpu_time_moves_with_this_process():
    path = cgroup_usage_path()
    if path is None:  # not a failure of ours: the machine exposes no cgroup CPU accounting
        assert not any(os.path.exists(p) for p in ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpuacct/cpuacct.usage"))
        return
    before = cgroup_cpu_usage_s(path)
    x = 0
    for i in range(3_000_000):
        x += i
    assert cgroup_cpu_usage_s(path) > before
