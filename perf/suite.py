"""The whole benchmark suite in one command: every benchmark of ``python -m perf``
(capacity, voice calls, relay, gateway overhead, engine through Triton, guided decoding,
accounts, contention, cancel latency, engine against llama.cpp, llama.cpp alone, soak).

    .venv/bin/python -m perf suite --mode quick    # ~45 minutes on 2 cores
    .venv/bin/python -m perf suite --mode full     # several hours

Each step is one of the benchmarks in perf/, run as its own process (they start and
stop their own servers); their results go to perf/results/<date>-<kind>-<host>/ as
usual. This command adds perf/results/<date>-suite-<host>/suite.md: every step, its
command, exit code, duration and result directory. A failing step is reported and
the suite goes on; the exit code is non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from perf import RESULTS, ROOT
from perf.report import Column, Report, Table
from perf.results_dir import result_dir, run_meta, write_results

PYTHON = sys.executable
TRITON_URL = "127.0.0.1:8001"


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    results: str  # result directory kind: perf/results/<date>-<kind>-<host>/


def _perf(name: str, *options: str) -> list[str]:
    return [PYTHON, "-m", "perf", name, *options]


def steps(mode: str) -> list[Step]:
    """Every benchmark of ``python -m perf`` but the suite itself, the headline first."""
    quick = mode == "quick"
    return [
        Step("capacity: paced calls at the voice SLO, electron and llama-server",
             _perf("capacity", *(["--calls", "1", "4", "8", "--stop-after", "1"] if quick else [])), "capacity"),
        Step("a later turn's time to first token, layer by layer, beside llama-server",
             _perf("ttft", *(["--turns", "4"] if quick else [])), "ttft"),
        Step("voice calls, electron vs llama-server", _perf("voice", "--mode", mode), "voice"),
        Step("token relay: the gateway's CPU per token",
             _perf("relay", *(["--streams", "64", "--tokens-per-s", "100"] if quick else [])), "relay"),
        Step("gateway overhead over direct gRPC", _perf("gateway", "--rounds", "8" if quick else "30"), "gateway"),
        Step("engine through Triton gRPC, then perf_analyzer --streaming",
             _perf("triton", "--rounds", "1" if quick else "2",
                   "--concurrency", *(["1", "8"] if quick else ["1", "4", "8"]), "--perf-analyzer"), "triton"),
        Step("guided decoding cost (JSON schema) at 1 and 8 streams",
             _perf("guided", "--rounds", "2" if quick else "3"), "guided"),
        Step("keys, limits and the usage ledger per request (embedded; Redis + PostgreSQL)",
             _perf("accounts", "--requests", "1000" if quick else "3000"), "accounts"),
        Step("busy processes beside the stack (0, 1, 2)",
             _perf("contention", "--replies", "4" if quick else "8", "--turns", "2" if quick else "3"), "contention"),
        Step("cancel latency", _perf("cancel-latency", "--reps", "4" if quick else "8"), "cancel-latency"),
        Step("engine steps next to llama.cpp's own benchmarks",
             _perf("engine-vs-llamacpp", *(["--quick"] if quick else [])), "engine-vs-llamacpp"),
        Step("llama.cpp alone, as the engine configures it", _perf("llama-raw"), "llama-raw"),
        Step("soak: nothing drifts or leaks", _perf("soak", "--minutes", "3" if quick else "30"), "soak"),
    ]


SUITE_COLUMNS = (Column("step", "step"), Column("command", "command", "`{}`"), Column("exit", "exit_code"),
                 Column("minutes", "minutes"), Column("results", "results"))


def run_step(step: Step, log_dir: Path) -> tuple[int, float, Path]:
    log_file = log_dir / f"{step.results}.log"
    started = time.monotonic()
    with log_file.open("w") as log:
        code = subprocess.call(step.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return code, time.monotonic() - started, log_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    meta = run_meta(mode=args.mode)
    log_dir = result_dir(args.out, "suite", meta) / "raw"  # raw/ is not committed
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    plan = steps(args.mode)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(f"benchmark suite ({args.mode})", total=len(plan))
        for step in plan:
            shown = " ".join(Path(c).name if c == PYTHON else c for c in step.command)
            progress.console.print(f"[bold]{step.name}[/]: {shown}")
            code, seconds, log_file = run_step(step, log_dir)
            results = sorted(args.out.glob(f"{meta['date']}-{step.results}-*"))
            rows.append({"step": step.name, "command": " ".join(step.command[1:]), "exit_code": code,
                         "minutes": round(seconds / 60, 1), "results": str(results[-1].relative_to(ROOT))
                         if results else "-", "log": str(log_file.relative_to(ROOT))})
            progress.console.print(f"  exit {code} after {seconds / 60:.1f} min; log {log_file.relative_to(ROOT)}")
            progress.advance(task)
    write_results(args.out, Report("suite", meta, {"steps": rows}, [
        f"Benchmark suite ({args.mode}) - {meta['date']} on {meta['machine']}", Table(SUITE_COLUMNS, rows)]))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
