"""A small async client of the engine contract for the end-to-end tests."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput

from engine_contract.tensors import INPUTS, NUMPY_DTYPES, WIRE_DTYPES, input_array

WIRE_OF_NUMPY = {np.dtype(NUMPY_DTYPES[t]): wire for t, wire in WIRE_DTYPES.items()}


def tensor(name: str, value, dtype=None) -> InferInput:
    """Input ``name`` holding ``value``, in the contract's dtype (``engine_contract``) unless
    ``dtype`` says otherwise; any shape, any name: tests send malformed requests this way."""
    if name not in INPUTS:
        array = np.asarray(value, dtype)
        array = array.reshape(1, -1) if array.ndim < 2 else array
        t = InferInput(name, list(array.shape), WIRE_OF_NUMPY[array.dtype])
        t.set_data_from_numpy(array)
        return t
    array = input_array(name, value if dtype is None else np.asarray(value, dtype))
    if dtype is not None:
        array = array.astype(dtype)
    t = InferInput(name, list(array.shape), WIRE_OF_NUMPY[array.dtype] if dtype is not None else INPUTS[name].wire_dtype)
    t.set_data_from_numpy(array)
    return t


def request_inputs(prompt, max_tokens, streaming=True, **extra) -> list[InferInput]:
    """A request with temperature 0 (unless given), perf metrics and token counts; ``extra``:
    more inputs by their contract names."""
    values = {"input_ids": prompt, "input_lengths": len(prompt), "request_output_len": max_tokens,
              "streaming": streaming, "exclude_input_in_output": True, "temperature": 0.0,
              "return_perf_metrics": True, "return_num_input_tokens": True, "return_num_output_tokens": True}
    values.update(extra)
    return [tensor(name, value) for name, value in values.items()]


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    responses: int = 0
    finals: int = 0
    error: str | None = None
    reused_blocks: int = -1
    num_input_tokens: int = -1
    output_counts: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    ttft_engine_ms: float = -1.0
    arrivals: list[tuple[float, list[int]]] = field(default_factory=list)  # (perf_counter, tokens) per response
    # (perf_counter, prompt tokens taken in) per prefill progress report (``return_prefill_progress``)
    progress: list[tuple[float, int]] = field(default_factory=list)

    def take(self, response) -> bool:
        """Record one response of this request; True if it is the request's final one."""
        self.responses += 1
        new = response.as_numpy("output_ids").reshape(-1).tolist()
        self.tokens.extend(new)
        if new:
            self.arrivals.append((time.perf_counter(), new))
        if response.as_numpy("num_output_tokens") is not None:
            self.output_counts.append(int(response.as_numpy("num_output_tokens").reshape(-1)[0]))
        if response.as_numpy("output_log_probs") is not None:
            self.log_probs.extend(response.as_numpy("output_log_probs").reshape(-1).tolist())
        self.reused_blocks = int(response.as_numpy("kv_cache_reused_blocks").reshape(-1)[0])
        self.num_input_tokens = int(response.as_numpy("num_input_tokens").reshape(-1)[0])
        first = response.as_numpy("first_token_time_ns").reshape(-1)[0]
        final = response.get_response().parameters.get("triton_final_response")
        final = final is not None and final.bool_param
        if not new and not final and first == 0:  # a prefill progress report: no token yet
            self.progress.append((time.perf_counter(), int(response.as_numpy("sequence_length").reshape(-1)[0])))
            return False
        self.ttft_engine_ms = (first - response.as_numpy("arrival_time_ns").reshape(-1)[0]) / 1e6
        return final


async def generate(url: str, model: str, inputs: list[InferInput], stop_after: int | None = None,
                   request_id: str = "", result: Result | None = None) -> Result:
    """Run one request on its own gRPC stream; ``stop_after`` cancels after that many
    responses. Otherwise the stream is read to its end: the request iterator ends
    (the client half-closes) and Triton closes the stream after the final response.
    Cancelling a stream whose request already finished can leave Triton's stream
    handler waiting for a cancellation callback that never comes, which then blocks
    the model's unload at shutdown (seen with this Triton build). ``result``: filled in
    as responses arrive, for a caller that watches a stream while it runs."""
    client = grpcaio.InferenceServerClient(url)
    result = Result() if result is None else result

    async def requests():
        yield {"model_name": model, "inputs": inputs, "request_id": request_id}

    stream = client.stream_infer(requests())
    try:
        async for response, error in stream:
            if error is not None:
                result.error = str(error)
                continue
            if result.take(response):
                result.finals += 1
                continue
            if stop_after is not None and result.responses >= stop_after:
                stream.cancel()
                break
    finally:
        await client.close()
    return result


