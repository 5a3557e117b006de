"""``Engine`` over Triton's gRPC API: one bidirectional stream per request.

Inputs and outputs are TensorRT-LLM's ``tensorrt_llm`` names (see the engine
contract in ``../shared/design.md``), so the same code drives the CPU model and a
TensorRT-LLM engine. The request is always sent with ``streaming`` on, also for
non-streaming HTTP responses: stop strings need the text as it comes.

A stream is read to its end after the final response (the request iterator
ends, Triton closes the stream). It is cancelled only while the request is
still generating: cancelling a stream whose request already finished can leave
Triton 2.51's stream handler waiting forever (see the README, "Known issues").

A model whose python backend process died (``dead_model``) is reported as
unavailable (503), never as an engine error: its live requests end at once and
the engine is unready until the model answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from gateway.engine.dead_model import PROBE, PROBE_REQUEST_ID, DeadModelGuard, is_dead_model_error
from gateway.engine.protocol import EngineInfo, EngineOutput, EngineRequest
from gateway.errors import (APIError, EngineError, EngineTimeoutError, EngineUnavailableError,
                               ServerOverloadedError)

log = logging.getLogger(__name__)

OVERLOADED = "server_overloaded"  # the engine's refusal of a request it cannot start in time

_DTYPES = {np.int32: "INT32", np.float32: "FP32", np.uint64: "UINT64", np.bool_: "BOOL"}
# Triton's words for "this model cannot take requests now".
_NOT_SERVING = ("unknown model", "is not found", "not ready", "unavailable", "no available versions")


def _tensor(name: str, value, dtype) -> InferInput:
    array = np.asarray(value, dtype=dtype).reshape(1, -1)
    tensor = InferInput(name, list(array.shape), _DTYPES[np.dtype(dtype).type])
    tensor.set_data_from_numpy(array)
    return tensor


def request_inputs(request: EngineRequest, vocab_size: int, paces_playback: bool = False,
                   reports_prefill: bool = False) -> list[InferInput]:
    """``paces_playback``, ``reports_prefill``: the model declares the ``playback_chars_per_s``,
    ``return_prefill_progress`` inputs (Triton refuses inputs a model does not declare)."""
    inputs = [
        _tensor("input_ids", request.prompt, np.int32),
        _tensor("input_lengths", len(request.prompt), np.int32),
        _tensor("request_output_len", request.max_tokens, np.int32),
        _tensor("streaming", True, np.bool_),
        _tensor("exclude_input_in_output", True, np.bool_),
        _tensor("temperature", request.temperature, np.float32),
        _tensor("runtime_top_p", request.top_p, np.float32),
        _tensor("runtime_top_k", request.top_k, np.int32),
        _tensor("presence_penalty", request.presence_penalty, np.float32),
        _tensor("frequency_penalty", request.frequency_penalty, np.float32),
        _tensor("repetition_penalty", request.repetition_penalty, np.float32),
        _tensor("min_tokens", request.min_tokens, np.int32),
        _tensor("return_log_probs", request.logprobs, np.bool_),
        _tensor("return_perf_metrics", True, np.bool_),
    ]
    if request.end_id is not None:
        inputs.append(_tensor("end_id", request.end_id, np.int32))
    if request.pad_id is not None:
        inputs.append(_tensor("pad_id", request.pad_id, np.int32))
    if request.seed is not None:
        inputs.append(_tensor("seed", request.seed, np.uint64))
    if request.logit_bias:
        bias = np.zeros(vocab_size, np.float32)
        for token_id, value in request.logit_bias.items():
            bias[token_id] = value
        inputs.append(_tensor("embedding_bias", bias, np.float32))
    if request.guide_type is not None:
        inputs.append(_text_tensor("guided_decoding_guide_type", request.guide_type))
        inputs.append(_text_tensor("guided_decoding_guide", request.guide or ""))
    if paces_playback and request.playback_chars_per_s > 0:
        inputs.append(_tensor("playback_chars_per_s", request.playback_chars_per_s, np.float32))
    if reports_prefill:
        inputs.append(_tensor("return_prefill_progress", True, np.bool_))
    return inputs


def _text_tensor(name: str, text: str) -> InferInput:
    array = np.array([[text.encode("utf-8")]], dtype=np.object_)
    tensor = InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _scalar(result, name: str) -> int | None:
    array = result.as_numpy(name)
    return None if array is None else int(array.reshape(-1)[0])


def parse_output(result, first: bool = False) -> EngineOutput:
    """One response. ``first``: no response with tokens came before; the perf metrics
    (reused KV blocks, the engine's time to first token) are read from the first one
    with tokens, or from the final one if none has any, off the per-token path."""
    tokens = result.as_numpy("output_ids").reshape(-1).tolist()
    logprobs = result.as_numpy("output_log_probs")
    flag = result.get_response().parameters.get("triton_final_response")
    final = bool(flag is not None and flag.bool_param)
    if not tokens and not final:  # a prefill progress report (``return_prefill_progress``)
        return EngineOutput(token_ids=[], reused_blocks=_scalar(result, "kv_cache_reused_blocks"),
                            prefilled_tokens=_scalar(result, "sequence_length"))
    reused_blocks = engine_ttft_ms = None
    if first and (tokens or final):
        reused_blocks = _scalar(result, "kv_cache_reused_blocks")
        arrival, first_token = _scalar(result, "arrival_time_ns"), _scalar(result, "first_token_time_ns")
        if arrival and first_token:
            engine_ttft_ms = (first_token - arrival) / 1e6
    return EngineOutput(
        token_ids=tokens,
        logprobs=None if logprobs is None else logprobs.reshape(-1)[:len(tokens)].tolist(),
        final=final,
        reused_blocks=reused_blocks,
        engine_ttft_ms=engine_ttft_ms,
    )


# tritonclient's defaults, plus a short reconnect backoff: gRPC's default grows to 120 s, so a
# gateway would go on failing for minutes after a restarted Triton is back.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _not_serving(message: str) -> bool:
    lowered = message.lower()
    return any(words in lowered for words in _NOT_SERVING)


class IdleWatchdog:
    """Calls ``on_idle`` once if ``touch`` has not been called for ``idle_s`` seconds.
    Checked by a timer a few times per ``idle_s``; ``touch`` (per engine output) is
    one clock read."""

    def __init__(self, idle_s: float, on_idle) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle_s = idle_s
        self._on_idle = on_idle
        self._last = self._loop.time()
        self.fired = False
        self._handle = self._loop.call_later(idle_s / 4, self._check) if idle_s > 0 else None

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        if self._loop.time() - self._last >= self._idle_s:
            self.fired = True
            self._handle = None
            self._on_idle()
        else:
            self._handle = self._loop.call_later(self._idle_s / 4, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class TritonEngine:
    def __init__(self, url: str, model: str, vocab_size: int, timeout_s: float = 2.0,
                 idle_timeout_s: float = 30.0) -> None:
        self._idle_timeout_s = idle_timeout_s
        self._url = url
        self._model = model
        self._vocab_size = vocab_size
        self._timeout_s = timeout_s
        self._client: grpcaio.InferenceServerClient | None = None
        self._info: EngineInfo | None = None
        self._dead = DeadModelGuard()

    @property
    def client(self) -> grpcaio.InferenceServerClient:
        # created lazily: the gRPC channel belongs to the running event loop
        if self._client is None:
            self._client = grpcaio.InferenceServerClient(self._url, channel_args=CHANNEL_ARGS)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self) -> bool:
        """Triton's model readiness; while the model is marked dead, also a one-token request."""
        try:
            if not await self.client.is_model_ready(self._model, client_timeout=self._timeout_s):
                return False
        except InferenceServerException:
            return False
        return not self._dead.dead or await self._probe()

    async def _probe(self) -> bool:
        """Any answer but the dead model's, within ``timeout_s``, means the model is back."""
        async def first_answer() -> None:
            async for _output in self.generate(PROBE, PROBE_REQUEST_ID):
                pass

        try:
            await asyncio.wait_for(first_answer(), self._timeout_s)
        except (EngineUnavailableError, asyncio.TimeoutError):
            return False
        except APIError:  # overloaded, or failed otherwise: a live model answered
            self._dead.seen_alive()
        return not self._dead.dead

    async def info(self) -> EngineInfo:
        if self._info is None:
            try:
                config = await self.client.get_model_config(self._model, as_json=True,
                                                            client_timeout=self._timeout_s)
            except InferenceServerException as exc:
                raise EngineUnavailableError(
                    f"The model server at {self._url} cannot serve '{self._model}' now: {exc.message()}") from exc
            params = config.get("config", {}).get("parameters", {})
            inputs = {i.get("name") for i in config.get("config", {}).get("input", [])}
            value = lambda key: params.get(key, {}).get("string_value", "")  # noqa: E731
            max_length = value("max_sequence_length")
            self._info = EngineInfo(
                tokens_per_block=int(value("tokens_per_block") or 0),
                max_sequence_length=int(max_length) if max_length.isdigit() and int(max_length) > 0 else None,
                paces_playback="playback_chars_per_s" in inputs,
                reports_prefill="return_prefill_progress" in inputs,
                guide_backend=value("guided_decoding_backend") or "llguidance",
            )
        return self._info

    async def generate(self, request: EngineRequest, request_id: str) -> AsyncIterator[EngineOutput]:
        info = self._info
        inputs = request_inputs(request, self._vocab_size, info is not None and info.paces_playback,
                                info is not None and info.reports_prefill)

        async def one_request():
            yield {"model_name": self._model, "inputs": inputs, "request_id": request_id}

        started = time.perf_counter()
        call = self.client.stream_infer(one_request())
        watchdog = IdleWatchdog(self._idle_timeout_s, call.cancel)
        live = self._dead.track(call)  # cancelled if the model dies under it: no response would come
        finished = seen_tokens = False
        failure: Exception | None = None
        try:
            async for result, error in call:
                watchdog.touch()
                if error is not None:
                    # an error response is the request's last: read on to the stream's end
                    finished = True
                    self._dead.untrack(live)
                    failure = failure or self._error(error.message())
                    continue
                if self._dead.dead:
                    self._dead.seen_alive()
                output = parse_output(result, first=not seen_tokens)
                seen_tokens = seen_tokens or bool(output.token_ids)
                finished = finished or output.final
                yield output
        except asyncio.CancelledError:
            if live.aborted:
                finished = True
                raise EngineUnavailableError(f"The model '{self._model}' lost its engine process while "
                                             "generating; retry in a moment.") from None
            if not watchdog.fired:
                raise  # our own task is being cancelled (client gone, shutdown)
            finished = True  # the watchdog cancelled the call
            log.warning("engine produced nothing for %.0f s: request cancelled", self._idle_timeout_s)
            raise EngineTimeoutError(f"The engine produced no token for {self._idle_timeout_s:g} s; the request "
                                     "was cancelled.") from None
        except grpc.aio.AioRpcError as exc:
            finished = True  # the stream is gone: nothing to cancel
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise EngineUnavailableError(
                    f"The model server at {self._url} is unreachable: {exc.details()}") from exc
            raise EngineError(f"The engine stream failed: {exc.code().name} {exc.details()}") from exc
        finally:
            watchdog.stop()
            self._dead.untrack(live)
            if not finished:
                call.cancel()
                log.info("engine request cancelled after %.1f ms", (time.perf_counter() - started) * 1e3)
        if failure is not None:
            raise failure

    def _error(self, message: str) -> Exception:
        if OVERLOADED in message:
            return ServerOverloadedError("The server is at capacity and could not start this request in time; "
                                         "retry on another replica or in a moment.")
        if _not_serving(message):
            return EngineUnavailableError(f"The model '{self._model}' is not ready: {message}")
        if is_dead_model_error(message):
            self._dead.seen_dead(message)
            return EngineUnavailableError(f"The model '{self._model}' lost its engine process and must be "
                                          f"restarted; retry in a moment ({message})")
        return EngineError(f"The engine failed the request: {message}")
