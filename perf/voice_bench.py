"""Voice-call benchmark: electron side by side with llama.cpp's llama-server.

Scenarios (``name[:calls]``; ``--calls`` when no number is given):
  paced-warm   calls staggered ~1 s apart, paced like real calls (the caller listens
               to the reply, then speaks); the shared system prompt was seen once
  cold-burst   all calls start at the same instant with a never-seen system prompt
               (first turn only)
  closed       every next turn is sent at once (saturation)
  sweep        closed runs at 1, 2, 4, 8, 16, 32 calls

By default the suite starts both servers on this machine (electron with
``electron-serve``, llama-server built by ``perf/build_llama_tools.sh`` on the
same GGUF, same thread count, one slot per call) and runs every scenario
against both in alternation (A B A B, ``--rounds`` times). ``--url`` points the
same harness at any one OpenAI-compatible endpoint instead. Writes
``perf/results/<date>-voice-<host>/``: voice.json (all figures and TTFT
samples), voice.md, and PNG plots.

    .venv/bin/python -m perf voice --mode quick      # a few minutes
    .venv/bin/python -m perf voice --mode full
    .venv/bin/python -m perf voice --url http://gpu-host:8000/v1 --scenario paced-warm:16
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import uuid
from pathlib import Path

from rich.progress import Progress

from perf import RESULTS
from perf.report import Column, Report, Table
from perf.results_dir import result_dir, run_meta, write_results
from perf.voice_load import plots
from perf.voice_load.calls import CallPlan, run_calls, system_prompt, warm
from perf.voice_load.report import figures

MODES = {
    "quick": {"scenarios": ["paced-warm:8", "cold-burst:8", "closed:8"], "turns": 3, "rounds": 1},
    "full": {"scenarios": ["paced-warm:8", "paced-warm:16", "cold-burst:8", "closed:8", "sweep"], "turns": 6,
             "rounds": 2},
}
SWEEP = [1, 2, 4, 8, 16, 32]


def plans(specs: list[str], base: CallPlan) -> list[tuple[str, CallPlan]]:
    out = []
    for spec in specs:
        name, _, calls = spec.partition(":")
        plan = dataclasses.replace(base, calls=int(calls)) if calls else base
        if name == "paced-warm":
            out.append((name, dataclasses.replace(plan, pacing="paced")))
        elif name == "cold-burst":
            out.append((name, dataclasses.replace(plan, pacing="closed", turns=1)))
        elif name == "closed":
            out.append((name, dataclasses.replace(plan, pacing="closed")))
        elif name == "sweep":
            out += [(name, dataclasses.replace(plan, pacing="closed", calls=n)) for n in SWEEP]
        else:
            raise SystemExit(f"unknown scenario {name!r}")
    return out


async def run(endpoints: dict[str, str], scenario_plans, rounds: int) -> list[dict]:
    """Every scenario against every endpoint, alternating endpoints within each round."""
    rows = []
    with Progress() as progress:
        for name, plan in scenario_plans:
            merged = {server: ([], 0.0) for server in endpoints}
            for _ in range(rounds):
                system = system_prompt(plan.system_words, salt=uuid.uuid4().hex[:8])  # same for A and B
                for server, url in endpoints.items():
                    if name == "paced-warm":
                        await warm(url, plan, system)
                    task = progress.add_task(f"{name} x{plan.calls} {server}", total=plan.calls * plan.turns)
                    records, wall = await run_calls(url, plan, system, on_turn=lambda t=task: progress.advance(t))
                    merged[server] = (merged[server][0] + records, merged[server][1] + wall)
            for server, (records, wall) in merged.items():
                ttft = [r.result.ttft_s * 1000 for r in records if r.result.ok and r.result.ttft_s is not None
                        and not r.speculative]
                rows.append({"scenario": name, "server": server, "plan": dataclasses.asdict(plan),
                             "figures": figures(records, wall), "samples": {"ttft_ms": ttft}})
    return rows


VOICE_COLUMNS = (
    Column("scenario", "scenario"),
    Column("calls", "plan.calls"),
    Column("turns", "plan.turns"),
    Column("server", "server"),
    Column("TTFT first turn p50 / p95 (ms)", ("figures.first_turn.ttft_ms.p50", "figures.first_turn.ttft_ms.p95"),
           "{:.0f} / {:.0f}"),
    Column("TTFT later turns p50 / p95 / p99 (ms)", ("figures.later_turns.ttft_ms.p50", "figures.later_turns.ttft_ms.p95",
                                                     "figures.later_turns.ttft_ms.p99"), "{:.0f} / {:.0f} / {:.0f}"),
    Column("decode tok/s p50 / min", ("figures.all.decode_tps.p50", "figures.all.decode_tps.min"), "{:.0f} / {:.0f}"),
    Column("output tok/s", "figures.output_tokens_per_s", "{:.1f}"),
    Column("cache ratio", "figures.cache_ratio", "{:.2f}"),
    Column("errors", "figures.errors"),
)
RATIO_COLUMNS = (
    Column("scenario", "scenario"),
    Column("calls", "calls"),
    Column("TTFT p50 ratio, first / later turns (electron ÷ llama-server)", ("first", "later"), "{:.2f} / {:.2f}"),
    Column("output tok/s ratio", "output_tokens_per_s", "{:.2f}"),
)


def _ratio(a, b) -> float | None:
    return None if not a or not b else a / b


def server_ratios(rows: list[dict]) -> list[dict]:
    """electron's figures over llama-server's, per scenario and number of calls both ran."""
    pairs = {}
    for row in rows:
        pairs.setdefault((row["scenario"], row["plan"]["calls"]), {})[row["server"]] = row["figures"]
    out = []
    for (scenario, calls), servers in pairs.items():
        if {"electron", "llama-server"} <= set(servers):
            e, ll = servers["electron"], servers["llama-server"]
            out.append({"scenario": scenario, "calls": calls,
                        "first": _ratio(e["first_turn"]["ttft_ms"]["p50"], ll["first_turn"]["ttft_ms"]["p50"]),
                        "later": _ratio(e["later_turns"]["ttft_ms"]["p50"], ll["later_turns"]["ttft_ms"]["p50"]),
                        "output_tokens_per_s": _ratio(e["output_tokens_per_s"], ll["output_tokens_per_s"])})
    return out


def report(rows: list[dict], meta: dict) -> Report:
    sections = [f"Voice calls - {meta['date']} on {meta['machine']} ({meta['servers']})", Table(VOICE_COLUMNS, rows)]
    ratios = server_ratios(rows)
    if ratios:
        sections.append(Table(RATIO_COLUMNS, ratios))
    return Report("voice", meta, {"rows": rows}, sections)


def start_servers(names: list[str], max_calls: int, log_dir: Path) -> list:
    from perf.voice_load.servers import ElectronServer, LlamaServer, build_llama_server, served_gguf
    from gateway.settings import Settings

    settings = Settings.from_env()
    threads = settings.threads or os.cpu_count() or 1
    servers = []
    try:
        for name in names:
            if name == "electron":
                servers.append(ElectronServer(log_path=log_dir / "electron.log"))
            else:
                servers.append(LlamaServer(build_llama_server(), served_gguf(), slots=max_calls, threads=threads,
                                           log_path=log_dir / "llama-server.log"))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--url", help="benchmark this one OpenAI-compatible base URL instead of starting servers")
    parser.add_argument("--servers", nargs="+", default=["electron", "llama-server"],
                        choices=["electron", "llama-server"])
    parser.add_argument("--model", default="electron")
    parser.add_argument("--scenario", nargs="+", help="name[:calls] ... (default: the mode's)")
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--turns", type=int, help="default: the mode's")
    parser.add_argument("--rounds", type=int, help="default: the mode's")
    parser.add_argument("--system-words", type=int, default=450, help="about 600 tokens")
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--tool-fraction", type=float, default=0.0)
    parser.add_argument("--speculative-fraction", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    base = CallPlan(calls=args.calls, turns=args.turns or mode["turns"], system_words=args.system_words,
                    reply_tokens=args.reply_tokens, tool_fraction=args.tool_fraction,
                    speculative_fraction=args.speculative_fraction, model=args.model)
    scenario_plans = plans(args.scenario or mode["scenarios"], base)
    meta = run_meta(mode=args.mode, servers=args.url or " vs ".join(args.servers))
    out = result_dir(args.out, "voice", meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw").mkdir(exist_ok=True)  # server logs; not committed
    servers = [] if args.url else start_servers(args.servers, max(p.calls for _, p in scenario_plans), out / "raw")
    endpoints = {"endpoint": args.url} if args.url else {s.name: s.base_url for s in servers}
    try:
        rows = asyncio.run(run(endpoints, scenario_plans, args.rounds or mode["rounds"]))
    finally:
        for server in servers:
            server.stop()
    write_results(args.out, report(rows, meta))
    plots.ttft_distribution(rows, "paced-warm", out / "ttft_paced_warm.png")
    plots.by_concurrency(rows, "sweep", out / "sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