async def generate_in_order(url: str, model: str, requests: list[list[InferInput]]) -> tuple[list[Result], list[str]]:
    """Run several requests on one gRPC stream, sent in this order: Triton hands a stream's
    requests to the model in the order they came, so they reach the engine in that order
    (requests on streams of their own may overtake one another). Returns each request's
    result and the error messages: Triton's client drops the request id of an error
    response, so errors are not attributed (a request with no final response had one). The
    stream is read to its end, as ``generate`` reads it."""
    client = grpcaio.InferenceServerClient(url)
    ids = [f"in-order-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(requests))]
    results = {request_id: Result() for request_id in ids}
    errors: list[str] = []

    async def send():
        for request_id, inputs in zip(ids, requests):
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

    try:
        async for response, error in client.stream_infer(send()):
            if error is not None:
                errors.append(str(error))
            else:
                result = results[response.get_response().id]
                result.finals += result.take(response)
    finally:
        await client.close()
    return [results[request_id] for request_id in ids], errors


def never_seen_prompt(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` token ids of never-seen text, from its first block on (it starts with a
    random salt): the engine prefills every one of them. No chat template: the engine takes
    any ids, and a prompt can be as short as a bound in seconds needs on a slow CPU."""
    salt = uuid.uuid4().hex
    words = " ".join(f"{salt[i % 32]}{w}" for i, w in enumerate(("alpha bravo charlie delta echo " * 4000).split()))
    ids = tokenizer.encode(f"{salt} {words}", add_special_tokens=False).ids[:n_tokens]
    assert len(ids) == n_tokens, f"never_seen_prompt makes at most {len(ids)} tokens"
    return ids


async def measure_prefill_seconds_per_token(settings, tokenizer, model: str = "electron_cpu",
                                           n_tokens: int = 256) -> float:
    """What a prompt token costs this engine now: a never-seen prompt of ``n_tokens`` tokens
    prefilled alone on the idle engine (in its own short steps, as a prompt with
    nothing beside it goes), its engine time to first token over its length. Scenarios whose
    outcome turns on a bound in seconds (the overload bound) size their prompts from it, so
    that they hold on a CPU twice as fast or twice as slow as this one, and under load."""
    wait_until_engine_idle(settings.triton_metrics_port)
    prompt = never_seen_prompt(tokenizer, n_tokens)
    measured = await generate(settings.triton_grpc_url, model, request_inputs(prompt, 1))
    assert measured.error is None and measured.ttft_engine_ms > 0, measured.error
    assert measured.reused_blocks == 0, "the measured prompt was in the prefix cache"
    return measured.ttft_engine_ms / 1e3 / len(prompt)


def prefill_seconds_per_token(settings, tokenizer, **options) -> float:
    """``measure_prefill_seconds_per_token`` from a test that runs no event loop."""
    return asyncio.run(measure_prefill_seconds_per_token(settings, tokenizer, **options))


def wait_until_engine_idle(metrics_port: int, timeout_s: float = 120.0) -> None:
    """Block until the engine runs and queues nothing (requests other tests abandoned
    still decode for a while). Temperature-0 comparisons need it: the same prompt
    decoded alone and in a batch of other sequences can flip a near-tie."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = read_metrics(metrics_port)
        if values.get("electron_engine_running", 1) == 0 and values.get("electron_engine_waiting", 1) == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine is still busy after {timeout_s:.0f} s: {values}")
        time.sleep(0.25)


def run(coro):
    return asyncio.run(coro)


def read_metrics(port: int) -> dict[str, float]:
    """electron_engine_* values from Triton's metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"(electron_engine_\w+)\{[^}]*\} ([0-9.e+-]+)", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values
