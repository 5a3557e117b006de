"""The engine's llama.cpp thread count follows the cores other processes leave free."""

import os

import pytest

from llama_engine.thread_budget import (CpuSample, ThreadBudget, ThreadBudgetWatch, cgroup_cpu_limit,
                                        engine_cpus, read_cpu_sample)


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
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(limit)) == 1.5
    limit.write_text("max 100000\n")
    assert cgroup_cpu_limit(str(limit)) is None
    assert cgroup_cpu_limit(str(tmp_path / "absent")) is None


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
