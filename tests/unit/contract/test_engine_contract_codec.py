"""engine_contract's encode and decode are each other's inverse, and decode checks every input."""

import numpy as np
import pytest

from engine_contract import (ContractRequest, ContractResponse, InvalidRequest, ModelLimits, Overloaded, PerfMetrics,
                             decode_request, decode_response, encode_request, encode_response, is_overloaded)
from engine_contract.tensors import INPUTS, OUTPUTS

LIMITS = ModelLimits(vocab_size=50, max_sequence_length=64)
# float fields hold values a float32 tensor carries exactly
FULL = ContractRequest(
    prompt=(1, 2, 3), max_new_tokens=5, end_id=2, pad_id=0, streaming=True, exclude_input_in_output=True,
    temperature=0.5, top_p=0.875, top_k=7, seed=2**63 + 5, presence_penalty=0.25, frequency_penalty=-0.5,
    repetition_penalty=1.25, min_tokens=2, logit_bias={4: -float("inf"), 9: 1.5}, stop_words=((5, 6), (7,)),
    guide=("regex", "[a-z]+"), return_log_probs=True, return_num_input_tokens=True, return_num_output_tokens=True,
    return_perf_metrics=True, playback_chars_per_s=14.5, return_prefill_progress=True)


def test_a_request_survives_encode_then_decode():
    arrays = encode_request(FULL, LIMITS.vocab_size)
    assert decode_request(arrays, LIMITS) == FULL
    for name, array in arrays.items():  # the contract's dtypes, the batch dimension first
        spec = INPUTS[name]
        assert array.dtype == spec.numpy_dtype and array.shape[0] == 1 and array.ndim == len(spec.dims) + 1, name


def test_a_bare_request_decodes_to_the_defaults():
    bare = ContractRequest(prompt=(3,), max_new_tokens=1)
    arrays = encode_request(bare, LIMITS.vocab_size)
    assert {"temperature", "runtime_top_k", "min_tokens"} <= set(arrays)  # sent even at their defaults
    assert "seed" not in arrays and "embedding_bias" not in arrays and "playback_chars_per_s" not in arrays
    assert decode_request(arrays, LIMITS) == bare
    assert decode_request({k: arrays[k] for k in ("input_ids", "request_output_len")}, LIMITS) == bare


def test_cpu_only_inputs_go_only_to_a_model_that_declares_them():
    declared = {s.name for s in INPUTS.values() if not s.cpu_only}
    arrays = encode_request(FULL, LIMITS.vocab_size, declared)
    assert "playback_chars_per_s" not in arrays and "return_prefill_progress" not in arrays
    assert set(arrays) <= declared


def _with(**changes):
    arrays = encode_request(ContractRequest(prompt=(1, 2), max_new_tokens=4), LIMITS.vocab_size)
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    return arrays


@pytest.mark.parametrize("changes, message", [
    ({"input_ids": None}, "'input_ids' is required"),
    ({"input_ids": np.array([[1, 99]], np.int32)}, "outside the vocabulary"),
    ({"input_ids": np.zeros((1, 0), np.int32), "input_lengths": np.array([[0]], np.int32)}, "empty"),
    ({"input_lengths": np.array([[-1]], np.int32)}, "input_lengths must be >= 0"),
    ({"input_lengths": np.array([[3]], np.int32)}, "input_lengths is 3"),
    ({"request_output_len": np.array([[0]], np.int32)}, "at least 1"),
    ({"request_output_len": np.array([[63]], np.int32)}, "maximum sequence length of 64"),
    ({"temperature": np.array([[np.nan]], np.float32)}, "'temperature' must be finite"),
    ({"temperature": np.array([[-1]], np.float32)}, "temperature must be >= 0"),
    ({"runtime_top_p": np.array([[0]], np.float32)}, "runtime_top_p"),
    ({"runtime_top_k": np.array([[-2]], np.int32)}, "runtime_top_k"),
    ({"repetition_penalty": np.array([[0]], np.float32)}, "repetition_penalty"),
    ({"min_tokens": np.array([[-1]], np.int32)}, "min_tokens"),
    ({"embedding_bias": np.zeros((1, 7), np.float32)}, "50 values"),
    ({"embedding_bias": np.full((1, 50), np.inf, np.float32)}, "NaN or \\+inf"),
    ({"stop_words_list": np.array([[1, 2]], np.int32)}, "shape \\[1, 2, N\\]"),
    ({"stop_words_list": np.array([[[1, 2], [3, -1]]], np.int32)}, "bad offset 3"),
    ({"guided_decoding_guide_type": np.array([[b"xml"]], np.object_)}, "not one of"),
    ({"guided_decoding_guide_type": np.array([[b"regex"]], np.object_)}, "needs a 'guided_decoding_guide'"),
    ({"guided_decoding_guide": np.array([[b"x"]], np.object_)}, "needs 'guided_decoding_guide_type'"),
    ({"guided_decoding_guide_type": np.array([[b"\xff"]], np.object_)}, "not UTF-8"),
    ({"playback_chars_per_s": np.array([[5000]], np.float32)}, "between 0 and 1000"),
    ({"temperature": np.array([[0.5, 0.5]], np.float32)}, "exactly one value"),
    ({"input_ids": np.array([[1, 2], [1, 2]], np.int32)}, "batch size 2"),
])
def test_decode_refuses_what_breaks_the_contract(changes, message):
    with pytest.raises(InvalidRequest, match=message):
        decode_request(_with(**changes), LIMITS)


def test_a_response_survives_encode_then_decode():
    full = ContractResponse(output_ids=[7, 8], sequence_length=9, log_probs=[-0.5, -1.0], num_input_tokens=7,
                            num_output_tokens=2, perf=PerfMetrics(3, 1, 4, 10, 11, 12, 13))
    arrays = encode_response(full)
    assert set(arrays) == set(OUTPUTS)
    assert arrays["output_ids"].shape == (1, 1, 2) and arrays["sequence_length"].shape == (1, 1)
    assert decode_response(arrays.get) == full
    bare = ContractResponse(output_ids=[], sequence_length=5)
    assert set(encode_response(bare)) == {"output_ids", "sequence_length"}
    assert decode_response(encode_response(bare).get) == bare


def test_overload_is_a_typed_error_read_back_from_its_message():
    refusal = Overloaded("the request would wait about 2.0 s")
    assert is_overloaded(str(refusal)) and str(refusal).startswith("server_overloaded: ")
    assert is_overloaded(f"[StatusCode.UNAVAILABLE] {refusal}")
    assert not is_overloaded("input 'temperature' must be finite")
