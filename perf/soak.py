"""Soak: paced voice calls for a long time, checking that nothing drifts or leaks.

    .venv/bin/python -m perf soak --minutes 30 --calls 8

``--calls`` paced calls (default 8; meant to be about 70% of the machine's
capacity: on this 2-core VM, 16 paced calls already gave TTFT p95 ~600 ms in
the voice benchmark, and 22 were an overload: see docs/benchmarks.md) run wave after
wave against ``electron-serve`` (its own Triton, its own data directory) for
``--minutes``: each call has up to 6 turns of ~600-token shared system prompt
and 48-token replies; 20% of turns first send a speculative request that is
abandoned after 3 deltas (an interim transcript), and 10% of
callers hang up mid-reply. Every ``--sample-s`` seconds: RSS of the gateway,
of tritonserver and of the python backend stub, and the engine's KV cells in
use. Reported per minute: turns, TTFT p50/p95, errors; and over the run: the
memory slope (MB per hour, least squares), TTFT p95 of the first and last
minutes. At the end the gateway is stopped (SIGTERM: drained, rows written)
and the ledger checked: every admitted request has exactly one usage row,
with the tokens the client saw for completed replies.

Pass: no errors, every admitted request exactly one right row. Memory slope
and TTFT drift are reported (judge them over a long run, not 2 minutes).
Writes ``perf/results/<date>-soak-<host>/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from perf import RESULTS
from perf.procfs import children, cmdline, rss_mb
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results
from perf.voice_load.calls import CallPlan, run_calls, system_prompt, warm
from perf.voice_load.servers import ElectronServer
from perf.voice_load.stats import percentile


def stack_pids(gateway_pid: int) -> dict[str, int | None]:
    """The gateway (electron-serve), its tritonserver and the python backend stub (a child of Triton)."""
    triton = next((p for p in children(gateway_pid) if "tritonserver" in cmdline(p)), None)
    stub = None
    if triton is not None:
        stub = next((p for p in children(triton) if "triton_python_backend_stub" in cmdline(p)), None)
    return {"gateway": gateway_pid, "tritonserver": triton, "stub": stub}


def kv_cells(metrics_port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("electron_engine_kv_cells_used"):
            return float(line.rsplit(" ", 1)[1])
    return None


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) in MB per hour."""
    points = [(t, v) for t, v in points if v is not None]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


async def soak(server: ElectronServer, plan: CallPlan, minutes: float, sample_s: float, metrics_port: int):
    started = time.monotonic()
    deadline = started + minutes * 60
    records, samples = [], []
    stop = asyncio.Event()

    async def sampler() -> None:
        pids = stack_pids(server.process.pid)
        while not stop.is_set():
            if pids["stub"] is None:
                pids = stack_pids(server.process.pid)
            samples.append({"t": time.monotonic() - started, **{k: rss_mb(v) for k, v in pids.items()},
                            "kv_cells": kv_cells(metrics_port)})
            try:
                await asyncio.wait_for(stop.wait(), sample_s)
            except asyncio.TimeoutError:
                pass

    sampling = asyncio.create_task(sampler())
    await warm(server.base_url, plan, system_prompt(plan.system_words))  # deployed agents' prompts are cached
    wave = 0
    while time.monotonic() < deadline:
        wave_records, _ = await run_calls(server.base_url, replace(plan, seed=wave), system_prompt(plan.system_words))
        for record in wave_records:
            record.result.wave_end_s = time.monotonic() - started  # noqa: B010
        records += wave_records
        wave += 1
    stop.set()
    await sampling
    return records, samples, time.monotonic() - started


