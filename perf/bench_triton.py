"""Engine benchmark through Triton gRPC: time to first token and decode speed.

For 1, 4 and 8 concurrent streams, with *cold* prompts (each ~600 tokens, never
seen: the whole prompt is prefilled) and *shared-prefix* prompts (one ~600-token
system prompt, already cached, plus ~20 new tokens per request, as in a voice
call). Every stream generates exactly ``--tokens`` tokens (min_tokens forces it).

Reports medians per scenario: time to first token (client side, from sending to
the first token), per-stream decode tokens/s after the first token, aggregate
output tokens/s. Writes ``perf/results/<date>-triton-<host>/`` (JSON + Markdown).

    .venv/bin/python -m perf triton            # starts its own tritonserver
    .venv/bin/python -m perf triton --url 127.0.0.1:8001   # an existing one
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc.aio as grpcaio
from tokenizers import Tokenizer
from tritonclient.grpc import InferInput

from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts, start_triton, stop_triton
from engine_contract import INPUTS, ContractRequest, encode_request
from perf import RESULTS, ROOT
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results

log = logging.getLogger("bench_triton")
WORDS = "the caller wants to change a booking for two people on friday evening near the window and asks about parking".split()


def request_inputs(prompt: list[int], tokens: int, guide: tuple[str, str] | None = None) -> list[InferInput]:
    """``tokens`` tokens exactly (``min_tokens``), or under ``guide`` (type, text), whose
    end decides (pick a guide longer than ``tokens``)."""
    request = ContractRequest(prompt=tuple(prompt), max_new_tokens=tokens, min_tokens=0 if guide else tokens,
                              streaming=True, exclude_input_in_output=True, temperature=0.0,
                              return_perf_metrics=True, guide=guide)
    inputs = []
    for name, array in encode_request(request, vocab_size=0).items():
        tensor = InferInput(name, list(array.shape), INPUTS[name].wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@dataclass
class Sample:
    ttft_s: float
    decode_tps: float
    tokens: int
    reused_blocks: int
    seconds: float


async def one_request(url: str, model: str, prompt: list[int], tokens: int,
                      guide: tuple[str, str] | None = None) -> Sample:
    client = grpcaio.InferenceServerClient(url)
    inputs = request_inputs(prompt, tokens, guide)

    async def requests():
        yield {"model_name": model, "inputs": inputs, "request_id": uuid.uuid4().hex[:12]}

    start = time.perf_counter()
    first = last = None
    count, reused = 0, 0
    try:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(str(error))
            n = result.as_numpy("output_ids").size
            now = time.perf_counter()
            if n and first is None:
                first = now
            if n:
                last = now
            count += n
            reused = int(result.as_numpy("kv_cache_reused_blocks").reshape(-1)[0])
    finally:
        await client.close()
    decode = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return Sample(first - start, decode, count, reused, last - start)


def make_prompts(tokenizer: Tokenizer, kind: str, n: int, prefix_tokens: int, shared: list[int]) -> list[list[int]]:
    prompts = []
    for _ in range(n):
        salt = uuid.uuid4().hex
        suffix = tokenizer.encode(f" Call {salt[:8]}: " + " ".join(WORDS[:14])).ids[:20]
        if kind == "cold":
            words = " ".join(f"{salt[i % 32]}{WORDS[i % len(WORDS)]}" for i in range(prefix_tokens))
            prompts.append(tokenizer.encode(words).ids[:prefix_tokens] + suffix)
        else:
            prompts.append(shared + suffix)
    return prompts


async def scenario(url, model, tokenizer, kind, concurrency, rounds, tokens, shared, prefix_tokens):
    samples, walls = [], []
    for _ in range(rounds):
        prompts = make_prompts(tokenizer, kind, concurrency, prefix_tokens, shared)
        start = time.perf_counter()
        results = await asyncio.gather(*(one_request(url, model, p, tokens) for p in prompts))
        walls.append(time.perf_counter() - start)
        samples.extend(results)
    total_tokens = sum(s.tokens for s in samples)
    return {
        "kind": kind,
        "concurrency": concurrency,
        "requests": len(samples),
        "ttft_p50_ms": 1000 * statistics.median(s.ttft_s for s in samples),
        "ttft_max_ms": 1000 * max(s.ttft_s for s in samples),
        "decode_tps_p50": statistics.median(s.decode_tps for s in samples),
        "decode_tps_min": min(s.decode_tps for s in samples),
        "aggregate_tps": total_tokens / sum(walls),
        "reused_blocks_p50": statistics.median(s.reused_blocks for s in samples),
    }


TRITON_COLUMNS = (
    Column("prompts", "kind"),
    Column("streams", "concurrency"),
    Column("TTFT p50 (ms)", "ttft_p50_ms", "{:.0f}"),
    Column("TTFT max (ms)", "ttft_max_ms", "{:.0f}"),
    Column("decode tok/s per stream p50 (min)", ("decode_tps_p50", "decode_tps_min"), "{:.1f} ({:.1f})"),
    Column("aggregate tok/s", "aggregate_tps", "{:.1f}"),
    Column("reused blocks p50", "reused_blocks_p50", "{:.0f}"),
)


def report(rows: list[dict], meta: dict) -> Report:
    return Report("triton", meta, {"rows": rows}, [
        f"Engine through Triton gRPC - {meta['date']} on {meta['machine']} "
        f"({meta['tokens']} tokens per stream, ~{meta['prefix_tokens']}-token prompts)",
        Table(TRITON_COLUMNS, rows)])


async def run_all(args, url, model, tokenizer) -> list[dict]:
    system = " ".join(f"Rule {i}: {' '.join(WORDS)}." for i in range(60))
    shared = tokenizer.encode(system).ids[: args.prefix_tokens]
    await one_request(url, model, shared + tokenizer.encode(" warm up").ids, 4)  # caches the shared prompt
    rows = []
    for concurrency in args.concurrency:
        for kind in ("cold", "shared"):
            row = await scenario(url, model, tokenizer, kind, concurrency, args.rounds, args.tokens, shared,
                                 args.prefix_tokens)
            log.info("%s", row)
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="gRPC address of a running Triton (default: start one)")
    parser.add_argument("--model", default="electron_cpu")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prefix-tokens", type=int, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="then run Triton's perf_analyzer --streaming (perf/perf_analyzer.sh) on the same server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.from_env()
    tokenizer = Tokenizer.from_file(str(prepare_artifacts(settings).tokenizer_path))
    process = None if args.url else start_triton(settings)
    try:
        rows = asyncio.run(run_all(args, args.url or settings.triton_grpc_url, args.model, tokenizer))
        analyzer = run_perf_analyzer(args.url or settings.triton_grpc_url) if args.perf_analyzer else None
    finally:
        if process is not None:
            stop_triton(process)
    meta = run_meta(tokens=args.tokens, prefix_tokens=args.prefix_tokens, args=vars(args) | {"out": str(args.out)})
    out = write_results(args.out, report(rows, meta))
    if analyzer is not None:
        code, text = analyzer
        (out / "perf_analyzer.txt").write_text(text)
        log.info("perf_analyzer exited %d; output in %s", code, out / "perf_analyzer.txt")
        return code
    return 0


def run_perf_analyzer(url: str) -> tuple[int, str]:
    """perf/perf_analyzer.sh against ``url``, concurrency 1 to 8: exit code and output."""
    done = subprocess.run(["bash", str(ROOT / "perf" / "perf_analyzer.sh"), url, "1:8:1"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


if __name__ == "__main__":
    sys.exit(main())
