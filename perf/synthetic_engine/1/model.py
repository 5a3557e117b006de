"""A synthetic engine for measuring the gateway's token relay alone.

A decoupled Triton Python model with the CPU engine's tensor contract (its
config is the CPU model's, rendered by ``perf/bench_relay.py``) that computes
nothing: each request streams ``request_output_len`` tokens at
``tokens_per_s`` (a model parameter), cycling through its own prompt's
ordinary token ids (so the text is real text). The first token goes at once and alone; after
it, with ``coalesce_ms`` > 0, the tokens due within each window go out as one
response, as the CPU engine does for streams ahead of their playhead.
"""

from __future__ import annotations

import heapq
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from engine_contract.tensors import output_array

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


class _Stream:
    def __init__(self, request, prompt: np.ndarray, total: int):
        self.request = request
        self.sender = request.get_response_sender()
        self.prompt = prompt
        self.total = total
        self.sent = 0
        self.arrival_ns = time.time_ns()
        self.first_token_ns = 0


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.tokens_per_s = float(params.get("tokens_per_s", "50"))
        self.coalesce_s = float(params.get("coalesce_ms", "0")) / 1000
        self._due: list[tuple[float, int, _Stream]] = []  # (when, tie-break, stream)
        self._count = 0
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def execute(self, requests):
        now = time.monotonic()
        with self._wake:
            for request in requests:
                prompt = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
                prompt = prompt[prompt > 16]  # no control tokens (SmolLM2's are ids 0-16): plain text
                if not prompt.size:
                    prompt = np.array([330], dtype=np.int32)
                stream = _Stream(request, prompt, int(_scalar(request, "request_output_len", 16)))
                self._count += 1
                heapq.heappush(self._due, (now, self._count, stream))
            self._wake.notify()
        return None

    def _loop(self):
        while True:
            with self._wake:
                while not self._stop and (not self._due or self._due[0][0] > time.monotonic()):
                    self._wake.wait(timeout=None if not self._due else max(self._due[0][0] - time.monotonic(), 0))
                if self._stop:
                    return
                _, _, stream = heapq.heappop(self._due)
            self._emit(stream)

    def _emit(self, stream: _Stream) -> None:
        if stream.request.is_cancelled():
            stream.sender.send(flags=FINAL)
            return
        now = time.monotonic()
        if stream.sent == 0:
            n, stream.first_token_ns = 1, time.time_ns()
        else:
            n = max(1, round(self.coalesce_s * self.tokens_per_s)) if self.coalesce_s else 1
        n = min(n, stream.total - stream.sent)
        ids = [int(stream.prompt[(stream.sent + i) % len(stream.prompt)]) for i in range(n)]
        stream.sent += n
        final = stream.sent >= stream.total
        # a subset of what the CPU engine sends, in the contract's dtypes and shapes
        values = {"output_ids": ids, "sequence_length": len(stream.prompt) + stream.sent, "num_output_tokens": n,
                  "kv_cache_reused_blocks": 0, "arrival_time_ns": stream.arrival_ns,
                  "first_token_time_ns": stream.first_token_ns}
        tensors = [pb_utils.Tensor(name, output_array(name, value)) for name, value in values.items()]
        response = pb_utils.InferenceResponse(output_tensors=tensors)
        if final:
            stream.sender.send(response, flags=FINAL)
            return
        stream.sender.send(response)
        with self._wake:
            self._count += 1
            heapq.heappush(self._due, (now + n / self.tokens_per_s, self._count, stream))

    def finalize(self):
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=2)
