"""Voice-call benchmark against any OpenAI-compatible URL (issue 4, in progress).

Scenarios (``--scenario``, several allowed):
  paced-warm   N calls, staggered ~1 s apart, paced like real calls; the shared
               system prompt was seen once before the calls start
  cold-burst   N calls start at the same instant with a never-seen system prompt
  closed       N calls, each next turn sent at once (saturation)
  sweep        closed runs at 1, 2, 4, 8, 16, 32 calls

Writes ``perf/results/<date>-voice-<host>/voice.json`` and ``voice.md``.
The llama-server peer, A/B alternation and plots are not built yet.

    .venv/bin/python perf/voice_bench.py --url http://127.0.0.1:8000/v1 --scenario paced-warm --calls 8
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import uuid
from pathlib import Path

from rich.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_dir import run_meta, write_results  # noqa: E402
from voice_load.calls import CallPlan, run_calls, system_prompt  # noqa: E402
from voice_load.report import figures  # noqa: E402
from voice_load.sse_client import stream_chat  # noqa: E402

import httpx2  # noqa: E402


async def warm(base_url: str, plan: CallPlan, system: str) -> None:
    """One request with the shared system prompt, so that it is cached before the calls."""
    async with httpx2.AsyncClient(base_url=base_url, timeout=300) as http:
        await stream_chat(http, {"model": plan.model, "max_tokens": 1,
                                 "messages": [{"role": "system", "content": system},
                                              {"role": "user", "content": "Hello."}]})


async def scenario(base_url: str, name: str, plan: CallPlan, progress: Progress) -> dict:
    system = system_prompt(plan.system_words, salt=uuid.uuid4().hex[:8])
    if name == "paced-warm":
        await warm(base_url, plan, system)
    task = progress.add_task(f"{name} x{plan.calls}", total=plan.calls * plan.turns)
    records, wall = await run_calls(base_url, plan, system, on_turn=lambda: progress.advance(task))
    return {"scenario": name, "plan": dataclasses.asdict(plan), "figures": figures(records, wall)}


def plans(args) -> list[tuple[str, CallPlan]]:
    base = CallPlan(calls=args.calls, turns=args.turns, system_words=args.system_words, reply_tokens=args.reply_tokens,
                    tool_fraction=args.tool_fraction, speculative_fraction=args.speculative_fraction,
                    model=args.model)
    out = []
    for name in args.scenario:
        if name == "paced-warm":
            out.append((name, dataclasses.replace(base, pacing="paced")))
        elif name == "cold-burst":
            out.append((name, dataclasses.replace(base, pacing="closed", turns=1)))
        elif name == "closed":
            out.append((name, dataclasses.replace(base, pacing="closed")))
        elif name == "sweep":
            out += [(name, dataclasses.replace(base, pacing="closed", calls=n)) for n in args.sweep]
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Voice calls against {meta['url']} - {meta['date']} on {meta['machine']}", "",
             "| scenario | calls | turns | TTFT p50 / p95 first turn (ms) | TTFT p50 / p95 / p99 later turns (ms) "
             "| decode tok/s p50 | output tok/s | cache ratio | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        f, p = row["figures"], row["plan"]
        first, later = f["first_turn"]["ttft_ms"], f["later_turns"]["ttft_ms"]
        lines.append(f"| {row['scenario']} | {p['calls']} | {p['turns']} | {_fmt(first['p50'])} / {_fmt(first['p95'])} "
                     f"| {_fmt(later['p50'])} / {_fmt(later['p95'])} / {_fmt(later['p99'])} "
                     f"| {_fmt(f['all']['decode_tps']['p50'])} | {f['output_tokens_per_s']:.1f} "
                     f"| {f['cache_ratio']:.2f} | {f['errors']} |")
    return "\n".join(lines) + "\n"


async def run(args) -> list[dict]:
    rows = []
    with Progress() as progress:
        for name, plan in plans(args):
            rows.append(await scenario(args.url, name, plan, progress))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="OpenAI-compatible base URL")
    parser.add_argument("--model", default="electron")
    parser.add_argument("--scenario", nargs="+", default=["paced-warm", "cold-burst", "closed"],
                        choices=["paced-warm", "cold-burst", "closed", "sweep"])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-words", type=int, default=450, help="about 600 tokens")
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--tool-fraction", type=float, default=0.0)
    parser.add_argument("--speculative-fraction", type=float, default=0.0)
    parser.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    meta = run_meta(url=args.url)
    write_results(args.out, "voice", meta, {"rows": rows}, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
