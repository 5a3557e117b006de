"""Reading and checking TensorRT-LLM-style request tensors."""

import numpy as np
import pytest

from engine_contract.request import decode_stop_words
from llama_engine.params import InvalidRequest, ModelLimits, parse_request

LIMITS = ModelLimits(vocab_size=100, max_sequence_length=64)


def tensors(**extra):
    base = {
        "input_ids": np.array([[1, 2, 3]], np.int32),
        "input_lengths": np.array([[3]], np.int32),
        "request_output_len": np.array([[8]], np.int32),
    }
    base.update(extra)
    return base


def test_defaults_and_values():
    req = parse_request(tensors(temperature=np.array([[0.0]], np.float32), seed=np.array([[7]], np.uint64),
                                streaming=np.array([[True]])), LIMITS)
    assert req.prompt == (1, 2, 3) and req.max_new_tokens == 8 and req.streaming
    assert req.sampling.greedy and req.sampling.seed == 7 and req.end_id is None


def test_scalars_reshaped_to_batch_only_are_accepted():
    req = parse_request(tensors(input_lengths=np.array([3], np.int32), request_output_len=np.array([4], np.int32)), LIMITS)
    assert req.max_new_tokens == 4


def test_stop_words_list_layout():
    # words [5, 6] and [7]: ids then cumulative end offsets, padded with -1
    array = np.array([[[5, 6, 7], [2, 3, -1]]], np.int32)
    assert decode_stop_words(array) == ((5, 6), (7,))


def test_embedding_bias_becomes_sparse_logit_bias():
    bias = np.zeros((1, 100), np.float32)
    bias[0, 42] = -np.inf
    bias[0, 7] = 2.5
    req = parse_request(tensors(embedding_bias=bias), LIMITS)
    assert req.sampling.logit_bias == {7: 2.5, 42: float("-inf")}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"input_ids": np.zeros((1, 0), np.int32), "input_lengths": np.array([[0]], np.int32)}, "empty"),
        ({"input_ids": np.array([[1, 100, 3]], np.int32)}, "outside the vocabulary"),
        ({"input_ids": np.array([[1, -1, 3]], np.int32)}, "outside the vocabulary"),
        ({"input_lengths": np.array([[5]], np.int32)}, "input_lengths is 5"),
        ({"request_output_len": np.array([[0]], np.int32)}, "at least 1"),
        ({"request_output_len": np.array([[62]], np.int32)}, "maximum sequence length of 64"),
        ({"input_ids": np.array([[1, 2, 3], [1, 2, 3]], np.int32)}, "batch size 2"),
        ({"temperature": np.array([[-1.0]], np.float32)}, "temperature"),
        ({"temperature": np.array([[np.nan]], np.float32)}, "finite"),
        ({"runtime_top_p": np.array([[0.0]], np.float32)}, "runtime_top_p"),
        ({"embedding_bias": np.zeros((1, 5), np.float32)}, "embedding_bias"),
        ({"stop_words_list": np.array([[[5, 6], [9, -1]]], np.int32)}, "bad offset"),
        ({"guided_decoding_guide_type": np.array([[b"yaml"]], object)}, "not one of json, json_schema"),
        ({"guided_decoding_guide_type": np.array([[b"regex"]], object)}, "needs a 'guided_decoding_guide'"),
        ({"guided_decoding_guide": np.array([[b"[a-z]+"]], object)}, "needs 'guided_decoding_guide_type'"),
    ],
)
def test_bad_input_is_rejected_with_a_message_naming_it(extra, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_request(tensors(**extra), LIMITS)


def test_guide_inputs_are_read_as_text():
    req = parse_request(tensors(guided_decoding_guide_type=np.array([[b"json_schema"]], object),
                                guided_decoding_guide=np.array([['{"type": "object"}'.encode()]], object)), LIMITS)
    assert req.guide == ("json_schema", '{"type": "object"}')
    plain = parse_request(tensors(guided_decoding_guide_type=np.array([[b"json"]], object)), LIMITS)
    assert plain.guide == ("json", "") and parse_request(tensors(), LIMITS).guide is None


def test_missing_required_tensor():
    t = tensors()
    del t["request_output_len"]
    with pytest.raises(InvalidRequest, match="request_output_len"):
        parse_request(t, LIMITS)
