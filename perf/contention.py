"""Contention benchmark: the stack beside busy processes that take CPU cores.

For each server variant (``--variant NAME[:ENV=VALUE,...]``: electron started
with those settings, e.g. ``fixed:ELECTRON_ADAPTIVE_THREADS=false``) and each
competition (``--busy``, default 0 1 2: that many ``python -c "while True: pass"``
processes; ``gateway:K``: the gateway itself kept busy by K connections sending
prompts too long for the context, which it parses, tokenizes and refuses,
``voice_load/gateway_burst.py``):

  single   one streamed reply at a time (``--replies``, 48 tokens with
           ``min_tokens`` 48, a ~40-token prompt): reply time, TTFT, largest
           gap between streamed tokens, playback stalls
  paced-8  8 paced voice calls (``voice_load``, ~600-token shared system prompt):
           TTFT p50/p95, inter-token gap p99, playback stall p95 and the share of
           turns with a stall over 100 ms

A stall is time a text-to-speech player speaking at 15 characters/s from the
first text would wait for text that has not arrived (``voice_load.playback``).
Writes ``perf/results/<date>-contention-<host>/``.

    .venv/bin/python -m perf contention --variant fixed:ELECTRON_ADAPTIVE_THREADS=false --variant adaptive \
        --busy 0 1 2 gateway:2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx2

from perf import RESULTS, ROOT
from perf.report import Column, Report, Table
from perf.results_dir import result_dir, run_meta, write_results
from perf.voice_load.calls import CallPlan, run_calls, system_prompt
from perf.voice_load.playback import longest_stall
from perf.voice_load.servers import ElectronServer
from perf.voice_load.sse_client import stream_chat
from perf.voice_load.stats import percentile

SINGLE_PROMPT = ("I am calling about my order from last week. It has not arrived yet and the tracking page has not "
                 "changed for four days. Can you tell me what is going on and when it will arrive?")


@contextmanager
def busy_processes(n: int):
    """``n`` processes that each keep one core busy, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)  # let the scheduler see them
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextmanager
def gateway_burst(base_url: str, concurrency: int, log_path: Path):
    """A client keeping the gateway itself busy (``voice_load/gateway_burst.py``:
    prompts too long for the context, tokenized then refused); its request count
    is appended to ``log_path``."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "perf.voice_load.gateway_burst", base_url, "--concurrency",
                                 str(concurrency)], cwd=ROOT, stdout=log, stderr=log)
        try:
            time.sleep(1.0)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=70)


def competition(spec: str, base_url: str, raw: Path):
    """``N``: N busy processes; ``gateway:K``: the gateway burst client with K connections."""
    if spec.startswith("gateway:"):
        return gateway_burst(base_url, int(spec.split(":", 1)[1]), raw / "gateway-burst.log")
    return busy_processes(int(spec))


def _ms(value) -> float | None:
    return None if value is None else value * 1000


async def single_replies(base_url: str, replies: int) -> dict:
    rows = []
    async with httpx2.AsyncClient(base_url=base_url, timeout=300) as http:
        await stream_chat(http, {"model": "electron", "max_tokens": 8,  # untimed: first-request costs
                                 "messages": [{"role": "user", "content": SINGLE_PROMPT}]})
        salt = uuid.uuid4().hex[:6]  # a prompt no earlier case has cached
        for i in range(replies):
            body = {"model": "electron", "max_tokens": 48, "min_tokens": 48, "temperature": 0.7, "seed": i,
                    "messages": [{"role": "system", "content": "You are a helpful phone agent."},
                                 {"role": "user", "content": f"({salt}-{i}) {SINGLE_PROMPT}"}]}
            r = await stream_chat(http, body)
            print(f"[contention]   reply {i}: {r.end_s:.2f} s, largest gap {max(r.itl_s, default=0) * 1e3:.0f} ms",
                  file=sys.stderr, flush=True)
            rows.append({"ok": r.ok, "reply_s": r.end_s, "ttft_ms": _ms(r.ttft_s),
                         "max_gap_ms": _ms(max(r.itl_s, default=0.0)), "stall_ms": _ms(longest_stall(r.text_deltas))})
    ok = [r for r in rows if r["ok"]]
    return {
        "errors": len(rows) - len(ok),
        "reply_s": {"p50": percentile([r["reply_s"] for r in ok], 50), "max": max(r["reply_s"] for r in ok)},
        "ttft_ms": {"p50": percentile([r["ttft_ms"] for r in ok], 50), "max": max(r["ttft_ms"] for r in ok)},
        "max_gap_ms": max(r["max_gap_ms"] for r in ok),
        "stall_ms": {"p95": percentile([r["stall_ms"] for r in ok], 95), "max": max(r["stall_ms"] for r in ok)},
        "replies": rows,
    }


async def paced_calls(base_url: str, calls: int, turns: int) -> dict:
    plan = CallPlan(calls=calls, turns=turns, pacing="paced")
    system = system_prompt(plan.system_words, salt=uuid.uuid4().hex[:8])
    async with httpx2.AsyncClient(base_url=base_url, timeout=300) as http:  # the shared prompt, seen once
        await stream_chat(http, {"model": "electron", "max_tokens": 1,
                                 "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi."}]})
    records, _ = await run_calls(base_url, plan, system)
    ok = [r.result for r in records if r.result.ok and not r.speculative]
    stalls = [longest_stall(r.text_deltas) * 1000 for r in ok]
    return {
        "errors": len(records) - len(ok),
        "ttft_ms": {"p50": percentile([_ms(r.ttft_s) for r in ok], 50),
                    "p95": percentile([_ms(r.ttft_s) for r in ok], 95)},
        "itl_p99_ms": percentile([gap * 1000 for r in ok for gap in r.itl_s], 99),
        "stall_ms": {"p95": percentile(stalls, 95), "max": max(stalls, default=0.0)},
        "stalled_share": sum(s > 100 for s in stalls) / len(stalls) if stalls else 0.0,
    }


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, settings = spec.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, env


@contextmanager
def electron(env: dict[str, str], log_path: Path):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        server = ElectronServer(log_path=log_path)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield server
    finally:
        server.stop()


SINGLE_COLUMNS = (
    Column("variant", "variant"),
    Column("busy", "busy"),
    Column("reply p50 / max (s)", ("single.reply_s.p50", "single.reply_s.max"), "{:.2f} / {:.2f}"),
    Column("TTFT p50 / max (ms)", ("single.ttft_ms.p50", "single.ttft_ms.max"), "{:.0f} / {:.0f}"),
    Column("largest token gap (ms)", "single.max_gap_ms", "{:.0f}"),
    Column("stall p95 / max (ms)", ("single.stall_ms.p95", "single.stall_ms.max"), "{:.0f} / {:.0f}"),
    Column("errors", "single.errors"),
)
PACED_COLUMNS = (
    Column("variant", "variant"),
    Column("busy", "busy"),
    Column("calls", "calls"),
    Column("TTFT p50 / p95 (ms)", ("paced.ttft_ms.p50", "paced.ttft_ms.p95"), "{:.0f} / {:.0f}"),
    Column("token gap p99 (ms)", "paced.itl_p99_ms", "{:.0f}"),
    Column("stall p95 / max (ms)", ("paced.stall_ms.p95", "paced.stall_ms.max"), "{:.0f} / {:.0f}"),
    Column("turns stalled > 100 ms", "paced.stalled_share", "{:.0%}"),
    Column("errors", "paced.errors"),
)


def report(rows: list[dict], meta: dict) -> Report:
    return Report("contention", meta, {"rows": rows}, [
        f"Contention - {meta['date']} on {meta['machine']}, {os.cpu_count()} cores",
        "Single reply (48 tokens, one at a time):",
        Table(SINGLE_COLUMNS, [r for r in rows if "single" in r]),
        "Paced calls:",
        Table(PACED_COLUMNS, [r for r in rows if "paced" in r])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME[:ENV=VALUE,...] (repeatable; default: one variant with the current settings)")
    parser.add_argument("--busy", nargs="+", default=["0", "1", "2"],
                        help="competition per case: N busy processes, or gateway:K (the gateway kept busy by K "
                             "connections of over-long prompts it tokenizes and refuses)")
    parser.add_argument("--replies", type=int, default=12)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=["single", "paced"], default=["single", "paced"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["current"])]
    meta = run_meta(variants={name: env for name, env in variants}, busy=args.busy, replies=args.replies,
                    calls=args.calls, turns=args.turns)
    raw = result_dir(args.out, "contention", meta) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, env in variants:
        with electron(env, raw / f"electron-{name}.log") as server:
            for busy in args.busy:
                row = {"variant": name, "busy": busy, "calls": args.calls}
                with competition(busy, server.base_url, raw):
                    if "single" in args.cases:
                        print(f"[contention] {name}: {busy} busy, single replies", file=sys.stderr, flush=True)
                        row["single"] = asyncio.run(single_replies(server.base_url, args.replies))
                    if "paced" in args.cases:
                        print(f"[contention] {name}: {busy} busy, {args.calls} paced calls", file=sys.stderr,
                              flush=True)
                        row["paced"] = asyncio.run(paced_calls(server.base_url, args.calls, args.turns))
                rows.append(row)
    write_results(args.out, report(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
