"""Where a later turn's time to first token goes: one call, measured at the client and
stage by stage in the gateway, beside llama-server (``python -m perf ttft``).

One call of ``--turns`` turns: a system prompt of ``--system-words`` words (~1.3 tokens
each, new to the server), then caller turns of 14-18 new tokens, each reply capped at
``--reply-tokens``, ``temperature 0``, streamed with usage. The first turn computes the
whole prompt; the later ones only what is new since the last turn (the history is cached).

For electron (``electron-serve`` with its default settings, its own Triton, the gateway's
log at DEBUG in JSON), each turn gives:
- the client's time to first content byte (``first text``: the first delta with text)
  and to its first delta of any kind;
- the gateway's timeline of the request (``gateway.chat.timeline``: auth, body, parse,
  template, tokenize, guide, admit, to the engine, engine queue, prefill, back from the
  engine, detokenize, held back, SSE write), from its log by the response's x-request-id;
- ``client - gateway``: what the socket, HTTP and the client's parsing added.
A first token with no visible text (its text waits for the next token) is counted in
``held_back`` and said in the table, not hidden in the time to first token.

llama-server runs the same call on the same GGUF with the same threads (one slot).
Results: perf/results/<date>-ttft-<host>/ttft.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
from pathlib import Path

import httpx2

from perf import ROOT
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results
from perf.voice_load.calls import TOPICS, system_prompt
from perf.voice_load.servers import ElectronServer, LlamaServer, build_llama_server, served_gguf
from perf.voice_load.sse_client import TurnResult, stream_chat

RESULTS = ROOT / "perf" / "results"
STAGES = ("auth", "read_body", "parse", "template", "tokenize", "guide", "admit", "to_engine", "engine_queue",
          "prefill", "from_engine", "detokenize", "held_back", "sse_write")
GATEWAY_STAGES = ("auth", "read_body", "parse", "template", "tokenize", "guide", "admit", "detokenize", "sse_write")
log = logging.getLogger("perf.ttft")


def caller_turns(turns: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Hi, I'd like to {rng.choice(TOPICS).format(n=rng.randint(2, 99))}, please." for _ in range(turns)]


async def one_call(base_url: str, system: str, turns: list[str], reply_tokens: int, model: str) -> list[TurnResult]:
    history = [{"role": "system", "content": system}]
    results = []
    async with httpx2.AsyncClient(base_url=base_url, timeout=300, headers={"Authorization": "Bearer bench"}) as http:
        for said in turns:
            history.append({"role": "user", "content": said})
            result = await stream_chat(http, {"model": model, "messages": history, "max_tokens": reply_tokens,
                                              "temperature": 0})
            if not result.ok:
                raise RuntimeError(f"turn {len(results) + 1} failed: {result.status} {result.error}")
            results.append(result)
            history.append({"role": "assistant", "content": result.text})
    return results


def timelines(log_path: Path) -> dict[str, dict]:
    """request id -> the gateway's timeline entry (its JSON log line from ``gateway.timeline``)."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("logger") == "gateway.timeline" and entry.get("request_id"):
            found[entry["request_id"]] = entry
    return found


def turn_rows(results: list[TurnResult], lines: dict[str, dict]) -> list[dict]:
    rows = []
    for number, result in enumerate(results, 1):
        entry = lines.get(result.request_id or "", {})
        stages = entry.get("ttft_stages_ms", {})
        gateway_total = entry.get("ttft_total_ms")
        client = None if result.first_text_s is None else result.first_text_s * 1e3
        engine = sum(stages.get(s, 0.0) for s in ("engine_queue", "prefill"))
        rows.append({"turn": number, "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
                     "client_first_chunk_ms": None if result.first_chunk_s is None else result.first_chunk_s * 1e3,
                     "client_first_text_ms": client, "gateway_total_ms": gateway_total,
                     "client_minus_gateway_ms": None if client is None or gateway_total is None
                     else client - gateway_total,
                     "engine_ms": engine if stages else None,
                     "gateway_own_ms": sum(stages.get(s, 0.0) for s in GATEWAY_STAGES) if stages else None,
                     "first_token_visible": "held_back" not in stages if stages else None,
                     "stages": stages})
    return rows


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def stage_rows(later: list[dict]) -> list[dict]:
    rows = []
    for stage in STAGES:
        values = [r["stages"].get(stage, 0.0) for r in later if r["stages"]]
        rows.append({"stage": stage, "median_ms": median(values), "max_ms": max(values, default=None)})
    for name, key in (("gateway's own stages", "gateway_own_ms"), ("engine (queue + prefill)", "engine_ms"),
                      ("gateway timeline, total", "gateway_total_ms"),
                      ("client - gateway (socket, HTTP, client)", "client_minus_gateway_ms"),
                      ("client, first chunk (the engine's first token)", "client_first_chunk_ms"),
                      ("**client, first text**", "client_first_text_ms")):
        values = [r[key] for r in later]
        rows.append({"stage": name, "median_ms": median(values), "max_ms": max((v for v in values if v is not None),
                                                                               default=None)})
    return rows


