"""``Engine`` over Triton's gRPC API: one bidirectional stream per request.

Inputs and outputs are TensorRT-LLM's ``tensorrt_llm`` names (see the engine
contract, ``engine_contract``; docs/engine-contract.md), so the same code drives the CPU model and a
TensorRT-LLM engine. The request is always sent with ``streaming`` on, also for
non-streaming HTTP responses: stop strings need the text as it comes.

A stream is read to its end after the final response (the request iterator
ends, Triton closes the stream). It is cancelled only while the request is
still generating: cancelling a stream whose request already finished can leave
Triton 2.51's stream handler waiting forever (docs/operations.md, "Known issues").

A model whose python backend process died (``dead_model``) is reported as
unavailable (503), never as an engine error: its live requests end at once and
the engine is unready until the model answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Collection

import grpc
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from engine_contract import (INPUTS, ContractRequest, decode_perf, decode_response, decode_tokens, encode_request,
                             is_overloaded)
from gateway.engine.dead_model import PROBE, PROBE_REQUEST_ID, DeadModelGuard, is_dead_model_error
from gateway.engine.protocol import EngineInfo, EngineOutput, EngineRequest, EngineTimes
from gateway.errors import (APIError, EngineError, EngineTimeoutError, EngineUnavailableError,
                               ServerOverloadedError)

log = logging.getLogger(__name__)

# Triton's words for "this model cannot take requests now".
_NOT_SERVING = ("unknown model", "is not found", "not ready", "unavailable", "no available versions")


def contract_request(request: EngineRequest, reports_prefill: bool = False) -> ContractRequest:
    """The gateway's request in the contract's terms. Always streamed (stop strings need the
    text as it comes), without the prompt in the output, with perf metrics (the reused
    prefix and the engine's time to first token)."""
    return ContractRequest(
        prompt=tuple(request.prompt), max_new_tokens=request.max_tokens, end_id=request.end_id,
        pad_id=request.pad_id, streaming=True, exclude_input_in_output=True, temperature=request.temperature,
        top_p=request.top_p, top_k=request.top_k, seed=request.seed, presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty, repetition_penalty=request.repetition_penalty,
        min_tokens=request.min_tokens, logit_bias=request.logit_bias, return_log_probs=request.logprobs,
        return_perf_metrics=True,
        guide=None if request.guide_type is None else (request.guide_type, request.guide or ""),
        playback_chars_per_s=request.playback_chars_per_s, return_prefill_progress=reports_prefill)


_SHARED_INPUTS = frozenset(name for name, spec in INPUTS.items() if not spec.cpu_only)


def request_inputs(request: EngineRequest, vocab_size: int, declared: Collection[str] = _SHARED_INPUTS,
                   reports_prefill: bool = False) -> list[InferInput]:
    """``declared``: the inputs the model declares (``EngineInfo.declared_inputs``; Triton refuses
    others: the CPU-only ``playback_chars_per_s`` and ``return_prefill_progress`` go only to a
    model that has them; before the model's config is read, the shared ones)."""
    arrays = encode_request(contract_request(request, reports_prefill), vocab_size, declared)
    inputs = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), INPUTS[name].wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def parse_output(result, first: bool = False) -> EngineOutput:
    """One response. ``first``: no response with tokens came before; the perf metrics
    (reused KV blocks, the engine's time to first token) are read from the first one
    with tokens, or from the final one if none has any, off the per-token path."""
    tokens, logprobs = decode_tokens(result.as_numpy)
    flag = result.get_response().parameters.get("triton_final_response")
    final = bool(flag is not None and flag.bool_param)
    if not tokens and not final:  # a prefill progress report (``return_prefill_progress``)
        perf = decode_perf(result.as_numpy)
        return EngineOutput(token_ids=[], reused_blocks=None if perf is None else perf.reused_blocks,
                            prefilled_tokens=decode_response(result.as_numpy).sequence_length)
    reused_blocks = engine_times = None
    if first:
        perf = decode_perf(result.as_numpy)
        if perf is not None:
            reused_blocks = perf.reused_blocks
            engine_times = EngineTimes(perf.arrival_ns, perf.first_scheduled_ns, perf.first_token_ns)
    return EngineOutput(
        token_ids=tokens,
        logprobs=None if logprobs is None else logprobs[:len(tokens)],
        final=final,
        reused_blocks=reused_blocks,
        engine_times=engine_times,
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
                guide_backend=value("guided_decoding_backend") or "llguidance",
                # the shared inputs every model of the contract declares (tests/unit/contract), and the
                # CPU-only ones this model has
                declared_inputs=_SHARED_INPUTS | (frozenset(inputs) & frozenset(INPUTS)),
            )
        return self._info

    async def generate(self, request: EngineRequest, request_id: str) -> AsyncIterator[EngineOutput]:
        info = self._info
        inputs = request_inputs(request, self._vocab_size, _SHARED_INPUTS if info is None else info.declared_inputs,
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
        if is_overloaded(message):
            return ServerOverloadedError("The server is at capacity and could not start this request in time; "
                                         "retry on another replica or in a moment.")
        if _not_serving(message):
            return EngineUnavailableError(f"The model '{self._model}' is not ready: {message}")
        if is_dead_model_error(message):
            self._dead.seen_dead(message)
            return EngineUnavailableError(f"The model '{self._model}' lost its engine process and must be "
                                          f"restarted; retry in a moment ({message})")
        return EngineError(f"The engine failed the request: {message}")
