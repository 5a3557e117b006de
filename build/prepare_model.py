"""Prepare the model artifacts (tokenizer.json, model.json) from a GGUF file.

Usage: python build/prepare_model.py [--gguf PATH] [--artifacts-dir DIR]
See gateway/server/model_artifacts.py for what is written and why.
"""

import sys

from gateway.server.model_artifacts import main

if __name__ == "__main__":
    sys.exit(main())
