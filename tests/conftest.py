"""Shared test set-up: the engine package lives in the Triton model folder."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_DIR = ROOT / "model_repository" / "electron_cpu" / "1"
DATA_DIR = Path(__file__).resolve().parent / "data"

if str(ENGINE_DIR) not in sys.path:
    sys.path.insert(0, str(ENGINE_DIR))
