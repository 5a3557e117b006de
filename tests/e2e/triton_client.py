"""A small async client of the engine contract for the end-to-end tests."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
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
            result.responses += 1
            new = response.as_numpy("output_ids").reshape(-1).tolist()
            result.tokens.extend(new)
            if new:
                result.arrivals.append((time.perf_counter(), new))
            if response.as_numpy("num_output_tokens") is not None:
                result.output_counts.append(int(response.as_numpy("num_output_tokens").reshape(-1)[0]))
            if response.as_numpy("output_log_probs") is not None:
                result.log_probs.extend(response.as_numpy("output_log_probs").reshape(-1).tolist())
            result.reused_blocks = int(response.as_numpy("kv_cache_reused_blocks").reshape(-1)[0])
            result.num_input_tokens = int(response.as_numpy("num_input_tokens").reshape(-1)[0])
            first = response.as_numpy("first_token_time_ns").reshape(-1)[0]
            sched = response.as_numpy("arrival_time_ns").reshape(-1)[0]
            result.ttft_engine_ms = (first - sched) / 1e6
            final = response.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                result.finals += 1
                continue
            if stop_after is not None and result.responses >= stop_after:
                stream.cancel()
                break
    finally:
        await client.close()
    return result


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
