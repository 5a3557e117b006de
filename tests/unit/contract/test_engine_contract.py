"""Every model's config.pbtxt declares the engine contract of ``engine_contract.tensors``.

The config.pbtxt files are parsed with Triton's own ModelConfig protobuf and checked
against the package's tables: the contract is written once, in code.
"""


import pytest

from engine_contract import INPUTS
from tests.support.model_configs import CONTRACT_INPUTS, CONTRACT_OUTPUTS, load, table

REQUIRED_INPUTS = {s.name for s in INPUTS.values() if s.required}


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
CPU_EXTENSIONS = {s.name for s in INPUTS.values() if s.cpu_only}


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


def test_the_cpu_model_declares_exactly_the_contract_with_its_cpu_only_inputs():
    cpu = load("electron_cpu")
    assert table(cpu.input) == {s.name: (s.data_type, list(s.dims)) for s in INPUTS.values()}
    assert table(cpu.output) == CONTRACT_OUTPUTS
