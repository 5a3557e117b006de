"""Gateway overhead: the OpenAI gateway (HTTP + SSE) against direct Triton gRPC.

The same chat requests (a cached ~300-token system prompt plus a short new user
turn, temperature 0, exactly ``--tokens`` tokens forced with ``min_tokens``) go
to Triton directly, with the very tensors the gateway would send, and through
the gateway, alternating A B A B so that machine drift hits both.

Time to first token varies by tens of milliseconds with the engine's scheduling,
far more than the gateway costs, so each request's client-side TTFT is taken
net of the engine's own time to first token (arrival to first token, from the
engine's perf metrics: read directly on the direct path, from the gateway's
usage log line by request id on the gateway path). TTFT here is the first
*text*: the gateway sends text in whole grapheme clusters, so a lone first
letter ("I" of "I'm") waits for the next token; the direct path applies the
same rule to its tokens (the gateway's ChoiceStream). Per-request overhead =
median net TTFT through the gateway - median net TTFT direct. ``logit_bias``
keeps replies from starting with "I" or "A" on both paths, which keeps that
extra step out of most samples (less noise).

Per token: the median interval between tokens after the first, both paths, and
the gateway process's CPU time per token (/proc, when the bench starts the
gateway): on this 2-core machine every CPU-millisecond of the gateway is taken
from llama.cpp's two threads, so the interval difference is mostly that. A
third, in-process figure isolates the gateway's own Python per token (decode,
stop and grapheme gates, chunk, SSE bytes).

    .venv/bin/python -m perf gateway                 # starts Triton and the gateway
    .venv/bin/python -m perf gateway --triton 127.0.0.1:8001 --gateway http://127.0.0.1:8000 \
        --gateway-log gateway.log                          # a running stack (its INFO log)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import re
import sys
import time
import uuid
from pathlib import Path

import httpx2
import tritonclient.grpc.aio as grpcaio

from gateway.api import sse
from gateway.chat.served_model import model_view
from gateway.chat.chat_request import ChatLimits, prepare_chat
from gateway.chat.wire_request import parse_body
from gateway.chat.choice_stream import ChoiceStream
from gateway.api.responses import ResponseShaper
from gateway.settings import Settings
from gateway.engine.triton_engine import request_inputs
from gateway.server.triton_launcher import prepare_artifacts, start_triton, stop_triton
from perf import RESULTS, ROOT
from perf.procfs import cpu_seconds
from perf.report import Column, Report, Table
from perf.results_dir import run_meta, write_results
from perf.voice_load.servers import ElectronServer

log = logging.getLogger("bench_gateway")
SYSTEM = ("You are the voice agent of a restaurant. Keep answers short and friendly, confirm names, party "
          "sizes and times, and never invent opening hours. ") * 8


ONE_LETTER_TOKENS = {"57": -100, "49": -100}  # "I", "A" in SmolLM2's vocabulary


def chat_body(tokens: int) -> dict:
    salt = uuid.uuid4().hex[:6]
    return {"model": "electron", "temperature": 0, "max_tokens": tokens, "min_tokens": tokens, "stream": True,
            "logit_bias": ONE_LETTER_TOKENS,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Hi, this is caller {salt}. Can I book a table for four?"}]}


class Timing:
    def __init__(self, start: float):
        self.start = start
        self.first: float | None = None
        self.first_text: float | None = None
        self.last: float | None = None
        self.tokens = 0
        self.engine_ttft_ms: float | None = None

    def saw(self, tokens: int, text: bool = True) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if text and self.first_text is None:
            self.first_text = now
        self.last = now
        self.tokens += tokens

    def row(self) -> dict:
        per_token = (self.last - self.first) / (self.tokens - 1) if self.tokens > 1 else 0.0
        return {"ttft_ms": (self.first - self.start) * 1e3, "first_text_ms": (self.first_text - self.start) * 1e3,
                "per_token_ms": per_token * 1e3, "tokens": self.tokens, "engine_ttft_ms": self.engine_ttft_ms}


async def direct(client: grpcaio.InferenceServerClient, model: str, body: dict, view, limits: ChatLimits) -> dict:
    """One request on its own stream of a long-lived client, as the gateway does. The
    clock starts before the tensors are built: a direct client has to build them too."""
    prepared = prepare_chat(parse_body(json.dumps(body).encode()), limits, view.template, view.codec)
    choice = ChoiceStream(view.codec.token_bytes, [], prepared.engine_request.max_tokens)
    timing = Timing(time.perf_counter())
    inputs = request_inputs(prepared.engine_request, view.artifacts.vocab_size)

    async def one():
        yield {"model_name": model, "inputs": inputs, "request_id": uuid.uuid4().hex[:12]}

    async for result, error in client.stream_infer(one()):
        if error is not None:
            raise RuntimeError(str(error))
        ids = result.as_numpy("output_ids").reshape(-1).tolist()
        if ids:
            if timing.first is None:
                arrival = result.as_numpy("arrival_time_ns").item()
                timing.engine_ttft_ms = (result.as_numpy("first_token_time_ns").item() - arrival) / 1e6
            timing.saw(len(ids), text=choice.feed(ids) is not None)
    return timing.row()


async def through_gateway(http: httpx2.AsyncClient, body: dict) -> dict:
    request_id = "bench-" + uuid.uuid4().hex[:16]
    timing = Timing(time.perf_counter())
    async with http.stream("POST", "/v1/chat/completions", json=body,
                           headers={"X-Request-Id": request_id}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                delta = chunk["choices"][0]["delta"]
                if delta.get("content") or chunk["choices"][0].get("finish_reason"):
                    timing.saw(1)
    timing.tokens = body["max_tokens"]  # text chunks != tokens: the engine generated exactly this many
    return timing.row() | {"request_id": request_id}


def engine_ttfts_from_log(path: Path) -> dict[str, float]:
    """request id -> engine_ttft_ms, from the gateway's request log lines (INFO)."""
    found = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r"gateway\.request \[(bench-[0-9a-f]+)\] .* engine_ttft_ms=([0-9.]+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


