"""Triton Python-backend glue for electron_trtllm: TensorRT-LLM's LLM API (PyTorch
backend) behind the engine contract (decoupled, one instance).

Written for nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 (TensorRT-LLM 1.2.1) and
not run by this repository's tests (no GPU, no TensorRT-LLM here): the translation
between contract tensors and the LLM API lives in ``llm_api_request`` (request tensors ->
LLM API call), ``llm_api_responses`` (outputs -> contract responses) and ``llm_api_config``
(parameter file -> LLM arguments), unit-tested there. In-flight batching, the paged KV cache with block reuse, chunked
prefill and guided decoding are the LLM API's, configured by the parameter file.

Threads, so that no request waits on another's I/O:

* Triton's thread runs ``execute``: it checks each request's tensors and hands valid
  ones to the event loop, never waiting for a generation;
* one asyncio event loop, in a thread of its own, makes every ``LLM.generate_async``
  call and reads its streamed outputs (the LLM API binds a result's queue to the
  running loop that created it);
* one sender thread sends the responses through Triton, in order for each request, so
  that a slow send never stalls the loop;
* one cancellation thread asks Triton every ``cancellation_check_period_ms`` whether a
  live request was cancelled, and aborts its generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
import yaml
from tensorrt_llm.llmapi import LLM, GuidedDecodingParams, KvCacheConfig, SamplingParams

from engine_contract import InvalidRequest
from llm_api_config import check_advertised, check_quantization, llm_kwargs, log_level_of, vocab_size_of
from llm_api_request import Limits, LlmApiCall, parse_request
from llm_api_responses import ResponseBuilder

log = logging.getLogger("electron_trtllm")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


@dataclass(eq=False)
class _Live:
    """One request from ``execute`` to its final response. ``done`` is set, on the event
    loop, when the final response is queued: nothing is sent after it."""

    request_id: str
    request: Any  # kept alive until the final response, as electron_cpu does
    sender: Any
    call: LlmApiCall
    task: asyncio.Task | None = None
    generation: Any = None  # the LLM API's RequestOutput
    cancel_seen: bool = False
    done: bool = False


class _Sender:
    """Sends responses from a thread of its own, in the order they were queued."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="trtllm-sender", daemon=True)
        self._thread.start()

    def put(self, live: _Live, response: Any, final: bool) -> None:
        self._queue.put((live.request_id, live.sender, response, FINAL if final else 0))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            request_id, sender, response, flags = item
            try:
                if response is None:
                    sender.send(flags=flags)  # the final flag alone: Triton releases the request
                else:
                    sender.send(response, flags=flags)
            except Exception as exc:  # noqa: BLE001 - the client went away between two checks
                log.info("request %s: response not delivered (%s)", request_id, exc)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("electron_trtllm must be decoupled (model_transaction_policy)")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        unfilled = sorted(k for k, v in params.items() if "${" in v)
        if unfilled:
            raise pb_utils.TritonModelException(f"config.pbtxt parameters {unfilled} are unfilled ${{...}} placeholders")
        try:
            level = log_level_of(params)
        except ValueError as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        kwargs, self._limits = self._read_parameter_file(params)
        self._period_s = float(params.get("cancellation_check_period_ms", "20")) / 1000
        self._live: set[_Live] = set()
        self._lock = threading.Lock()
        kwargs["kv_cache_config"] = KvCacheConfig(**kwargs["kv_cache_config"])
        log.info("loading %s (this takes a while for a large checkpoint)", kwargs["model"])
        self._llm = LLM(**kwargs)
        self._sender = _Sender()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="trtllm-loop", daemon=True)
        self._loop_thread.start()
        self._stopping = threading.Event()
        self._canceller = threading.Thread(target=self._poll_cancellations, name="trtllm-cancel", daemon=True)
        self._canceller.start()
        log.info("engine ready: %s, %d tokens per block, max sequence %d tokens, vocabulary %d",
                 kwargs["model"], kwargs["kv_cache_config"].tokens_per_block, self._limits.max_sequence_length,
                 self._limits.vocab_size)

    def _read_parameter_file(self, params: dict[str, str]) -> tuple[dict[str, Any], Limits]:
        """The LLM's keyword arguments from the parameter file, checked against the
        config's advertised values and the checkpoint, and the limits of a request."""
        path = params.get("llm_api_config", "")
        try:
            with open(path) as f:
                file_config = yaml.safe_load(f)
            kwargs = llm_kwargs(file_config)
            check_advertised(kwargs, params.get("tokens_per_block", ""), params.get("max_sequence_length", ""))
            checkpoint = Path(kwargs["model"])
            check_quantization(file_config.get("quantization", "none"), _read_json(checkpoint / "hf_quant_config.json"))
            hf_config = _read_json(checkpoint / "config.json")
            if hf_config is None:
                raise ValueError(f"{checkpoint} has no config.json (a Hugging Face checkpoint directory)")
            limits = Limits(vocab_size=vocab_size_of(hf_config), max_sequence_length=int(kwargs["max_seq_len"]))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise pb_utils.TritonModelException(f"parameter file {path!r}: {exc}") from exc
        return kwargs, limits

    def execute(self, requests):
        for request in requests:
            request_id = request.request_id() or "-"
            sender = request.get_response_sender()
            try:
                call = parse_request({t.name(): t.as_numpy() for t in request.inputs()}, self._limits)
            except InvalidRequest as exc:
                log.info("request %s rejected: %s", request_id, exc)
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
                continue
            live = _Live(request_id, request, sender, call)
            with self._lock:
                self._live.add(live)
            self._loop.call_soon_threadsafe(self._launch, live)
        return None

    # ---- on the event loop ------------------------------------------------------------
    def _launch(self, live: _Live) -> None:
        if not live.done:  # else cancelled before it started
            live.task = self._loop.create_task(self._generate(live))

    async def _generate(self, live: _Live) -> None:
        call = live.call
        try:
            sampling = self._sampling_params(call)
            live.generation = self._llm.generate_async(list(call.prompt), sampling_params=sampling, streaming=True)
            # generate_async fills in end_id (from the tokenizer) when the request sent none
            builder = ResponseBuilder(call, end_id=sampling.end_id)
            async for output in live.generation:
                step = builder.step(output.outputs[0], output.finished)
                if step.abort:
                    live.generation.abort()  # a multi-token stop sequence ended the output
                if step.arrays is not None:
                    self._respond(live, step.arrays, step.final)
                if step.final:
                    return
            self._respond(live, builder.arrays(), final=True)  # the outputs ended without a finished one
        except asyncio.CancelledError:
            pass  # _cancel closed the request
        except Exception as exc:  # one request's failure (bad guide, engine error) ends only that request
            log.warning("request %s failed: %s", live.request_id, exc, exc_info=not isinstance(exc, ValueError))
            self._finish(live, pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")))

    def _sampling_params(self, call: LlmApiCall) -> SamplingParams:
        kwargs = dict(call.sampling)
        if call.guided_decoding is not None:
            kwargs["guided_decoding"] = GuidedDecodingParams(**call.guided_decoding)
        if call.embedding_bias is not None:
            kwargs["embedding_bias"] = torch.from_numpy(call.embedding_bias)  # float32 [vocab]
        return SamplingParams(**kwargs)

    def _respond(self, live: _Live, arrays: dict[str, np.ndarray], final: bool) -> None:
        response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in arrays.items()])
        if final:
            self._finish(live, response)
        elif not live.done:
            self._sender.put(live, response, final=False)

    def _finish(self, live: _Live, response: Any) -> None:
        """Queue the request's final response (None: the final flag alone) and let go of it."""
        if live.done:
            return
        live.done = True
        self._sender.put(live, response, final=True)
        live.request = None
        with self._lock:
            self._live.discard(live)

    def _cancel(self, live: _Live, error: str | None = None) -> None:
        """Abort ``live``'s generation and close the request: with the final flag alone when
        its client cancelled it (as electron_cpu), else with ``error``."""
        if live.done:
            return
        if live.generation is not None:
            try:
                live.generation.abort()
            except Exception:
                log.exception("request %s: abort failed", live.request_id)
        if live.task is not None:
            live.task.cancel()
        log.info("request %s %s", live.request_id, error or "cancelled by its client")
        self._finish(live, None if error is None else pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))

    # ---- cancellation thread ------------------------------------------------------------
    def _poll_cancellations(self) -> None:
        while not self._stopping.wait(self._period_s):
            with self._lock:
                live_now = [live for live in self._live if not live.cancel_seen]
            for live in live_now:
                try:
                    cancelled = live.sender.is_cancelled()
                except Exception:  # noqa: BLE001 - the request was released meanwhile
                    continue
                if cancelled:
                    live.cancel_seen = True
                    self._loop.call_soon_threadsafe(self._cancel, live)

    def finalize(self):
        self._stopping.set()
        self._canceller.join(timeout=2.0)

        async def close_all():
            lives = list(self._live)
            for live in lives:
                self._cancel(live, error="the model is unloading")
            tasks = [live.task for live in lives if live.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)  # let the cancelled tasks unwind

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=10.0)
        except Exception:
            log.exception("closing live requests failed")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10.0)
        self._sender.stop()
        self._llm.shutdown()
