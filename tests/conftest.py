"""Shared test set-up. The tests are the package ``tests`` (helpers in ``tests.support``), the
benchmarks the package ``perf``, both imported from the repository's root; the CPU engine's
package ``llama_engine`` lives in its Triton model folder, which pyproject.toml's pytest
``pythonpath`` names (the folder is Triton's, not an installed package)."""

import itertools
import os

import pytest

from tests.services import PostgresServer, RedisServer

# Engines started by the tests keep a fixed llama.cpp thread count. With adaptive threads (the
# product default) a step's duration follows the test machine's load, the step-cost model and so
# the prefill chunks follow it, and llama.cpp's logits differ in their last bits with the batch
# shapes: greedy replies at near-ties (this small model has many: "What is the capital of France?"
# under its default system prompt, 'L' 24.743 against 'The' 24.648) then differ between runs, and
# the tests that compare outputs would fail at random. test_workload_beside_busy_processes_e2e.py runs its own
# engine with adaptive threads on.
os.environ.setdefault("ELECTRON_ADAPTIVE_THREADS", "false")


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    yield server
    server.stop()


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty accounts store: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'electron.db'}"
    return request.getfixturevalue("postgres_server").create_database(f"electron_{next(_databases)}")