async def measure(args, view, limits, gateway_pid: int | None) -> list[dict]:
    rows = []
    grpc_client = grpcaio.InferenceServerClient(args.triton)
    async with httpx2.AsyncClient(base_url=args.gateway, timeout=120,
                                  limits=httpx2.Limits(max_connections=64)) as http:
        await through_gateway(http, chat_body(4))  # caches the system prompt
        for concurrency in args.concurrency:
            samples = {"direct": [], "gateway": []}
            gateway_cpu = 0.0
            for _ in range(args.rounds):
                for path in ("direct", "gateway"):
                    bodies = [chat_body(args.tokens) for _ in range(concurrency)]
                    if path == "direct":
                        runs = [direct(grpc_client, args.model, b, view, limits) for b in bodies]
                        samples[path].extend(await asyncio.gather(*runs))
                        continue
                    cpu_before = cpu_seconds(gateway_pid) if gateway_pid else 0.0
                    samples[path].extend(await asyncio.gather(*(through_gateway(http, b) for b in bodies)))
                    gateway_cpu += (cpu_seconds(gateway_pid) - cpu_before) if gateway_pid else 0.0
            await asyncio.sleep(0.5)  # let the gateway write its log lines
            engine = engine_ttfts_from_log(args.gateway_log)
            for v in samples["gateway"]:
                v["engine_ttft_ms"] = engine.get(v["request_id"])
            row = {"concurrency": concurrency, "requests": len(samples["direct"])}
            for path, values in samples.items():
                net = [v["first_text_ms"] - v["engine_ttft_ms"] for v in values if v["engine_ttft_ms"] is not None]
                row[f"{path}_ttft_ms"] = statistics.median(v["first_text_ms"] for v in values)
                row[f"{path}_net_ttft_ms"] = statistics.median(net) if net else float("nan")
                row[f"{path}_per_token_ms"] = statistics.median(v["per_token_ms"] for v in values)
            row["first_text_at_first_token"] = sum(v["first_text_ms"] == v["ttft_ms"] for v in samples["direct"])
            row["ttft_overhead_ms"] = row["gateway_net_ttft_ms"] - row["direct_net_ttft_ms"]
            row["per_token_overhead_ms"] = row["gateway_per_token_ms"] - row["direct_per_token_ms"]
            tokens = sum(v["tokens"] for v in samples["gateway"])
            row["gateway_cpu_ms_per_token"] = gateway_cpu * 1e3 / tokens if gateway_pid else None
            log.info("%s", row)
            rows.append(row)
    await grpc_client.close()
    return rows