def per_minute(records) -> list[dict]:
    rows = {}
    first = min((record.result.started for record in records), default=0.0)
    for record in records:
        r = record.result
        minute = int((r.started - first) // 60)
        row = rows.setdefault(minute, {"minute": minute, "turns": 0, "errors": 0, "ttft": []})
        if record.speculative:
            continue
        row["turns"] += 1
        if not r.ok and r.status != 503:  # a refusal for overload is load shedding, counted apart
            row["errors"] += 1
        elif r.ttft_s is not None:
            row["ttft"].append(r.ttft_s * 1000)
    out = []
    for minute in sorted(rows):
        row = rows[minute]
        out.append({"minute": minute, "turns": row["turns"], "errors": row["errors"],
                    "ttft_p50_ms": percentile(row["ttft"], 50), "ttft_p95_ms": percentile(row["ttft"], 95)})
    return out


async def ledger_rows(data_dir: Path) -> list[dict]:
    from gateway.accounts.store import AccountStore

    store = await AccountStore.open(f"sqlite+aiosqlite:///{data_dir / 'electron.db'}")
    try:
        return await store.usage_rows()
    finally:
        await store.close()


CUT_STATUSES = ("cancelled", "stop", "length")  # a hung-up reply's row: cut, or finished first


def check_ledger(records, rows) -> dict:
    """Every admitted request (the server answered 200 and gave an id) has exactly one row; a
    completed reply's row has the tokens the client saw; a cut one at least what it received."""
    by_id = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
    admitted = [rec.result for rec in records if rec.result.status == 200 and rec.result.request_id]
    refused = [rec.result for rec in records if rec.result.status == 503 and rec.result.request_id]
    missing = [r.request_id for r in admitted + refused if r.request_id not in by_id]
    duplicated = [rid for rid, found in by_id.items() if len(found) > 1]
    wrong = [(r.request_id, by_id[r.request_id][0]["status"]) for r in refused if r.request_id in by_id
             and (by_id[r.request_id][0]["status"], by_id[r.request_id][0]["cost_pico"]) != ("overloaded", 0)]
    for r in admitted:
        found = by_id.get(r.request_id)
        if not found:
            continue
        row = found[0]
        if r.cancelled:
            # The caller hung up after its last wanted delta; the reply may have finished on the
            # server before the hang-up reached it (then the row has its finish reason). Either way
            # the row bills at least every delta the caller received (a delta carries >= 1 token).
            if row["status"] not in CUT_STATUSES or row["completion_tokens"] < len(r.itl_s) + 1:
                wrong.append((r.request_id, row["status"], row["completion_tokens"], len(r.itl_s) + 1))
        elif (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) != (
                r.prompt_tokens, r.cached_tokens, r.completion_tokens):
            wrong.append((r.request_id, row["status"], row["completion_tokens"], r.completion_tokens))
    return {"admitted": len(admitted), "refused": len(refused), "rows": len(rows), "missing": len(missing),
            "duplicated": len(duplicated),
            "wrong": len(wrong), "examples": (missing[:3], duplicated[:3], wrong[:3]),
            "extra_rows": len(set(by_id) - {r.request_id for r in admitted + refused})}


MINUTE_COLUMNS = (
    Column("minute", "minute"),
    Column("turns", "turns"),
    Column("errors", "errors"),
    Column("TTFT p50 (ms)", lambda m: m["ttft_p50_ms"] or 0, "{:.0f}"),
    Column("TTFT p95 (ms)", lambda m: m["ttft_p95_ms"] or 0, "{:.0f}"),
)
MEMORY_COLUMNS = (
    Column("process", "process"),
    Column("RSS first (MB)", lambda m: m["first"] or 0, "{:.0f}"),
    Column("RSS last (MB)", lambda m: m["last"] or 0, "{:.0f}"),
    Column("slope (MB/hour)", "slope", "{:+.1f}"),
)


def report(meta: dict, records, samples: list[dict], wall: float, ledger: dict, code: int) -> Report:
    """The run's figures per minute and per process, the ledger check and the verdict (``data["verdict"]``):
    no errors, a clean gateway exit, every admitted request exactly one right row."""
    minutes = per_minute(records)
    turns = [r for r in records if not r.speculative]
    errors = [r.result.error or r.result.status for r in turns if not r.result.ok and r.result.status != 503]
    refused = sum(1 for r in turns if r.result.status == 503)
    slopes = {name: slope_per_hour([(s["t"], s[name]) for s in samples]) for name in ("gateway", "tritonserver", "stub")}
    verdict = not errors and code == 0 and not (ledger["missing"] or ledger["duplicated"] or ledger["wrong"])
    first, last = samples[0] if samples else {}, samples[-1] if samples else {}
    memory = [{"process": name, "first": first.get(name), "last": last.get(name), "slope": slopes[name]}
              for name in slopes]
    kv = [s["kv_cells"] for s in samples if s["kv_cells"] is not None]
    return Report("soak", meta, {
        "per_minute": minutes, "samples": samples, "slopes_mb_per_hour": slopes, "ledger": ledger,
        "errors": len(errors), "refused": refused, "exit_code": code, "verdict": verdict}, [
        f"Soak - {meta['date']} on {meta['machine']}: {meta['calls']} paced calls for {meta['minutes']:g} min "
        f"({wall / 60:.1f} min, {len(turns)} turns, {sum(r.speculative for r in records)} speculative, "
        f"{sum(r.result.cancelled and not r.speculative for r in records)} hung up mid-reply)",
        Table(MINUTE_COLUMNS, minutes),
        Table(MEMORY_COLUMNS, memory),
        "\n".join([
            f"KV cells in use: first {kv[0] if kv else '-'}, max {max(kv) if kv else '-'}, last {kv[-1] if kv else '-'}",
            f"Refused for overload (503, not errors: load shedding): {refused}",
            f"Ledger: {ledger['admitted']} admitted requests and {ledger['refused']} refused, {ledger['rows']} rows; "
            f"missing {ledger['missing']}, duplicated {ledger['duplicated']}, wrong tokens {ledger['wrong']}"
            + (f" (examples of missing, duplicated, wrong: {json.dumps(ledger['examples'])})"
               if ledger["missing"] or ledger["duplicated"] or ledger["wrong"] else ""),
            f"Errors: {len(errors)}{' ' + json.dumps(errors[:3]) if errors else ''}; gateway exit code {code}",
            f"Verdict: {'PASS' if verdict else 'FAIL'}"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = CallPlan(calls=args.calls, turns=6, stagger_s=0.5, speculative_fraction=0.2, hangup_fraction=0.1)
    meta = run_meta(minutes=args.minutes, calls=args.calls, plan=plan.__dict__)
    data_dir = Path(tempfile.mkdtemp(prefix="electron-soak-"))
    server = ElectronServer(args.port, log_path=data_dir / "serve.log", env={"ELECTRON_DATA_DIR": str(data_dir)})
    try:
        records, samples, wall = asyncio.run(soak(server, plan, args.minutes, args.sample_s, args.port + 2))
    finally:
        code = server.stop()
    rows = asyncio.run(ledger_rows(data_dir))
    done = report(meta, records, samples, wall, check_ledger(records, rows), code)
    write_results(args.out, done)
    return 0 if done.data["verdict"] else 1


if __name__ == "__main__":
    sys.exit(main())
