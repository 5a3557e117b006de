"""Shared test set-up: the engine package lives in the Triton model folder, the load
generator in perf/."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ENGINE_DIR = TESTS.parent / "model_repository" / "electron_cpu" / "1"
PERF_DIR = TESTS.parent / "perf"

for path in (ENGINE_DIR, TESTS, PERF_DIR):  # the engine package; tests/paths.py; voice_load
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
