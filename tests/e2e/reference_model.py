"""llama.cpp called directly, on the CPU paths the engine chose on this machine.

The reference the e2e tests compare the engine with must run what the engine runs:
the same GGUF (the shipped file or the requantized copy chosen for this machine: the
``engine_gguf`` fixture), the same flash attention setting and the same weights' buffer types, which the
engine's start-up probe chose (``llama_engine.cpu_paths``, kept in the artifacts
folder). llama-cpp-python's ``Llama`` has no argument for the buffer types, so its
model parameters are adjusted while it loads.
"""

from __future__ import annotations

import contextlib

import llama_cpp.llama_cpp as llama_cpp_lib
from llama_cpp import Llama

from gateway.server.engine_state import cpu_paths_cache_dir
from llama_engine.cpu_paths import CpuPaths, choose_cpu_paths
from llama_engine.thread_budget import usable_cores


def engine_cpu_paths(settings, gguf_path) -> CpuPaths:
    """The paths the engine of ``settings`` runs (the probe's kept choice, or a new probe)."""
    threads = settings.threads or usable_cores()
    return choose_cpu_paths(str(gguf_path), threads, weights=settings.weight_buffers,
                            flash_attn=settings.flash_attention, cache_dir=str(cpu_paths_cache_dir(settings)))


@contextlib.contextmanager
def _weights_buffers(extra: bool):
    default = llama_cpp_lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = extra
        return p

    llama_cpp_lib.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp_lib.llama_model_default_params = default


# the path every x86-64 CPU runs: ordinary buffers, no flash attention
PLAIN_PATHS = CpuPaths(weights="plain", flash_attn=False, reason="the reference path")


def reference_llama(settings, gguf_path, paths: CpuPaths | None = None, **kwargs) -> Llama:
    """llama.cpp on ``gguf_path`` with the engine's CPU paths for it, or ``paths``."""
    paths = paths or engine_cpu_paths(settings, gguf_path)
    with _weights_buffers(paths.weights == "extra"):
        return Llama(model_path=str(gguf_path), flash_attn=paths.flash_attn, verbose=False, **kwargs)
