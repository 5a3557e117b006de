"""Shared test set-up: the engine package lives in the Triton model folder."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ENGINE_DIR = TESTS.parent / "model_repository" / "electron_cpu" / "1"

for path in (ENGINE_DIR, TESTS):  # the engine package; tests/paths.py
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