def run_electron(args, system: str, turns: list[str]) -> list[dict]:
    log_path = args.out / ".electron-ttft.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = ElectronServer(args.port, log_path, log_level="DEBUG", env={"ELECTRON_LOG_FORMAT": "json"})
    try:
        results = asyncio.run(one_call(server.base_url, system, turns, args.reply_tokens, "electron"))
    finally:
        server.stop()
    return turn_rows(results, timelines(log_path))


def run_llama_server(args, system: str, turns: list[str]) -> list[dict]:
    server = LlamaServer(build_llama_server(), served_gguf(), slots=1, threads=args.threads, ctx_per_slot=8192,
                         port=args.port + 100, log_path=args.out / ".llama-server-ttft.log")
    try:
        results = asyncio.run(one_call(server.base_url, system, turns, args.reply_tokens, "electron"))
    finally:
        server.stop()
    return turn_rows(results, {})


TURN_COLUMNS = [
    Column("turn", "turn"), Column("prompt / cached tokens", ("prompt_tokens", "cached_tokens"), "{} / {}"),
    Column("client first chunk / first text (ms)", ("client_first_chunk_ms", "client_first_text_ms"),
           "{:.1f} / {:.1f}"),
    Column("gateway timeline (ms)", "gateway_total_ms", "{:.1f}"),
    Column("client - gateway (ms)", "client_minus_gateway_ms", "{:.1f}"),
    Column("engine queue + prefill (ms)", "engine_ms", "{:.1f}"),
    Column("gateway's own stages (ms)", "gateway_own_ms", "{:.2f}"),
    Column("first token had text", "first_token_visible"),
]
STAGE_COLUMNS = [Column("stage", "stage"), Column("median (ms)", "median_ms", "{:.2f}"),
                 Column("max (ms)", "max_ms", "{:.2f}")]
SIDE_COLUMNS = [Column("server", "server"), Column("later turns", "turns"),
                Column("first text p50 (ms)", "p50_ms", "{:.1f}"),
                Column("min-max (ms)", ("min_ms", "max_ms"), "{:.1f}-{:.1f}"),
                Column("first chunk p50 (ms)", "chunk_p50_ms", "{:.1f}"),
                Column("later turns whose first token had no text", "held_back", missing="n/a"),
                Column("first turn (ms)", "first_turn_ms", "{:.0f}")]


def side_row(server: str, rows: list[dict]) -> dict:
    later = [r["client_first_text_ms"] for r in rows[1:] if r["client_first_text_ms"] is not None]
    held = [r["first_token_visible"] is False for r in rows[1:] if r["first_token_visible"] is not None]
    return {"server": server, "turns": len(later), "p50_ms": median(later), "min_ms": min(later, default=None),
            "max_ms": max(later, default=None), "chunk_p50_ms": median(r["client_first_chunk_ms"] for r in rows[1:]),
            "held_back": sum(held) if held else None,
            "first_turn_ms": rows[0]["client_first_text_ms"] if rows else None}


def report(electron: list[dict], llama: list[dict] | None, meta: dict) -> Report:
    cpu = meta["cpu"]
    side = [side_row("electron", electron)] + ([side_row("llama-server", llama)] if llama else [])
    return Report("ttft", meta, {"electron": electron, "llama_server": llama, "side_by_side": side}, [
        f"# Time to first token of a later turn - {meta['date']} on {meta['machine']}",
        f"CPU: {cpu.get('model')}, {cpu.get('cpus')} logical CPUs; flags of note: "
        f"{', '.join(f for f in cpu.get('flags', '').split() if f.startswith(('avx', 'amx', 'fma', 'f16c')))}. "
        f"One call of {meta['turns']} turns, system prompt of {meta['system_words']} words, replies capped at "
        f"{meta['reply_tokens']} tokens, temperature 0, one run; weights {meta['weights']} (the engine's choice on this "
        "machine, llama-server loads the same file); the gateway logs at DEBUG (JSON) for its timeline.",
        Table(SIDE_COLUMNS, side),
        "## electron, turn by turn",
        Table(TURN_COLUMNS, electron),
        "## electron, where a later turn's time goes (turns 2 on)",
        Table(STAGE_COLUMNS, stage_rows(electron[1:])),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--system-words", type=int, default=600, help="about 780 tokens")
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="llama-server's threads (the engine's default: 2)")
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    turns = caller_turns(args.turns, args.seed)
    salt = f"ttft-{random.Random().randrange(10**9)}"  # a system prompt no earlier run cached
    electron = run_electron(args, system_prompt(args.system_words, salt), turns)
    llama = None if args.no_llama_server else run_llama_server(args, system_prompt(args.system_words, salt), turns)
    meta = run_meta(turns=args.turns, system_words=args.system_words, reply_tokens=args.reply_tokens,
                    weights=served_gguf().name)
    write_results(args.out, report(electron, llama, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
