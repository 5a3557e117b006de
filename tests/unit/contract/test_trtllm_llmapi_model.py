"""electron_trtllm, the Triton model on TensorRT-LLM's LLM API: not run on a GPU.

Neither a GPU nor TensorRT-LLM is here, so model.py is never imported. What is tested is
everything between the engine contract and the LLM API that needs neither:
``llm_api_request`` (request tensors -> SamplingParams / GuidedDecodingParams
keyword arguments), ``llm_api_responses`` (LLM API outputs -> contract responses),
``llm_api_config`` (parameter file -> LLM arguments), the parameter file llm_api.yaml and config.pbtxt. The LLM API is taken as
recorded from TensorRT-LLM's source in tests/data/trtllm_llm_api_1_2_1.json: the
translation may only use fields recorded there, with values of the declared types.
"""

from __future__ import annotations

import ast
import datetime
import importlib.util
import json
import re
import sys
from dataclasses import make_dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from tritonclient.grpc import model_config_pb2

from engine_contract.request import decode_stop_words
from tests.paths import DATA_DIR, ROOT
from tests.support.model_configs import CONTRACT_INPUTS, CONTRACT_OUTPUTS, load, table

MODEL_DIR = ROOT / "model_repository" / "electron_trtllm"
API = json.loads((DATA_DIR / "trtllm_llm_api_1_2_1.json").read_text())
TYPES = API["types"]


