"""Capacity benchmark: paced calls per machine at the voice SLO, electron beside llama-server.

At rising numbers of calls N (``--calls``, default 16 24 32 40 48 64), paced calls
(a ~600-token shared system prompt, ``--turns`` turns, replies capped at
``--reply-tokens``, callers listening at 15 characters/s then speaking 1.5 s,
calls starting ``--stagger`` s apart) run against each server in alternation.
Per N and server: TTFT p50/p95/p99, playback stalls (p95, share of turns over
100 ms), refusals. Capacity is the largest N up to which every measured N has
TTFT p95 <= 300 ms and at most 1% of turns stalling, refused or failed
(``voice_load/capacity.py``; a miss at a smaller N caps it there). A
server that misses the SLO at ``--stop-after`` consecutive N is not run at
larger N. Writes ``perf/results/<date>-capacity-<host>/``: capacity.json,
capacity.md (the headline first) and capacity.png.

    .venv/bin/python -m perf capacity                       # both servers, ~30 minutes
    .venv/bin/python -m perf capacity --servers electron --calls 32 48
    .venv/bin/python -m perf capacity --url http://gpu-host:8000/v1 --calls 64 128 256
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import uuid
from pathlib import Path

from perf import RESULTS
from perf.report import Report
from perf.results_dir import result_dir, run_meta, write_results
from perf.voice_bench import start_servers
from perf.voice_load import plots
from perf.voice_load.calls import CallPlan, run_calls, system_prompt, warm
from perf.voice_load.capacity import OTHER_BOUNDS_MS, Slo, capacity, judge, sections


async def measure(endpoints: dict[str, str], plan: CallPlan, counts: list[int], slo: Slo,
                  stop_after: int) -> dict[str, dict[int, dict]]:
    """Every N against every endpoint still in the race, alternating endpoints at each N."""
    points: dict[str, dict[int, dict]] = {server: {} for server in endpoints}
    misses = {server: 0 for server in endpoints}
    for n in counts:
        system = system_prompt(plan.system_words, salt=uuid.uuid4().hex[:8])  # the same for every server
        for server, url in endpoints.items():
            if misses[server] >= stop_after:
                continue
            await warm(url, plan, system)
            records, wall = await run_calls(url, dataclasses.replace(plan, calls=n), system)
            figures = judge(records, slo)
            figures["wall_s"] = wall
            points[server][n] = figures
            misses[server] = 0 if figures["meets_slo"] else misses[server] + 1
            t, later = figures["ttft_ms"], figures["later_ttft_ms"]
            print(f"{server:>12} x{n:<3} TTFT p50/p95 {t['p50'] or 0:6.0f} / {t['p95'] or 0:6.0f} ms "
                  f"(later turns {later['p50'] or 0:.0f} / {later['p95'] or 0:.0f}), "
                  f"stalled {figures['stalled_share']:.1%}, refused {figures['refused']}, failed {figures['failed']}"
                  f" -> {'meets' if figures['meets_slo'] else 'misses'} the SLO", flush=True)
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[16, 24, 32, 40, 48, 64])
    parser.add_argument("--servers", nargs="+", default=["electron", "llama-server"],
                        choices=["electron", "llama-server"])
    parser.add_argument("--url", help="measure this one OpenAI-compatible base URL instead of starting servers")
    parser.add_argument("--model", default="electron")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between call starts")
    parser.add_argument("--system-words", type=int, default=450, help="about 600 tokens")
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--chars-per-s", type=float, default=15.0, help="the callers' text-to-speech pace")
    parser.add_argument("--stop-after", type=int, default=2, help="consecutive misses before a server stops")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    counts = sorted(set(args.calls))
    plan = CallPlan(turns=args.turns, system_words=args.system_words, reply_tokens=args.reply_tokens,
                    pacing="paced", stagger_s=args.stagger, tts_chars_per_s=args.chars_per_s, model=args.model)
    slo = Slo(chars_per_s=args.chars_per_s)
    meta = run_meta(servers=args.url or " vs ".join(args.servers), plan=dataclasses.asdict(plan), slo=dataclasses.asdict(slo))
    out = result_dir(args.out, "capacity", meta)
    (out / "raw").mkdir(parents=True, exist_ok=True)  # server logs; not committed
    servers = [] if args.url else start_servers(args.servers, max(counts), out / "raw")
    endpoints = {"endpoint": args.url} if args.url else {s.name: s.base_url for s in servers}
    meta.update({f"{s.name}_repack": s.repack for s in servers if hasattr(s, "repack")})
    try:
        points = asyncio.run(measure(endpoints, plan, counts, slo, args.stop_after))
    finally:
        for server in servers:
            server.stop()
    title = f"Capacity - {meta['date']} on {meta['machine']} ({meta['servers']})"
    if meta.get("llama-server_repack") is False:
        title += "\n\nllama-server ran with --no-repack: with llama.cpp's extra buffer types it crashed on this CPU."
    payload = {"points": {s: {str(n): f for n, f in p.items()} for s, p in points.items()},
               "capacity": {s: capacity(p) for s, p in points.items()},
               "capacity_at": {s: {str(b): capacity(p, b, slo.max_failed_share) for b in OTHER_BOUNDS_MS}
                               for s, p in points.items()}}
    write_results(args.out, Report("capacity", meta, payload, sections(points, slo, title)))
    plots.capacity(points, slo, out / "capacity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
