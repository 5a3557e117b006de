"""What guided decoding costs per decode step: tokens/s per stream with and without a
JSON-schema guide, at 1 and 8 streams, through Triton gRPC (the CPU engine).

Every stream shares one cached ~600-token prompt plus a few new tokens and decodes 48
tokens: plain ones exactly 48 (``min_tokens``), guided ones under a schema whose JSON
is longer than 48 tokens (so ``length`` ends them too). Plain and guided rounds
alternate (A B A B) so that machine drift hits both. Reports medians and the ratio.

    .venv/bin/python -m perf guided              # starts its own tritonserver
    .venv/bin/python -m perf guided --url 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path

from tokenizers import Tokenizer

from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts, start_triton, stop_triton
from perf import RESULTS
from perf.bench_triton import WORDS, one_request
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results

log = logging.getLogger("bench_guided")
SCHEMA = {"type": "object", "properties": {
    "caller": {"type": "string", "maxLength": 40},
    "notes": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 12}},
    "required": ["caller", "notes"], "additionalProperties": False}


async def round_of(url, model, prompts, tokens, guide):
    start = time.perf_counter()
    samples = await asyncio.gather(*(one_request(url, model, p, tokens, guide) for p in prompts))
    return samples, time.perf_counter() - start


async def run_all(args, url, model, tokenizer) -> list[dict]:
    system = " ".join(f"Rule {i}: {' '.join(WORDS)}." for i in range(60))
    shared = tokenizer.encode(system).ids[:600]
    await one_request(url, model, shared + tokenizer.encode(" warm up").ids, 4)
    guide = ("json_schema", json.dumps(SCHEMA))
    rows = []
    for streams in args.concurrency:
        got = {"plain": ([], 0.0, 0), "guided": ([], 0.0, 0)}
        for _ in range(args.rounds):
            for mode in ("plain", "guided"):
                prompts = [shared + tokenizer.encode(f" Call {uuid.uuid4().hex[:8]}: reply as JSON.").ids
                           for _ in range(streams)]
                samples, wall = await round_of(url, model, prompts, args.tokens, guide if mode == "guided" else None)
                previous, walls, tokens = got[mode]
                got[mode] = (previous + samples, walls + wall, tokens + sum(s.tokens for s in samples))
        row = {"streams": streams}
        for mode, (samples, walls, tokens) in got.items():
            row[mode] = {"decode_tps_p50": statistics.median(s.decode_tps for s in samples),
                         "decode_tps_min": min(s.decode_tps for s in samples),
                         "tokens_p50": statistics.median(s.tokens for s in samples),
                         "aggregate_tps": tokens / walls, "requests": len(samples)}
        row["ratio"] = row["guided"]["decode_tps_p50"] / row["plain"]["decode_tps_p50"]
        log.info("%s", row)
        rows.append(row)
    return rows


GUIDED_COLUMNS = (
    Column("streams", "streams"),
    Column("decode tok/s per stream p50 (min), plain", ("plain.decode_tps_p50", "plain.decode_tps_min"),
           "{:.1f} ({:.1f})"),
    Column("guided", ("guided.decode_tps_p50", "guided.decode_tps_min"), "{:.1f} ({:.1f})"),
    Column("guided / plain", "ratio", "{:.2f}"),
    Column("aggregate tok/s plain / guided", ("plain.aggregate_tps", "guided.aggregate_tps"), "{:.1f} / {:.1f}"),
    Column("tokens per stream p50 plain / guided", ("plain.tokens_p50", "guided.tokens_p50"), "{:.0f} / {:.0f}"),
)


def report(rows: list[dict], meta: dict) -> Report:
    return Report("guided", meta, {"rows": rows}, [
        f"Guided decoding cost - {meta['date']} on {meta['machine']} ({meta['tokens']} tokens per stream, "
        f"{meta['rounds']} rounds A/B, JSON-schema guide)",
        Table(GUIDED_COLUMNS, rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="gRPC address of a running Triton (default: start one)")
    parser.add_argument("--model", default="electron_cpu")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    tokenizer = Tokenizer.from_file(str(prepare_artifacts(settings).tokenizer_path))
    process = None if args.url else start_triton(settings)
    try:
        rows = asyncio.run(run_all(args, args.url or settings.triton_grpc_url, args.model, tokenizer))
    finally:
        if process is not None:
            stop_triton(process)
    meta = run_meta(tokens=args.tokens, rounds=args.rounds)
    write_results(args.out, report(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