def _load(name: str):
    """A module of the model directory, by path (the stub has that directory on its path)."""
    if str(MODEL_DIR / "1") not in sys.path:
        sys.path.insert(0, str(MODEL_DIR / "1"))  # the modules import each other by name
    spec = importlib.util.spec_from_file_location(name, MODEL_DIR / "1" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


rq, rs, cf = _load("llm_api_request"), _load("llm_api_responses"), _load("llm_api_config")
LIMITS = rq.Limits(vocab_size=100, max_sequence_length=64)
VOCAB = LIMITS.vocab_size


# ---- declared types ---------------------------------------------------------------------

def _args(inner: str) -> list[str]:
    """Top-level comma-separated arguments of a type expression."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(inner[start:i].strip())
            start = i + 1
    return out + [inner[start:].strip()]


def _generic(declared: str, name: str) -> str | None:
    return declared[len(name) + 1:-1] if declared.startswith(name + "[") and declared.endswith("]") else None


# How a value of the translation stands for a declared type that is not plain data:
# model.py turns the float32 vector into a tensor (torch.from_numpy) and the mappings into
# GuidedDecodingParams(**kw) / KvCacheConfig(**kw), whose fields are checked on their own.
STANDS_FOR = {
    "torch.Tensor": lambda v: isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 1,
    "GuidedDecodingParams": lambda v: isinstance(v, dict),
    "KvCacheConfig": lambda v: isinstance(v, dict),
}
PLAIN = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "Path": lambda v: isinstance(v, str),  # a path given as text
}


def conforms(value, declared: str) -> bool:
    declared = declared.strip()
    if (inner := _generic(declared, "Optional")) is not None:
        return value is None or conforms(value, inner)
    if (inner := _generic(declared, "Union")) is not None:
        return any(conforms(value, a) for a in _args(inner))
    if (inner := _generic(declared, "List")) is not None:
        return isinstance(value, list) and all(conforms(v, inner) for v in value)
    if (inner := _generic(declared, "Literal")) is not None:
        return value in [ast.literal_eval(a) for a in _args(inner)]
    check = PLAIN.get(declared) or STANDS_FOR.get(declared)
    return bool(check and check(value))


def assert_recorded(kwargs: dict, type_name: str) -> None:
    fields = TYPES[type_name]["fields"]
    for name, value in kwargs.items():
        assert name in fields, f"{type_name} has no field {name!r} in the recorded API"
        assert conforms(value, fields[name]["type"]), f"{type_name}.{name}={value!r} is not {fields[name]['type']}"


def test_conforms_reads_the_recorded_type_expressions():
    assert conforms(None, "Optional[int]") and conforms(3, "Optional[int]") and not conforms(True, "int")
    assert conforms([1, 2], "Optional[List[int]]") and not conforms([1.0], "List[int]")
    assert conforms("x", "Optional[Union[str, BaseModel, dict]]") and not conforms(3, "Optional[Union[str, dict]]")
    assert conforms("llguidance", "Optional[Literal['xgrammar', 'llguidance']]") and not conforms("x", "Literal['a']")
    assert not conforms(object(), "LogitsProcessor")  # a type the translation never produces


def test_every_recorded_type_names_its_source():
    for name, spec in TYPES.items():
        source = API["sources"][spec["source"]]
        assert source["repository"] == "NVIDIA/TensorRT-LLM", name
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and source["path"], name


# ---- request tensors -> LLM API call ------------------------------------------------------

def scalar(value, dtype):
    return np.array([[value]], dtype=dtype)


def text(value: str):
    return np.array([[value.encode()]], dtype=np.object_)


def stop_words(*words):
    ids = [t for w in words for t in w]
    offsets = list(np.cumsum([len(w) for w in words]))
    width = max(len(ids), len(offsets))
    rows = [ids + [0] * (width - len(ids)), offsets + [-1] * (width - len(offsets))]
    return np.array([rows], dtype=np.int32)


def tensors(**extra):
    base = {
        "input_ids": np.array([[1, 2, 3]], np.int32),
        "input_lengths": scalar(3, np.int32),
        "request_output_len": scalar(8, np.int32),
    }
    base.update(extra)
    return base


def full_request(**extra):
    bias = np.zeros((1, VOCAB), np.float32)
    bias[0, 7], bias[0, 9] = 2.5, -np.inf
    values = dict(
        end_id=scalar(2, np.int32), pad_id=scalar(0, np.int32), streaming=scalar(True, np.bool_),
        exclude_input_in_output=scalar(True, np.bool_), temperature=scalar(0.7, np.float32),
        runtime_top_p=scalar(0.9, np.float32), runtime_top_k=scalar(40, np.int32),
        seed=scalar(2**63 + 5, np.uint64), presence_penalty=scalar(0.5, np.float32),
        frequency_penalty=scalar(0.25, np.float32), repetition_penalty=scalar(1.1, np.float32),
        min_tokens=scalar(3, np.int32), embedding_bias=bias, stop_words_list=stop_words([5], [6, 7, 8]),
        return_log_probs=scalar(True, np.bool_), return_num_input_tokens=scalar(True, np.bool_),
        return_num_output_tokens=scalar(True, np.bool_), return_perf_metrics=scalar(True, np.bool_),
    )
    values.update(extra)
    return tensors(**values)


def test_translation_uses_only_recorded_fields_with_matching_types():
    for guide in (None, ("json_schema", '{"type": "object"}')):
        extra = {} if guide is None else {"guided_decoding_guide_type": text(guide[0]),
                                          "guided_decoding_guide": text(guide[1])}
        call = rq.parse_request(full_request(**extra), LIMITS)
        assert_recorded(call.sampling, "SamplingParams")
        assert_recorded({"embedding_bias": call.embedding_bias}, "SamplingParams")
        if call.guided_decoding is not None:
            assert_recorded({"guided_decoding": call.guided_decoding}, "SamplingParams")
            assert_recorded(call.guided_decoding, "GuidedDecodingParams")


def test_every_contract_input_maps_to_the_llm_api_call():
    call = rq.parse_request(full_request(), LIMITS)
    assert call.prompt == (1, 2, 3)
    assert call.sampling == {
        "max_tokens": 8, "end_id": 2, "pad_id": 0, "temperature": pytest.approx(0.7), "top_p": pytest.approx(0.9),
        "top_k": 40, "seed": 2**63 + 5, "presence_penalty": 0.5, "frequency_penalty": 0.25,
        "repetition_penalty": pytest.approx(1.1), "min_tokens": 3, "stop_token_ids": [5], "logprobs": 1,
        "return_perf_metrics": True, "detokenize": False, "include_stop_str_in_output": True,
    }
    assert call.stop_sequences == ((6, 7, 8),)
    assert call.embedding_bias.shape == (VOCAB,) and call.embedding_bias.dtype == np.float32
    assert call.embedding_bias[7] == 2.5 and np.isneginf(call.embedding_bias[9])
    assert call.streaming and call.exclude_input_in_output and call.return_log_probs
    assert call.return_num_input_tokens and call.return_num_output_tokens and call.return_perf_metrics
    assert set(CONTRACT_INPUTS) - {"input_ids", "input_lengths", "guided_decoding_guide_type", "guided_decoding_guide"} \
        <= set(full_request())  # the request above sends every other contract input


def test_absent_inputs_sample_at_temperature_one_as_electron_cpu():
    """All of temperature, top_p and top_k unset would make the LLM API decode greedily."""
    call = rq.parse_request(tensors(), LIMITS)
    sampling = call.sampling
    assert (sampling["temperature"], sampling["top_p"], sampling["top_k"]) == (1.0, 1.0, 0)
    for absent in ("seed", "end_id", "pad_id", "min_tokens", "stop_token_ids", "logprobs", "presence_penalty",
                   "frequency_penalty", "repetition_penalty"):
        assert absent not in sampling
    assert call.guided_decoding is None and call.embedding_bias is None and call.stop_sequences == ()
    assert not call.streaming and not call.return_perf_metrics and sampling["return_perf_metrics"] is False


def test_greedy_and_neutral_values():
    call = rq.parse_request(tensors(temperature=scalar(0.0, np.float32), repetition_penalty=scalar(1.0, np.float32),
                                    presence_penalty=scalar(0.0, np.float32)), LIMITS)
    assert call.sampling["temperature"] == 0.0  # the LLM API's greedy
    assert "repetition_penalty" not in call.sampling and "presence_penalty" not in call.sampling


def test_min_tokens_is_left_to_the_guide_under_a_guide():
    call = rq.parse_request(tensors(min_tokens=scalar(4, np.int32), guided_decoding_guide_type=text("json")), LIMITS)
    assert "min_tokens" not in call.sampling


def test_stop_words_layout_ids_and_offsets():
    assert decode_stop_words(stop_words([5], [6, 7], [9])) == ((5,), (6, 7), (9,))
    padded = np.array([[[4, 5, 6, 0], [1, 3, -1, -1]]], np.int32)
    assert decode_stop_words(padded) == ((4,), (5, 6))
    call = rq.parse_request(tensors(stop_words_list=stop_words([5], [6, 7], [9])), LIMITS)
    assert call.sampling["stop_token_ids"] == [5, 9] and call.stop_sequences == ((6, 7),)


@pytest.mark.parametrize("array", [
    np.array([[[1, 2], [3, -1]]], np.int32),  # offset past the ids
    np.array([[[1, 2], [2, 1]]], np.int32),  # offsets going back
    np.array([[1, 2]], np.int32),  # not [1, 2, N]
    np.array([[[1], [1], [1]]], np.int32),  # three rows
])
def test_bad_stop_words_raise(array):
    with pytest.raises(ValueError, match="stop_words_list"):
        rq.parse_request(tensors(stop_words_list=array), LIMITS)


def test_embedding_bias_has_one_value_per_vocabulary_token():
    with pytest.raises(ValueError, match=f"{VOCAB} values"):
        rq.parse_request(tensors(embedding_bias=np.zeros((1, VOCAB - 1), np.float32)), LIMITS)
    with pytest.raises(ValueError, match="NaN"):
        rq.parse_request(tensors(embedding_bias=np.full((1, VOCAB), np.nan, np.float32)), LIMITS)
    assert rq.parse_request(tensors(embedding_bias=np.zeros((1, VOCAB), np.float32)), LIMITS).embedding_bias is None
    assert rq.parse_request(tensors(embedding_bias=np.ones((1, VOCAB), np.float32)), LIMITS).embedding_bias.size == VOCAB


@pytest.mark.parametrize("guide_type,guide,expected", [
    ("json", "", {"json_object": True}),
    ("json_schema", '{"type": "object"}', {"json": '{"type": "object"}'}),
    ("regex", "[a-z]+", {"regex": "[a-z]+"}),
    ("ebnf_grammar", 'start: "yes" | "no"', {"grammar": 'start: "yes" | "no"'}),
])
def test_each_guide_type_maps_to_its_guided_decoding_field(guide_type, guide, expected):
    call = rq.parse_request(tensors(guided_decoding_guide_type=text(guide_type), guided_decoding_guide=text(guide)),
                            LIMITS)
    assert call.guided_decoding == expected
    assert_recorded(call.guided_decoding, "GuidedDecodingParams")


def test_ebnf_grammar_guides_reach_llguidance_as_lark():
    field = rq.GUIDE_FIELDS["ebnf_grammar"]
    spec = TYPES["GuidedDecodingParams"]
    assert "EBNF_GRAMMAR" in spec["fields"][field]["doc"]
    assert "grammar_from_lark" in spec["llguidance_backend"]["compiles"]["EBNF_GRAMMAR"]
    assert set(rq.GUIDE_FIELDS) == set(rq.GUIDE_TYPES)


@pytest.mark.parametrize("extra,match", [
    ({"input_ids": None}, "input_ids"),
    ({"request_output_len": None}, "request_output_len"),
    ({"input_lengths": scalar(-1, np.int32)}, "input_lengths"),
    ({"input_lengths": scalar(2, np.int32)}, "input_lengths"),
    ({"request_output_len": scalar(0, np.int32)}, "request_output_len"),
    ({"request_output_len": scalar(-5, np.int32)}, "request_output_len"),
    ({"request_output_len": scalar(62, np.int32)}, "maximum sequence length"),
    ({"input_ids": np.array([[1, 200, 3]], np.int32)}, "vocabulary"),
    ({"input_ids": np.array([[1, -2, 3]], np.int32)}, "vocabulary"),
    ({"input_ids": np.zeros((1, 0), np.int32), "input_lengths": scalar(0, np.int32)}, "empty"),
    ({"input_ids": np.array([[1, 2, 3], [1, 2, 3]], np.int32)}, "batch size"),
    ({"temperature": scalar(-0.1, np.float32)}, "temperature"),
    ({"temperature": scalar(np.inf, np.float32)}, "finite"),
    ({"runtime_top_p": scalar(0.0, np.float32)}, "runtime_top_p"),
    ({"runtime_top_k": scalar(-1, np.int32)}, "runtime_top_k"),
    ({"repetition_penalty": scalar(0.0, np.float32)}, "repetition_penalty"),
    ({"min_tokens": scalar(-1, np.int32)}, "min_tokens"),
    ({"seed": np.array([[1, 2]], np.uint64)}, "seed"),
    ({"guided_decoding_guide_type": text("xml")}, "not one of"),
    ({"guided_decoding_guide": text("[a-z]")}, "needs 'guided_decoding_guide_type'"),
    ({"guided_decoding_guide_type": text("regex")}, "needs a 'guided_decoding_guide'"),
    ({"guided_decoding_guide_type": np.array([[b"\xff"]], dtype=np.object_)}, "UTF-8"),
])
def test_bad_tensors_raise_value_error(extra, match):
    request = tensors(**extra)
    for name in [k for k, v in extra.items() if v is None]:
        del request[name]
    with pytest.raises(ValueError, match=match):
        rq.parse_request(request, LIMITS)


# ---- LLM API outputs -> response arrays ----------------------------------------------------

# Stand-ins shaped exactly like the recorded types: reading any other attribute fails.
CompletionOutput = make_dataclass("CompletionOutput", list(TYPES["CompletionOutput"]["fields"]), slots=True)
PERF = TYPES["RequestPerfMetrics"]["attributes"]
NUMPY = {"TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_FP32": np.float32}


def completion(tokens, logprobs=(), finish_reason=None, stop_reason=None, perf=None):
    values = dict.fromkeys(TYPES["CompletionOutput"]["fields"])
    values.update(index=0, text="", token_ids=list(tokens), logprobs=list(logprobs), finish_reason=finish_reason,
                  stop_reason=stop_reason, request_perf_metrics=perf)
    return CompletionOutput(**values)


def perf_metrics(reused=0, arrival_us=1_000, first_token_us=51_000):
    kv = dict.fromkeys(PERF["kv_cache_metrics"], 0)
    kv.update(num_reused_blocks=reused, num_new_allocated_blocks=2, num_total_allocated_blocks=2 + reused)
    times = dict(arrival_time=datetime.timedelta(microseconds=arrival_us),
                 first_scheduled_time=datetime.timedelta(microseconds=arrival_us + 500),
                 first_token_time=datetime.timedelta(microseconds=first_token_us),
                 last_token_time=datetime.timedelta(microseconds=first_token_us))
    assert set(times) == set(PERF["timing_metrics"])
    return SimpleNamespace(kv_cache_metrics=SimpleNamespace(**kv), timing_metrics=SimpleNamespace(**times),
                           speculative_decoding=SimpleNamespace(**dict.fromkeys(PERF["speculative_decoding"], 0)))


def assert_contract_arrays(arrays):
    for name, array in arrays.items():
        dtype, dims = CONTRACT_OUTPUTS[name]
        assert array.dtype == NUMPY[dtype], name
        assert array.ndim == len(dims) + 1 and array.shape[0] == 1, name  # batch dimension first


def builder(**flags):
    call = rq.parse_request(full_request(**{k: scalar(v, np.bool_) for k, v in flags.items()}), LIMITS)
    return call, rs.ResponseBuilder(call, end_id=2)


def test_streaming_sends_new_tokens_with_contract_names_and_dtypes():
    call, b = builder()
    first = b.step(completion([10], [-0.5], perf=perf_metrics(reused=3)), finished=False)
    assert not first.final and not first.abort
    assert set(first.arrays) == set(CONTRACT_OUTPUTS)  # every output requested
    assert_contract_arrays(first.arrays)
    assert first.arrays["output_ids"].tolist() == [[[10]]]
    assert first.arrays["sequence_length"].tolist() == [[4]]
    assert first.arrays["output_log_probs"].tolist() == [[[-0.5]]]
    assert first.arrays["num_input_tokens"].tolist() == [[3]] and first.arrays["num_output_tokens"].tolist() == [[1]]
    assert first.arrays["kv_cache_reused_blocks"].tolist() == [[3]]
    assert first.arrays["kv_cache_alloc_total_blocks"].tolist() == [[5]]
    assert first.arrays["first_token_time_ns"][0, 0] - first.arrays["arrival_time_ns"][0, 0] == 50_000_000
    assert b.step(completion([10], [-0.5]), finished=False).arrays is None  # nothing new: nothing sent
    last = b.step(completion([10, 11, 12], [-0.5, -0.25, -0.125], finish_reason="length"), finished=True)
    assert last.final and last.arrays["output_ids"].tolist() == [[[11, 12]]]
    assert last.arrays["num_output_tokens"].tolist() == [[2]] and last.arrays["sequence_length"].tolist() == [[6]]
    assert last.arrays["kv_cache_reused_blocks"].tolist() == [[3]]  # kept from the last metrics seen


def test_non_streaming_sends_one_response_prompt_first():
    call, b = builder(streaming=False, exclude_input_in_output=False)
    assert b.step(completion([10], [-1.0]), finished=False).arrays is None
    last = b.step(completion([10, 11], [-1.0, -2.0], finish_reason="length"), finished=True)
    assert last.final
    assert last.arrays["output_ids"].tolist() == [[[1, 2, 3, 10, 11]]]
    assert last.arrays["output_log_probs"].tolist() == [[[-1.0, -2.0]]]  # generated tokens only, as electron_cpu
    assert last.arrays["num_output_tokens"].tolist() == [[2]] and last.arrays["sequence_length"].tolist() == [[5]]
    call, b = builder(streaming=False, exclude_input_in_output=True)
    assert b.step(completion([10, 11], [-1.0, -2.0], finish_reason="length"), finished=True).arrays[
        "output_ids"].tolist() == [[[10, 11]]]


def test_end_id_is_not_output_but_stop_tokens_are():
    _, b = builder()
    last = b.step(completion([10, 2], [-1.0, -0.1], finish_reason="stop"), finished=True)
    assert last.arrays["output_ids"].tolist() == [[[10]]] and last.arrays["output_log_probs"].tolist() == [[[-1.0]]]
    _, b = builder()  # single-token stop word 5, kept (include_stop_str_in_output)
    last = b.step(completion([10, 5], [-1.0, -0.1], finish_reason="stop", stop_reason=5), finished=True)
    assert last.arrays["output_ids"].tolist() == [[[10, 5]]]


def test_multi_token_stop_sequence_across_responses_ends_and_aborts():
    _, b = builder()  # stop sequence (6, 7, 8)
    assert b.step(completion([6], [-1.0]), finished=False).arrays["output_ids"].tolist() == [[[6]]]
    step = b.step(completion([6, 7, 8, 9], [-1.0] * 4), finished=False)
    assert step.final and step.abort
    assert step.arrays["output_ids"].tolist() == [[[7, 8]]] and step.arrays["sequence_length"].tolist() == [[6]]


def test_stop_watcher_keeps_only_the_tail_it_needs():
    watcher = rs.StopWatcher(((1, 2, 3),))
    assert watcher.cut([1]) is None and watcher.cut([2]) is None and watcher.cut([3, 4]) == 1
    watcher = rs.StopWatcher(((1, 2),))
    assert watcher.cut([9, 1, 2, 5]) == 3


def test_log_probs_from_top_k_dicts_or_floats():
    logprob = make_dataclass("Logprob", list(TYPES["Logprob"]["fields"]), slots=True)
    assert rs.sampled_logprob(7, {7: logprob(-0.25, 1), 8: logprob(-2.0, 2)}) == -0.25
    assert rs.sampled_logprob(9, {7: logprob(-0.25, 1), 8: logprob(-2.0, 2)}) == -2.0  # not in the top k: a bound
    assert rs.sampled_logprob(7, -0.75) == -0.75
    _, b = builder()
    step = b.step(completion([10], [{10: logprob(-0.5, 1)}]), finished=False)
    assert step.arrays["output_log_probs"].tolist() == [[[-0.5]]]
    with pytest.raises(ValueError, match="log probabilities"):
        b.step(completion([10, 11, 12], [{10: logprob(-0.5, 1)}]), finished=False)


def test_perf_timings_in_nanoseconds():
    assert rs.duration_ns(datetime.timedelta(seconds=2, microseconds=3)) == 2_000_003_000
    assert rs.duration_ns(None) == 0 and rs.duration_ns(17) == 17
    assert rs.perf_from_metrics(None) is None
    assert rs.perf_from_metrics(perf_metrics(reused=4)).reused_blocks == 4


def test_only_requested_outputs_are_sent():
    call = rq.parse_request(tensors(streaming=scalar(True, np.bool_)), LIMITS)
    arrays = rs.ResponseBuilder(call, end_id=None).step(completion([10]), finished=False).arrays
    assert set(arrays) == {"output_ids", "sequence_length"}
    assert_contract_arrays(arrays)


# ---- parameter file ------------------------------------------------------------------------

def llm_api_yaml():
    return yaml.safe_load((MODEL_DIR / "llm_api.yaml").read_text())


def test_parameter_file_keys_are_recorded_llm_arguments_with_matching_types():
    config = llm_api_yaml()
    kwargs = cf.llm_kwargs(config)
    assert set(config) - set(kwargs) == {"quantization"} and config["quantization"] in cf.QUANTIZATIONS
    assert_recorded(kwargs, "LLM")
    assert_recorded(kwargs["kv_cache_config"], "KvCacheConfig")
    kv = kwargs["kv_cache_config"]
    assert kv["enable_block_reuse"] is True and kv["tokens_per_block"] == 32 and 0 < kv["free_gpu_memory_fraction"] <= 1
    assert kwargs["enable_chunked_prefill"] is True and kwargs["guided_decoding_backend"] == "llguidance"
    assert kwargs["backend"] == "pytorch" and kwargs["return_perf_metrics"] is True
    assert kwargs["max_num_tokens"] >= kwargs["max_batch_size"] and kwargs["max_seq_len"] > 0


def test_every_parameter_file_key_is_commented():
    lines = (MODEL_DIR / "llm_api.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*\w+:", line):
            assert lines[i - 1].strip().startswith("#"), f"key without a comment: {line.strip()}"


@pytest.mark.parametrize("change,match", [
    ({"guided_decoding_backend": "xgrammar"}, "llguidance"),
    ({"backend": "tensorrt"}, "pytorch"),
    ({"quantization": "int4"}, "quantization"),
    ({"return_perf_metrics": False}, "return_perf_metrics"),
    ({"kv_cache_config": {"enable_block_reuse": False, "tokens_per_block": 32}}, "enable_block_reuse"),
    ({"model": None}, "'model' is required"),
])
def test_parameter_file_checks(change, match):
    config = {**llm_api_yaml(), **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        cf.llm_kwargs(config)


def test_config_must_advertise_the_llm_values():
    kwargs = cf.llm_kwargs(llm_api_yaml())
    cf.check_advertised(kwargs, "32", str(kwargs["max_seq_len"]))
    for tokens_per_block, max_length in (("16", str(kwargs["max_seq_len"])), ("32", "4096"),
                                         ("${tokens_per_block}", str(kwargs["max_seq_len"]))):
        with pytest.raises(ValueError, match="config.pbtxt parameter"):
            cf.check_advertised(kwargs, tokens_per_block, max_length)


def test_quantization_must_match_the_checkpoint():
    fp8 = {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8"}}
    cf.check_quantization("fp8", fp8)
    cf.check_quantization("none", None)
    with pytest.raises(ValueError, match="fp8"):
        cf.check_quantization("fp8", None)
    with pytest.raises(ValueError, match="FP8"):
        cf.check_quantization("none", fp8)


def test_vocab_size_from_the_checkpoint_config():
    assert cf.vocab_size_of({"vocab_size": 128256}) == 128256
    assert cf.vocab_size_of({"text_config": {"vocab_size": 262144}}) == 262144
    with pytest.raises(ValueError, match="vocab_size"):
        cf.vocab_size_of({})


def test_log_level_from_the_config_parameter():
    assert cf.log_level_of({"log_level": "debug"}) == "DEBUG"
    assert cf.log_level_of({}) == "INFO"
    with pytest.raises(ValueError, match="log_level 'LOUD' is not one of DEBUG, INFO"):
        cf.log_level_of({"log_level": "loud"})


# ---- config.pbtxt and model.py against the recorded API --------------------------------------

def test_config_parses_declares_llguidance_and_the_cpu_models_contract_tensors():
    gpu, cpu = load("electron_trtllm"), load("electron_cpu")
    assert gpu.backend == "python" and gpu.model_transaction_policy.decoupled and gpu.max_batch_size > 0
    params = {k: v.string_value for k, v in gpu.parameters.items()}
    assert params["guided_decoding_backend"] == "llguidance"
    assert {"llm_api_config", "tokens_per_block", "max_sequence_length", "cancellation_check_period_ms",
            "log_level"} <= set(params)
    assert params["max_sequence_length"].isdigit()  # placeholders filled in: the gateway reads digits
    assert int(params["cancellation_check_period_ms"]) > 0
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    for kind, contract in (("input", CONTRACT_INPUTS), ("output", CONTRACT_OUTPUTS)):
        declared = table(getattr(gpu, kind))
        assert set(declared) == set(contract), kind  # the contract, no CPU-only extension
        assert {k: v for k, v in table(getattr(cpu, kind)).items() if k in contract} == declared, kind
    cpu_in = {e.name: e for e in cpu.input}
    for e in gpu.input:
        assert (e.optional, list(e.reshape.shape), e.allow_ragged_batch) == (
            cpu_in[e.name].optional, list(cpu_in[e.name].reshape.shape), cpu_in[e.name].allow_ragged_batch), e.name


def test_model_uses_only_recorded_imports_and_generate_async_arguments():
    tree = ast.parse((MODEL_DIR / "1" / "model.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("tensorrt_llm") for alias in node.names}
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("tensorrt_llm")}
    assert modules == {"tensorrt_llm.llmapi"} and imported <= set(API["imports"]["tensorrt_llm.llmapi"])
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "generate_async"]
    assert len(calls) == 1
    assert {k.arg for k in calls[0].keywords} <= set(TYPES["LLM.generate_async"]["parameters"])
    assert {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords if k.arg == "streaming"} == {"streaming": True}
