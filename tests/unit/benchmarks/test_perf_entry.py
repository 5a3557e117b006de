"""``python -m perf NAME`` runs every benchmark, and the suite runs them all."""

import subprocess
import sys

from tests.paths import ROOT
from perf import suite
from perf.__main__ import BENCHMARKS


def test_every_benchmark_script_has_a_name():
    scripts = {p.name for p in (ROOT / "perf").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()}
    assert scripts - {"__main__.py"} == {script for script, _ in BENCHMARKS.values()}
    assert all((ROOT / "perf" / script).is_file() for script, _ in BENCHMARKS.values())


def test_the_suite_runs_every_benchmark_in_both_modes():
    for mode in ("quick", "full"):
        names = [step.command[3] for step in suite.steps(mode)]
        assert all(step.command[1:3] == ["-m", "perf"] for step in suite.steps(mode))
        assert sorted(names) == sorted(set(BENCHMARKS) - {"suite"}), mode


def test_the_entry_point_lists_the_benchmarks_and_refuses_an_unknown_one():
    listed = subprocess.run([sys.executable, "-m", "perf"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and all(f"  {name} " in listed.stdout for name in BENCHMARKS)
    unknown = subprocess.run([sys.executable, "-m", "perf", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown benchmark 'nope'" in unknown.stderr
    relay = subprocess.run([sys.executable, "-m", "perf", "relay", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert relay.returncode == 0 and relay.stdout.startswith("usage: bench_relay.py")
