"""One real tritonserver (the launcher's) and one real gateway for the whole end-to-end session."""

import pytest
from tokenizers import Tokenizer

from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts, start_triton, stop_triton
from gateway.server.weight_choice import engine_weights
from perf.voice_load.servers import ElectronServer


@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    return Settings.from_env({
        "ELECTRON_RUN_DIR": str(tmp_path_factory.mktemp("run")),
        "ELECTRON_TRITON_GRPC_PORT": "18001",
        "ELECTRON_TRITON_HTTP_PORT": "18003",
        "ELECTRON_TRITON_METRICS_PORT": "18002",
        "ELECTRON_KV_CELLS": "16384",
        "ELECTRON_ADAPTIVE_THREADS": "false",  # see tests/conftest.py
    })


@pytest.fixture(scope="session")
def artifacts(settings):
    return prepare_artifacts(settings)


@pytest.fixture(scope="session")
def engine_gguf(settings, artifacts):
    """The GGUF the engine loads (the shipped file or the requantized copy chosen for this
    machine): what a reference that llama.cpp runs directly must load too."""
    return engine_weights(settings, artifacts).path


@pytest.fixture(scope="session")
def tokenizer(artifacts):
    return Tokenizer.from_file(str(artifacts.tokenizer_path))


@pytest.fixture(scope="session")
def triton(settings):
    process = start_triton(settings)
    yield settings
    assert stop_triton(process) == 0, "tritonserver did not shut down cleanly"


@pytest.fixture(scope="session")
def chat(tokenizer):
    """Token ids of a one-turn ChatML prompt."""

    def encode(user: str, system: str = "You are a helpful assistant.") -> list[int]:
        text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode


GATEWAY_PORT = 18000


@pytest.fixture(scope="session")
def gateway(triton):
    """The real gateway process (``electron-serve`` without its own Triton) in front
    of the session's tritonserver; yields its base URL."""
    server = ElectronServer(GATEWAY_PORT, triton_grpc_port=triton.triton_grpc_port, log_level="INFO")
    yield server.root_url
    assert server.stop() == 0, "the gateway did not shut down cleanly"
