"""Token relay benchmark: the gateway's own CPU per token, with an engine that computes nothing.

A real ``tritonserver`` serves ``perf/synthetic_engine`` (the CPU engine's tensor
contract; every request streams its tokens at ``--tokens-per-s`` with no
compute) and a real gateway relays them as Server-Sent Events to ``--streams``
concurrent streamed requests. Measured per run: the gateway process's CPU time
(user + system, from /proc) per token relayed, tokens relayed per gateway core,
SSE events per stream and time to first token. Each ``--coalesce-ms`` value is
one engine configuration: 0 sends every token as its own response; 40 sends
the first token alone, then the tokens of each 40 ms window together (what the
CPU engine does for streams ahead of their playhead).

    .venv/bin/python -m perf relay          # 64 and 256 streams, 0 and 40 ms, 50 and 100 tokens/s
    .venv/bin/python -m perf relay --streams 64 --coalesce-ms 40 --tokens-per-s 100
    .venv/bin/python -m perf relay --workers 1 2     # also a pool of 2 gateway workers (with Redis)

With ``--workers N`` (N > 1) the gateway is a pool of N worker processes sharing
their caps through a real Redis started for the run; gateway CPU is then the
sum over the parent and its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from gateway.server.triton_launcher import start_triton, stop_triton
from gateway.settings import Settings
from perf import RESULTS, ROOT
from perf.procfs import cpu_seconds
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results
from perf.voice_load.servers import ElectronServer
from perf.voice_load.sse_client import stream_chat
from perf.voice_load.stats import percentile

MODEL = "electron_synthetic"


def synthetic_repository(tokens_per_s: float, coalesce_ms: float) -> Path:
    """A model repository whose one model has the CPU engine's config and the synthetic code."""
    root = Path(tempfile.mkdtemp(prefix="relay-repo-"))
    model = root / MODEL
    model.mkdir()
    config = (ROOT / "model_repository" / "electron_cpu" / "config.pbtxt").read_text()
    config = config.replace('name: "electron_cpu"', f'name: "{MODEL}"')
    config += "".join(f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
                      for k, v in (("tokens_per_s", tokens_per_s), ("coalesce_ms", coalesce_ms)))
    (model / "config.pbtxt").write_text(config)
    (model / "1").symlink_to(ROOT / "perf" / "synthetic_engine" / "1", target_is_directory=True)
    return root


async def relay(base_url: str, streams: int, tokens: int) -> list:
    limits = httpx2.Limits(max_connections=streams + 4)
    async with httpx2.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        body = {"model": "electron", "max_tokens": tokens, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me about the weather in Paris and in London."}]}
        return await asyncio.gather(*(stream_chat(http, body) for _ in range(streams)))


def run_one(port: int, streams: int, tokens: int, tokens_per_s: float, coalesce_ms: float,
            workers: int = 1, redis_url: str = "") -> dict:
    run_dir = tempfile.mkdtemp(prefix="relay-run-")
    settings = Settings.from_env({**os.environ, "ELECTRON_RUN_DIR": run_dir,
                                  "ELECTRON_MODEL_REPOSITORY": str(synthetic_repository(tokens_per_s, coalesce_ms)),
                                  "ELECTRON_TRITON_MODEL": MODEL, "ELECTRON_TRITON_GRPC_PORT": str(port + 1),
                                  "ELECTRON_TRITON_METRICS_PORT": str(port + 2),
                                  "ELECTRON_TRITON_HTTP_PORT": str(port + 3)})
    triton = start_triton(settings)
    try:
        env = {"ELECTRON_TRITON_MODEL": MODEL}
        if workers > 1:
            env.update(ELECTRON_GATEWAY_WORKERS=str(workers), ELECTRON_REDIS_URL=redis_url)
        gateway = ElectronServer(port, triton_grpc_port=port + 1, env=env)
        try:
            time.sleep(2.0 if workers > 1 else 0.0)  # /ready answers once one worker is up: the others too
            asyncio.run(relay(gateway.base_url, 4 * workers, 8))  # connections, model config, first requests
            before, started = cpu_seconds(gateway.process.pid), time.perf_counter()
            results = asyncio.run(relay(gateway.base_url, streams, tokens))
            wall = time.perf_counter() - started
            cpu = cpu_seconds(gateway.process.pid) - before
        finally:
            gateway.stop()
    finally:
        stop_triton(triton)
    ok = [r for r in results if r.ok]
    relayed = sum(r.completion_tokens or 0 for r in ok)
    ttft = [r.ttft_s * 1000 for r in ok if r.ttft_s is not None]
    return {"workers": workers, "streams": streams, "coalesce_ms": coalesce_ms, "tokens_per_s": tokens_per_s, "ok": len(ok),
            "tokens": relayed, "events_per_stream": sum(len(r.itl_s) + 1 for r in ok) / max(len(ok), 1),
            "wall_s": wall, "gateway_cpu_s": cpu, "cpu_ms_per_token": 1000 * cpu / relayed if relayed else None,
            "tokens_per_core_s": relayed / cpu if cpu else None,
            "ttft_ms": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95)}}


RELAY_COLUMNS = (
    Column("gateway workers", lambda r: r.get("workers", 1)),
    Column("streams", "streams"),
    Column("engine tok/s per stream", "tokens_per_s", "{:g}"),
    Column("coalescing", "coalesce_ms", "{:g} ms"),
    Column("streams ok", "ok"),
    Column("tokens relayed", "tokens"),
    Column("SSE events per stream", "events_per_stream", "{:.1f}"),
    Column("gateway CPU ms per token", "cpu_ms_per_token", "{:.3f}"),
    Column("tokens per gateway core-second", "tokens_per_core_s", "{:.0f}"),
    Column("TTFT p50 / p95 (ms)", ("ttft_ms.p50", "ttft_ms.p95"), "{:.0f} / {:.0f}"),
)


def report(rows: list[dict], meta: dict) -> Report:
    return Report("relay", meta, {"rows": rows}, [
        f"Token relay - {meta['date']} on {meta['machine']} (synthetic engine, {meta['tokens']} tokens per "
        "stream; gateway CPU = user + system time of the gateway's processes)",
        Table(RELAY_COLUMNS, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--coalesce-ms", type=float, nargs="+", default=[0.0, 40.0])
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--tokens-per-s", type=float, nargs="+", default=[50.0, 100.0], help="engine pace of each stream")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="gateway worker processes")
    parser.add_argument("--port", type=int, default=18700)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    redis = None
    if max(args.workers) > 1:
        from tests.services import RedisServer  # the tests' real Redis server
        redis = RedisServer()
    try:
        for rate in args.tokens_per_s:
            for coalesce in args.coalesce_ms:
                for streams in args.streams:
                    for workers in args.workers:
                        row = run_one(args.port, streams, args.tokens, rate, coalesce, workers,
                                      redis.url if redis else "")
                        print(row, flush=True)
                        rows.append(row)
    finally:
        if redis is not None:
            redis.stop()
    meta = run_meta(tokens=args.tokens)
    write_results(args.out, report(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
