"""Makes the CPU engine's package, ``llama_engine``, importable for the benchmarks that run
llama.cpp through it in process (``engine_steps``, ``bench_llama_raw``).

The package lives inside its Triton model folder, ``model_repository/electron_cpu/1/``:
Triton's Python backend loads ``model.py`` from there and puts that folder on the stub's
``sys.path``, and the folder is copied into deployments as it is, so it is not an installed
package. Putting the folder on ``sys.path`` is what Triton does too (the gateway sets
``PYTHONPATH`` to it for its llama.cpp children, ``gateway.server.weight_choice``; the tests
name it in pyproject.toml's pytest ``pythonpath``); this module is the benchmarks' one place for it.
"""

from __future__ import annotations

import sys

from perf import ROOT

ENGINE_DIR = ROOT / "model_repository" / "electron_cpu" / "1"


def add() -> None:
    """Puts ``ENGINE_DIR`` first on ``sys.path`` (once)."""
    if str(ENGINE_DIR) not in sys.path:
        sys.path.insert(0, str(ENGINE_DIR))