def cpu_per_token(view, repeats: int = 20) -> dict:
    """The gateway's own work per token, in process: decode, stop/grapheme gates,
    chunk model and SSE bytes; and its work per request: parse, template, tokenize."""
    text = ("Sure! I can book a table for four at seven thirty. नमस्ते, आपकी बुकिंग हो गई है। "
            "Would you like a window seat? ") * 4
    ids = view.codec.encode(text)
    shaper = ResponseShaper("electron", "fp_bench", include_usage=True)
    started = time.perf_counter()
    for _ in range(repeats):
        choice = ChoiceStream(view.codec.token_bytes, ["</s>"], 10_000)
        for token in ids:
            delta = choice.feed([token])
            if delta is not None:
                for chunk in shaper.stream_chunks(delta):
                    sse.event(chunk)
    per_token_us = (time.perf_counter() - started) / (repeats * len(ids)) * 1e6
    limits = ChatLimits("electron", 8192, view.artifacts.vocab_size, 200, 2, 2)
    raw = json.dumps(chat_body(32)).encode()
    started = time.perf_counter()
    for _ in range(repeats * 10):
        prepare_chat(parse_body(raw), limits, view.template, view.codec)
    per_request_us = (time.perf_counter() - started) / (repeats * 10) * 1e6
    return {"per_token_us": per_token_us, "prepare_request_us": per_request_us, "tokens": len(ids)}


GATEWAY_COLUMNS = (
    Column("concurrency", "concurrency"),
    Column("requests per path", "requests"),
    Column("TTFT direct / gateway (ms)", ("direct_ttft_ms", "gateway_ttft_ms"), "{:.1f} / {:.1f}"),
    Column("TTFT net of engine, direct / gateway (ms)", ("direct_net_ttft_ms", "gateway_net_ttft_ms"), "{:.2f} / {:.2f}"),
    Column("**per-request overhead (ms)**", "ttft_overhead_ms", "{:+.2f}"),
    Column("per token direct / gateway (ms)", ("direct_per_token_ms", "gateway_per_token_ms"), "{:.2f} / {:.2f}"),
    Column("**per-token overhead (ms)**", "per_token_overhead_ms", "{:+.3f}"),
    Column("gateway CPU per token (ms)", "gateway_cpu_ms_per_token", "{:.2f}", missing="n/a"),
)


def report(rows: list[dict], cpu: dict, meta: dict) -> Report:
    return Report("gateway", meta, {"rows": rows, "cpu": cpu}, [
        f"Gateway overhead over direct Triton gRPC - {meta['date']} on {meta['machine']} "
        f"({meta['tokens']} tokens per request, cached ~300-token system prompt, "
        f"{meta['rounds']} rounds A/B per concurrency)",
        Table(GATEWAY_COLUMNS, rows),
        f"In process, the gateway's CPU: {cpu['per_token_us']:.1f} µs per token (decode, stop and "
        f"grapheme gates, chunk, SSE bytes; {cpu['tokens']} tokens of mixed English/Hindi), "
        f"{cpu['prepare_request_us'] / 1000:.2f} ms to parse, render and tokenize a request."])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", help="gRPC address of a running Triton (default: start one)")
    parser.add_argument("--gateway", help="URL of a running gateway (default: start one)")
    parser.add_argument("--gateway-log", type=Path, help="INFO log of a running gateway (its usage lines)")
    parser.add_argument("--model", default="electron_cpu")
    # 8 at once is past what the 2-core CPU engine serves: it refuses some as overloaded (503,
    # from the gateway; an error on the direct stream), and a refusal ends the run
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request otherwise
    settings = Settings.from_env()
    view = model_view(prepare_artifacts(settings), settings.triton_model)
    limits = ChatLimits("electron", 8192, view.artifacts.vocab_size, 200, view.artifacts.eos_token_id,
                        view.artifacts.pad_token_id)
    triton = None if args.triton else start_triton(settings)
    if args.gateway and not args.gateway_log:
        parser.error("--gateway needs --gateway-log (the engine's TTFT comes from its usage lines)")
    args.gateway_log = args.gateway_log or ROOT / "perf" / ".cache" / "bench_gateway.log"
    if not args.gateway:
        args.gateway_log.parent.mkdir(parents=True, exist_ok=True)
    gateway = None if args.gateway else ElectronServer(18100, args.gateway_log, settings.triton_grpc_port, "INFO")
    args.triton = args.triton or settings.triton_grpc_url
    args.gateway = args.gateway or gateway.root_url
    try:
        rows = asyncio.run(measure(args, view, limits, gateway.process.pid if gateway is not None else None))
    finally:
        if gateway is not None:
            gateway.stop()
        if triton is not None:
            stop_triton(triton)
    cpu = cpu_per_token(view)
    meta = run_meta(tokens=args.tokens, rounds=args.rounds)
    write_results(args.out, report(rows, cpu, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
