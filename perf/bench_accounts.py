"""What keys, limits and the usage ledger add to a request.

    .venv/bin/python -m perf accounts [--requests 3000]

1. The account layer alone, per request: ``authenticate`` (hash + lookup) + ``admit``
   (limiter) before the engine, ``settle`` (release + ledger row) after it, with the
   embedded stores (in-process limiter, SQLite) and with Redis + PostgreSQL (real
   servers started here), with 1 and 32 requests in flight. Latency: each request
   holds its slot for ``--hold-ms`` (as a short reply would); median and p99 of the
   time the layer adds to it. CPU: the same requests back to back (no hold), so
   that fixed per-second work (key refresh, ledger timer) is spread over many
   requests: this process's CPU per request, batched ledger writes included (the
   Redis and PostgreSQL servers' own CPU is not counted).
2. Nothing per token: the gateway in process (real app, tokenizer, template; an
   instant scripted engine) answering 1-token and 256-token streams, with the real
   account layer and with a null one; the difference per request must not grow
   with the number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from gateway.accounts.limits import UNLIMITED, Admission
from gateway.accounts.service import AccountService, Caller
from gateway.accounts.service import Outcome
from gateway.settings import Settings
from perf import RESULTS
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def layer_run(settings: Settings, requests: int, concurrency: int, hold_s: float = 0.0) -> dict:
    accounts = AccountService(settings)
    await accounts.start()
    key = (await accounts.store.create_key(f"bench-{concurrency}-{time.time_ns()}", "k")).key
    record = await accounts.store.find_key(key[:12])
    await accounts.store.set_limits(record.account_id, 100_000, 100_000_000, 0)
    await accounts.refresh()
    header = f"Bearer {key}"
    added: list[float] = []
    outcome = Outcome("stop", 600, 560, 48, True, 30.0)
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            t0 = time.perf_counter()
            caller = await accounts.authenticate(header)
            admission = await accounts.admit(caller)
            t1 = time.perf_counter()
            await asyncio.sleep(hold_s)  # the request runs here
            t2 = time.perf_counter()
            accounts.settle(caller, admission, "req", "electron", outcome, time.time())
            added.append((t1 - t0) + (time.perf_counter() - t2))

    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    await accounts.ledger.flush()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    written = accounts.ledger.written
    await accounts.close()
    assert written == requests, (written, requests)
    return {"median_ms": statistics.median(added) * 1e3, "p99_ms": pct(added, 0.99) * 1e3,
            "cpu_ms_per_request": cpu / requests * 1e3, "requests_per_s": requests / wall}


class NullAccounts(AccountService):
    """The baseline of part 2: no hashing, no limiter, no ledger."""

    async def authenticate(self, authorization):
        return Caller("null", None, True, UNLIMITED)

    async def admit(self, caller):
        return Admission("null", "t", None)

    def settle(self, caller, admission, request_id, model, outcome, started_at):
        admission.released = True
        return NULL_ROW  # the gateway reads the row's cost for its request log line


NULL_ROW = SimpleNamespace(cost_pico=0)


async def per_token_run(settings: Settings, tokens: int, requests: int, null: bool) -> float:
    import httpx2
    from tests.app.scripted_engine import Script, ScriptedEngine
    from gateway.api.app import create_app
    from gateway.chat.served_model import model_view
    from gateway.server.triton_launcher import prepare_artifacts

    model = model_view(prepare_artifacts(settings), settings.triton_model)
    engine = ScriptedEngine()
    engine.max_sequence_length = 4096
    engine.script = Script(tokens=(model.codec.encode(" hello") * tokens)[:tokens])
    accounts = (NullAccounts if null else AccountService)(settings)
    app = create_app(settings, engine, model, accounts)
    body = {"model": "electron", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "max_tokens": tokens}
    times = []
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://g") as client:
        for _ in range(requests):
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            times.append(time.perf_counter() - t0)
    await accounts.close()
    return statistics.median(times) * 1e3


async def redis_ping_ms(url: str, hold_s: float, n: int = 300) -> float:
    """A bare Redis round trip after the same idle time: the floor under the Redis limiter's figure."""
    import redis.asyncio as redis
    client = redis.from_url(url)
    await client.ping()
    times = []
    for _ in range(n):
        await asyncio.sleep(hold_s)
        t0 = time.perf_counter()
        await client.ping()
        times.append(time.perf_counter() - t0)
    await client.aclose()
    return statistics.median(times) * 1e3


