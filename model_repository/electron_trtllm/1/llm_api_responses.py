"""The LLM API's streamed outputs of one generation -> the contract's responses
(``ResponseBuilder``, with ``engine_contract.encode_response``), as electron_cpu sends them.
Plain data: nothing here imports TensorRT-LLM or torch."""

from __future__ import annotations

import datetime
import logging
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from engine_contract import ContractResponse, PerfMetrics, encode_response
from llm_api_request import LlmApiCall

log = logging.getLogger("electron_trtllm")


class StopWatcher:
    """Finds where a multi-token stop sequence ends in the generated tokens (the tail of
    the generated tokens so far equals a stop word, as electron_cpu checks)."""

    def __init__(self, sequences: tuple[tuple[int, ...], ...]):
        self._sequences = sequences
        self._keep = max((len(s) for s in sequences), default=1) - 1
        self._tail: list[int] = []

    def cut(self, new_tokens: list[int]) -> int | None:
        """How many of ``new_tokens`` to keep (the stop sequence included), or None when
        no stop sequence ends in them."""
        window = self._tail + list(new_tokens)
        for end in range(len(self._tail) + 1, len(window) + 1):
            if any(end >= len(s) and tuple(window[end - len(s):end]) == s for s in self._sequences):
                return end - len(self._tail)
        self._tail = window[max(0, len(window) - self._keep):] if self._keep else []
        return None


def duration_ns(value: Any) -> int:
    """A timing of RequestPerfMetrics in nanoseconds. The binding gives datetime.timedelta
    (on the LLM's steady clock: only differences mean anything); None before it is known."""
    if value is None:
        return 0
    if isinstance(value, datetime.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    if isinstance(value, numbers.Integral):
        return int(value)
    log.warning("unexpected perf-metrics timing %r (%s): reported as 0", value, type(value).__name__)
    return 0


def perf_from_metrics(metrics: Any) -> PerfMetrics | None:
    """``CompletionOutput.request_perf_metrics`` (RequestPerfMetrics) -> ``PerfMetrics``."""
    if metrics is None:
        return None
    kv, timing = getattr(metrics, "kv_cache_metrics", None), getattr(metrics, "timing_metrics", None)
    count = lambda name: int(getattr(kv, name, 0) or 0)  # noqa: E731
    at = lambda name: duration_ns(getattr(timing, name, None))  # noqa: E731
    return PerfMetrics(
        reused_blocks=count("num_reused_blocks"),
        new_blocks=count("num_new_allocated_blocks"),
        total_blocks=count("num_total_allocated_blocks"),
        arrival_ns=at("arrival_time"),
        first_scheduled_ns=at("first_scheduled_time"),
        first_token_ns=at("first_token_time"),
        last_token_ns=at("last_token_time"),
    )


def sampled_logprob(token: int, entry: Any) -> float:
    """The log probability of the sampled ``token`` from one position of
    ``CompletionOutput.logprobs``: a float, or (PyTorch backend) a dict token id ->
    Logprob of the top-k tokens. When the sampled token is not among the top k (sampling
    at temperature > 0 with logprobs=1), the smallest logprob returned is given: an upper
    bound of the true value, as the sampled token ranked below all of them."""
    if isinstance(entry, Mapping):
        if token in entry:
            return float(_logprob_value(entry[token]))
        return min((float(_logprob_value(v)) for v in entry.values()), default=0.0)
    return float(entry)


def _logprob_value(value: Any) -> float:
    return value.logprob if hasattr(value, "logprob") else value


@dataclass(frozen=True)
class Step:
    """What one LLM API output asks of model.py."""

    arrays: dict[str, np.ndarray] | None  # a response to send now (None: nothing yet)
    final: bool  # the response is the request's last
    abort: bool  # a stop sequence ended the output: abort the generation


class ResponseBuilder:
    """Turns the successive outputs of one generation (``RequestOutput.outputs[0]``, a
    CompletionOutput whose ``token_ids`` grow) into contract responses: new tokens when
    streaming, else one response with all of them (the prompt first unless
    ``exclude_input_in_output``), as electron_cpu sends them."""

    def __init__(self, call: LlmApiCall, end_id: int | None):
        self._call = call
        self._end_id = end_id
        self._watcher = StopWatcher(call.stop_sequences) if call.stop_sequences else None
        self._generated: list[int] = []
        self._log_probs: list[float] = []
        self._seen = 0  # tokens of output.token_ids read so far
        self._sent = 0  # of self._generated, sent so far
        self._perf = PerfMetrics()

    def step(self, output: Any, finished: bool) -> Step:
        token_ids = list(output.token_ids)
        new = token_ids[self._seen:]
        log_probs = self._new_log_probs(output, new)
        self._seen = len(token_ids)
        stopped = False
        if self._watcher is not None and new:
            cut = self._watcher.cut(new)
            if cut is not None:
                new, log_probs, stopped = new[:cut], log_probs[:cut], True
        if finished and not stopped and self._ended_by_end_id(output, new):
            new, log_probs = new[:-1], log_probs[:-1]  # the end id is not output (as electron_cpu)
        self._generated += new
        self._log_probs += log_probs
        if self._call.return_perf_metrics:
            self._perf = perf_from_metrics(getattr(output, "request_perf_metrics", None)) or self._perf
        final = finished or stopped
        if not final and not (self._call.streaming and self._sent < len(self._generated)):
            return Step(None, final=False, abort=False)
        return Step(self.arrays(), final=final, abort=stopped and not finished)

    def arrays(self) -> dict[str, np.ndarray]:
        """The response for what was generated since the last one (streaming) or so far."""
        call, generated = self._call, self._generated
        tokens = generated[self._sent:] if call.streaming else generated
        log_probs = self._log_probs[self._sent:] if call.streaming else self._log_probs
        if not call.streaming and not call.exclude_input_in_output:
            tokens = list(call.prompt) + tokens
        self._sent = len(generated)
        with_prompt = not call.streaming and not call.exclude_input_in_output
        return encode_response(ContractResponse(
            output_ids=tokens,
            sequence_length=len(call.prompt) + len(generated),
            log_probs=log_probs if call.return_log_probs else None,
            num_input_tokens=len(call.prompt) if call.return_num_input_tokens else None,
            num_output_tokens=len(tokens) - (len(call.prompt) if with_prompt else 0)
            if call.return_num_output_tokens else None,
            perf=self._perf if call.return_perf_metrics else None,
        ))

    def _new_log_probs(self, output: Any, new: list[int]) -> list[float]:
        if not self._call.return_log_probs or not new:
            return []
        entries = list(output.logprobs or [])[self._seen:self._seen + len(new)]
        if len(entries) < len(new):
            raise ValueError(f"the LLM API returned {len(entries)} log probabilities for {len(new)} new tokens")
        return [sampled_logprob(t, e) for t, e in zip(new, entries)]

    def _ended_by_end_id(self, output: Any, new: list[int]) -> bool:
        """The generation stopped at the end id and (depending on the backend) output it."""
        return (bool(new) and self._end_id is not None and new[-1] == self._end_id
                and getattr(output, "finish_reason", None) == "stop" and getattr(output, "stop_reason", None) is None)
