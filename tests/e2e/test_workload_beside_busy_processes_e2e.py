"""The engine's llama.cpp threads follow the cores other processes leave free: a real
stack of its own (``electron-serve``: Triton and the gateway) with adaptive threads on.

Named to run after the tests of the session's shared engine: the ~20 s it takes would change
how long that engine's cached prompt blocks sit idle between test files, hence which prefixes
the next tests find cached, hence batch shapes and greedy near-ties they compare."""

import os
import subprocess
import sys
import time

import httpx2
import pytest

from tests.e2e.triton_client import read_metrics
from perf.voice_load.servers import ElectronServer

pytestmark = pytest.mark.e2e
PORT = 18960  # Triton's metrics on PORT + 2


def _threads_become(expected: int, timeout_s: float = 15.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        threads = read_metrics(PORT + 2)["electron_engine_threads"]
        if threads == expected or time.monotonic() > deadline:
            return threads
        time.sleep(0.1)


def test_the_engine_leaves_a_core_taken_by_another_process_and_takes_it_back_when_freed(tmp_path):
    cores = len(os.sched_getaffinity(0))  # the engine's default thread count: the cores it may use
    server = ElectronServer(PORT, log_path=tmp_path / "electron.log", env={"ELECTRON_ADAPTIVE_THREADS": "true"})
    try:
        assert _threads_become(cores) == cores
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores - 1)]
        try:
            # the others leave one core: llama.cpp runs one thread, with no partner to wait for at its barriers
            assert _threads_become(1) == 1
            reply = httpx2.post(f"{server.base_url}/chat/completions", timeout=60, json={
                "model": "electron", "max_tokens": 24, "min_tokens": 24, "stream": False,
                "messages": [{"role": "user", "content": "Write one sentence about the ocean."}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] == 24
            assert read_metrics(PORT + 2)["electron_engine_threads"] == 1
        finally:
            for p in busy:
                p.kill()
                p.wait()
        assert _threads_become(cores) == cores
    finally:
        assert server.stop() == 0
    log = (tmp_path / "electron.log").read_text()
    if cores > 1:
        assert f"llama.cpp threads {cores} -> 1" in log and f"llama.cpp threads 1 -> {cores}" in log
