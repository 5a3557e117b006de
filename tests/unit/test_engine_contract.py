"""The CPU model and the TensorRT-LLM model declare the same engine contract.

Both config.pbtxt files are parsed with Triton's own ModelConfig protobuf. The
table below is the contract subset of ../shared/design.md ("Engine contract").
"""

import re

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from paths import ROOT

CONTRACT_INPUTS = {
    "input_ids": ("TYPE_INT32", [-1]),
    "input_lengths": ("TYPE_INT32", [1]),
    "request_output_len": ("TYPE_INT32", [1]),
    "end_id": ("TYPE_INT32", [1]),
    "pad_id": ("TYPE_INT32", [1]),
    "streaming": ("TYPE_BOOL", [1]),
    "exclude_input_in_output": ("TYPE_BOOL", [1]),
    "temperature": ("TYPE_FP32", [1]),
    "runtime_top_p": ("TYPE_FP32", [1]),
    "runtime_top_k": ("TYPE_INT32", [1]),
    "seed": ("TYPE_UINT64", [1]),
    "presence_penalty": ("TYPE_FP32", [1]),
    "frequency_penalty": ("TYPE_FP32", [1]),
    "repetition_penalty": ("TYPE_FP32", [1]),
    "min_tokens": ("TYPE_INT32", [1]),
    "embedding_bias": ("TYPE_FP32", [-1]),
    "stop_words_list": ("TYPE_INT32", [2, -1]),
    "guided_decoding_guide_type": ("TYPE_STRING", [1]),
    "guided_decoding_guide": ("TYPE_STRING", [1]),
    "return_log_probs": ("TYPE_BOOL", [1]),
    "return_num_input_tokens": ("TYPE_BOOL", [1]),
    "return_num_output_tokens": ("TYPE_BOOL", [1]),
    "return_perf_metrics": ("TYPE_BOOL", [1]),
}
CONTRACT_OUTPUTS = {
    "output_ids": ("TYPE_INT32", [-1, -1]),
    "sequence_length": ("TYPE_INT32", [-1]),
    "output_log_probs": ("TYPE_FP32", [-1, -1]),
    "num_input_tokens": ("TYPE_INT32", [1]),
    "num_output_tokens": ("TYPE_INT32", [1]),
    "kv_cache_reused_blocks": ("TYPE_INT32", [1]),
    "kv_cache_alloc_new_blocks": ("TYPE_INT32", [1]),
    "kv_cache_alloc_total_blocks": ("TYPE_INT32", [1]),
    "arrival_time_ns": ("TYPE_INT64", [1]),
    "first_scheduled_time_ns": ("TYPE_INT64", [1]),
    "first_token_time_ns": ("TYPE_INT64", [1]),
    "last_token_time_ns": ("TYPE_INT64", [1]),
}
REQUIRED_INPUTS = {"input_ids", "input_lengths", "request_output_len"}


def load(model):
    text = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
    text = re.sub(r"\$\{(\w+)\}", "8", text)  # placeholders are filled in at launch
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def table(entries):
    return {e.name: (model_config_pb2.DataType.Name(e.data_type), list(e.dims)) for e in entries}


@pytest.fixture(scope="module", params=["electron_cpu", "tensorrt_llm", "electron_trtllm"])
def config(request):
    return load(request.param)


def test_contract_inputs_declared_with_trtllm_names_dtypes_dims(config):
    declared = table(config.input)
    for name, spec in CONTRACT_INPUTS.items():
        assert declared.get(name) == spec, name
    optional = {e.name for e in config.input if e.optional}
    assert REQUIRED_INPUTS.isdisjoint(optional)
    assert set(CONTRACT_INPUTS) - REQUIRED_INPUTS <= optional


def test_contract_outputs_declared(config):
    declared = table(config.output)
    for name, spec in CONTRACT_OUTPUTS.items():
        assert declared.get(name) == spec, name


def test_batching_decoupled_and_block_size(config):
    assert config.max_batch_size > 0
    assert config.model_transaction_policy.decoupled
    assert "tokens_per_block" in config.parameters


# inputs only the CPU engine declares: optional, and the gateway sends them only to a
# model whose config declares them (Triton refuses undeclared inputs)
CPU_EXTENSIONS = {"playback_chars_per_s", "return_prefill_progress"}


def test_cpu_and_gpu_models_agree_on_every_shared_tensor():
    cpu, gpu = load("electron_cpu"), load("tensorrt_llm")
    assert all(e.optional for e in cpu.input if e.name in CPU_EXTENSIONS)
    for kind in ("input", "output"):
        cpu_t, gpu_t = table(getattr(cpu, kind)), table(getattr(gpu, kind))
        if kind == "input":
            cpu_t = {k: v for k, v in cpu_t.items() if k not in CPU_EXTENSIONS}
        assert set(cpu_t) <= set(gpu_t), f"{kind}s only the CPU model has: {set(cpu_t) - set(gpu_t)}"
        for name, spec in cpu_t.items():
            assert gpu_t[name] == spec, name
    cpu_in = {e.name: e for e in cpu.input}
    for e in gpu.input:
        if e.name in cpu_in:
            assert cpu_in[e.name].optional == e.optional, e.name
            assert list(cpu_in[e.name].reshape.shape) == list(e.reshape.shape), e.name


@pytest.mark.parametrize("model, backend", [("electron_cpu", "llguidance"), ("electron_trtllm", "llguidance"),
                                            ("tensorrt_llm", "xgrammar")])
def test_each_engine_declares_the_guide_compiler_the_gateway_writes_for(model, backend):
    from gateway.tools.guided_request import GUIDE_BACKENDS

    params = {key: p.string_value for key, p in load(model).parameters.items()}
    assert params["guided_decoding_backend"] == backend
    assert backend in GUIDE_BACKENDS
