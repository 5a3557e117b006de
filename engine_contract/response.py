"""One response of a request: the typed form and its tensors, both ways.

``encode_response`` is every engine's side; ``decode_response`` the gateway's (and the
tests'). A streamed response holds the tokens new since the last one; a non-streamed
request gets one response with all of them. A response without tokens that is not the
final one is a prefill progress report (``return_prefill_progress``): its
``sequence_length`` is how many prompt tokens the engine has taken in so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from engine_contract.tensors import PERF_OUTPUTS, output_array


@dataclass(frozen=True)
class PerfMetrics:
    """``return_perf_metrics``: TensorRT-LLM's KV cache and timing figures."""
    reused_blocks: int = 0  # prefix-cache blocks this request reused
    new_blocks: int = 0
    total_blocks: int = 0
    arrival_ns: int = 0
    first_scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0


@dataclass(frozen=True)
class ContractResponse:
    output_ids: Sequence[int]
    sequence_length: int
    log_probs: Sequence[float] | None = None  # return_log_probs
    num_input_tokens: int | None = None  # return_num_input_tokens
    num_output_tokens: int | None = None  # return_num_output_tokens
    perf: PerfMetrics | None = None  # return_perf_metrics


def encode_response(response: ContractResponse) -> dict[str, np.ndarray]:
    """The output tensors of ``response``; the optional ones only when set."""
    out = {"output_ids": output_array("output_ids", list(response.output_ids)),
           "sequence_length": output_array("sequence_length", response.sequence_length)}
    if response.log_probs is not None:
        out["output_log_probs"] = output_array("output_log_probs", list(response.log_probs))
    if response.num_input_tokens is not None:
        out["num_input_tokens"] = output_array("num_input_tokens", response.num_input_tokens)
    if response.num_output_tokens is not None:
        out["num_output_tokens"] = output_array("num_output_tokens", response.num_output_tokens)
    if response.perf is not None:
        p = response.perf
        values = (p.reused_blocks, p.new_blocks, p.total_blocks, p.arrival_ns, p.first_scheduled_ns,
                  p.first_token_ns, p.last_token_ns)
        out.update({name: output_array(name, value) for name, value in zip(PERF_OUTPUTS, values)})
    return out


def _int(get: Callable[[str], np.ndarray | None], name: str) -> int | None:
    array = get(name)
    return None if array is None else int(array.reshape(-1)[0])


def decode_tokens(get: Callable[[str], np.ndarray | None]) -> tuple[list[int], list[float] | None]:
    """A response's new tokens and their log probabilities (None unless asked for): what
    the gateway reads of every response. ``get(name)``: the array of output ``name`` or
    None (``InferResult.as_numpy``, or ``dict.get`` of ``encode_response``'s dict)."""
    log_probs = get("output_log_probs")
    return get("output_ids").reshape(-1).tolist(), None if log_probs is None else log_probs.reshape(-1).tolist()


def decode_perf(get: Callable[[str], np.ndarray | None]) -> PerfMetrics | None:
    """The perf metrics when the response carries them (``kv_cache_reused_blocks``); the
    other perf outputs, when absent, read as 0."""
    if get("kv_cache_reused_blocks") is None:
        return None
    return PerfMetrics(*(_int(get, name) or 0 for name in PERF_OUTPUTS))


def decode_response(get: Callable[[str], np.ndarray | None]) -> ContractResponse:
    """A whole response from ``get(name)`` (see ``decode_tokens``)."""
    tokens, log_probs = decode_tokens(get)
    return ContractResponse(
        output_ids=tokens,
        sequence_length=_int(get, "sequence_length") or 0,
        log_probs=log_probs,
        num_input_tokens=_int(get, "num_input_tokens"),
        num_output_tokens=_int(get, "num_output_tokens"),
        perf=decode_perf(get),
    )