LAYER_COLUMNS = (
    Column("stores", "stores"),
    Column("in flight", "concurrency"),
    Column("added per request, median (ms)", "median_ms", "{:.3f}"),
    Column("p99 (ms)", "p99_ms", "{:.3f}"),
    Column("CPU per request, back to back (ms)", "cpu_ms_per_request", "{:.3f}"),
    Column("requests/s the layer sustains", "requests_per_s", "{:.0f}"),
)
PER_TOKEN_COLUMNS = (
    Column("tokens", "tokens"),
    Column("with accounts (ms)", "with_accounts_ms", "{:.2f}"),
    Column("null accounts (ms)", "null_accounts_ms", "{:.2f}"),
    Column("added (ms)", "added_ms", "{:+.2f}"),
)


def report(meta: dict, layer: list[dict], ping: dict, per_token: list[dict], token_requests: int) -> Report:
    return Report("accounts", meta, {"layer": layer, "redis_ping": ping, "per_token": per_token}, [
        f"Account layer overhead - {meta['date']} on {meta['machine']}, {meta['requests']} requests per row, "
        f"each holding its slot {meta['hold_ms']:g} ms",
        Table(LAYER_COLUMNS, layer),
        f"Reference: a bare Redis PING from this process takes {ping['held_ms']:.3f} ms (median) after the "
        f"same {meta['hold_ms']:g} ms idle, {ping['back_to_back_ms']:.3f} ms back to back.",
        "Per token: streamed requests through the app in process (instant engine), median of "
        f"{token_requests} requests x 5 alternated rounds; added = median of the rounds' differences",
        Table(PER_TOKEN_COLUMNS, per_token)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--hold-ms", type=float, default=50.0, help="how long each request holds its slot")
    parser.add_argument("--token-requests", type=int, default=150)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from tests.services import PostgresServer, RedisServer

    meta = run_meta(requests=args.requests, hold_ms=args.hold_ms)
    layer = []
    redis_server, postgres = RedisServer(), PostgresServer()
    try:
        ping = {"held_ms": asyncio.run(redis_ping_ms(redis_server.url, args.hold_ms / 1000)),
                "back_to_back_ms": asyncio.run(redis_ping_ms(redis_server.url, 0.0))}
        print("redis PING", ping, flush=True)
        stores = {
            "embedded (in-process limiter, SQLite)": {},
            "Redis + PostgreSQL": {"redis_url": redis_server.url,
                                   "database_url": postgres.create_database("bench")},
        }
        for name, changes in stores.items():
            for concurrency in (1, 32):
                settings = dataclasses.replace(Settings(), data_dir=tempfile.mkdtemp(prefix="electron-bench-"),
                                               **changes)
                held = asyncio.run(layer_run(settings, args.requests, concurrency, args.hold_ms / 1000))
                busy = asyncio.run(layer_run(settings, args.requests, concurrency, 0.0))
                layer.append({"stores": name, "concurrency": concurrency, "median_ms": held["median_ms"],
                              "p99_ms": held["p99_ms"], "cpu_ms_per_request": busy["cpu_ms_per_request"],
                              "requests_per_s": busy["requests_per_s"]})
                print(layer[-1], flush=True)
    finally:
        redis_server.stop()
        postgres.stop()

    per_token = []
    for tokens in (1, 256):
        settings = dataclasses.replace(Settings(), data_dir=tempfile.mkdtemp(prefix="electron-bench-"))
        rounds = {"real": [], "null": []}
        for _ in range(5):  # alternated: the machine is noisy
            for kind in ("null", "real"):
                rounds[kind].append(asyncio.run(per_token_run(settings, tokens, args.token_requests, kind == "null")))
        real, null = statistics.median(rounds["real"]), statistics.median(rounds["null"])
        paired = statistics.median(r - n for r, n in zip(rounds["real"], rounds["null"]))
        per_token.append({"tokens": tokens, "with_accounts_ms": real, "null_accounts_ms": null, "added_ms": paired})
        print(per_token[-1], flush=True)

    write_results(args.out, report(meta, layer, ping, per_token, args.token_requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
