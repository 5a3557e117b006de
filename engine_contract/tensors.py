"""Names, dtypes and dims of the contract's tensors, as data.

The names and types are TensorRT-LLM's ``tensorrt_llm`` model's, so that the gateway
drives the embedded CPU model and a TensorRT-LLM engine alike. Dims are per request,
without the batch dimension (every model has ``max_batch_size > 0`` and takes one
request per sequence, so arrays on the wire are ``[1, *dims]``). The ``config.pbtxt``
of each model is checked against these tables (tests/unit/contract/test_engine_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")  # TensorRT-LLM's guided decoding types

NUMPY_DTYPES = {"TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_UINT64": np.uint64,
                "TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_, "TYPE_STRING": np.object_}
WIRE_DTYPES = {"TYPE_INT32": "INT32", "TYPE_INT64": "INT64", "TYPE_UINT64": "UINT64", "TYPE_FP32": "FP32",
               "TYPE_BOOL": "BOOL", "TYPE_STRING": "BYTES"}  # the datatype strings of Triton's client


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's config name: TYPE_INT32, ...
    dims: tuple[int, ...]  # per request, without the batch dimension; -1: any length
    required: bool = False
    cpu_only: bool = False  # declared (optional) by the embedded CPU model only: sent only to a model
    # that declares it, since Triton refuses inputs a model does not declare

    @property
    def numpy_dtype(self):
        return NUMPY_DTYPES[self.data_type]

    @property
    def wire_dtype(self) -> str:
        return WIRE_DTYPES[self.data_type]


def _table(*specs: TensorSpec) -> dict[str, TensorSpec]:
    return {s.name: s for s in specs}


SCALAR = (1,)

INPUTS = _table(
    TensorSpec("input_ids", "TYPE_INT32", (-1,), required=True),
    TensorSpec("input_lengths", "TYPE_INT32", SCALAR, required=True),
    TensorSpec("request_output_len", "TYPE_INT32", SCALAR, required=True),
    TensorSpec("end_id", "TYPE_INT32", SCALAR),
    TensorSpec("pad_id", "TYPE_INT32", SCALAR),
    TensorSpec("streaming", "TYPE_BOOL", SCALAR),
    TensorSpec("exclude_input_in_output", "TYPE_BOOL", SCALAR),
    TensorSpec("temperature", "TYPE_FP32", SCALAR),
    TensorSpec("runtime_top_p", "TYPE_FP32", SCALAR),
    TensorSpec("runtime_top_k", "TYPE_INT32", SCALAR),
    TensorSpec("seed", "TYPE_UINT64", SCALAR),
    TensorSpec("presence_penalty", "TYPE_FP32", SCALAR),
    TensorSpec("frequency_penalty", "TYPE_FP32", SCALAR),
    TensorSpec("repetition_penalty", "TYPE_FP32", SCALAR),
    TensorSpec("min_tokens", "TYPE_INT32", SCALAR),
    TensorSpec("embedding_bias", "TYPE_FP32", (-1,)),  # [vocab]: an additive bias per token id
    TensorSpec("stop_words_list", "TYPE_INT32", (2, -1)),  # ids, then cumulative end offsets (-1 padded)
    TensorSpec("guided_decoding_guide_type", "TYPE_STRING", SCALAR),  # one of GUIDE_TYPES
    TensorSpec("guided_decoding_guide", "TYPE_STRING", SCALAR),
    TensorSpec("return_log_probs", "TYPE_BOOL", SCALAR),
    TensorSpec("return_num_input_tokens", "TYPE_BOOL", SCALAR),
    TensorSpec("return_num_output_tokens", "TYPE_BOOL", SCALAR),
    TensorSpec("return_perf_metrics", "TYPE_BOOL", SCALAR),
    TensorSpec("playback_chars_per_s", "TYPE_FP32", SCALAR, cpu_only=True),  # the client's playback pace
    TensorSpec("return_prefill_progress", "TYPE_BOOL", SCALAR, cpu_only=True),  # tokenless progress responses
)

OUTPUTS = _table(
    TensorSpec("output_ids", "TYPE_INT32", (-1, -1)),  # [beam, tokens]: the new tokens when streaming
    TensorSpec("sequence_length", "TYPE_INT32", (-1,)),  # prompt + generated (a progress report: prefilled)
    TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1)),
    TensorSpec("num_input_tokens", "TYPE_INT32", SCALAR),
    TensorSpec("num_output_tokens", "TYPE_INT32", SCALAR),
    TensorSpec("kv_cache_reused_blocks", "TYPE_INT32", SCALAR),
    TensorSpec("kv_cache_alloc_new_blocks", "TYPE_INT32", SCALAR),
    TensorSpec("kv_cache_alloc_total_blocks", "TYPE_INT32", SCALAR),
    TensorSpec("arrival_time_ns", "TYPE_INT64", SCALAR),
    TensorSpec("first_scheduled_time_ns", "TYPE_INT64", SCALAR),
    TensorSpec("first_token_time_ns", "TYPE_INT64", SCALAR),
    TensorSpec("last_token_time_ns", "TYPE_INT64", SCALAR),
)

PERF_OUTPUTS = ("kv_cache_reused_blocks", "kv_cache_alloc_new_blocks", "kv_cache_alloc_total_blocks",
                "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")


def input_array(name: str, value) -> np.ndarray:
    """``value`` as the wire array of input ``name``: the contract's dtype, the batch
    dimension first (a scalar becomes ``[1, 1]``, a list ``[1, N]``, a text ``[1, 1]``
    of UTF-8 bytes). An array that already has the batch dimension (one more than the
    contract's dims) is sent as it is, and so is any other shape with the batch
    dimension added: tests send malformed requests this way."""
    spec = INPUTS[name]
    if spec.data_type == "TYPE_STRING":
        return np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=np.object_)
    array = np.asarray(value, dtype=spec.numpy_dtype)
    if array.ndim == 0:
        return array.reshape(1, 1)
    return array if array.ndim == len(spec.dims) + 1 else array.reshape(1, *array.shape)


def output_array(name: str, value) -> np.ndarray:
    """``value`` as the wire array of output ``name`` (a scalar ``[1, 1]``; tokens ``[1, 1, N]``)."""
    spec = OUTPUTS[name]
    array = np.asarray(value, dtype=spec.numpy_dtype)
    if len(spec.dims) == 2:
        return array.reshape(1, 1, -1)
    return array.reshape(1, -1)
