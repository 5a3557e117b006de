"""The engine contract: the tensors the gateway and every engine exchange through Triton.

One source for the names, dtypes and dims (``tensors``), the typed request and its
symmetric encode/decode with every check (``request``), the response (``response``) and
the typed errors that cross the wire as messages (``errors``). The gateway, both Triton
models, the synthetic engine, the tests and the benchmarks import it; docs/engine-contract.md
describes it. It needs only numpy, so a model directory runs with it in any Triton image.
"""

from engine_contract.errors import InvalidRequest, Overloaded, is_overloaded
from engine_contract.request import ContractRequest, ModelLimits, decode_request, encode_request
from engine_contract.response import (ContractResponse, PerfMetrics, decode_perf, decode_response, decode_tokens,
                                      encode_response)
from engine_contract.tensors import GUIDE_TYPES, INPUTS, OUTPUTS, TensorSpec, input_array

__all__ = [
    "ContractRequest", "ContractResponse", "GUIDE_TYPES", "INPUTS", "InvalidRequest", "ModelLimits", "OUTPUTS",
    "Overloaded", "PerfMetrics", "TensorSpec", "decode_perf",
    "decode_request", "decode_response", "decode_tokens", "encode_request", "encode_response",
    "input_array", "is_overloaded",
]
