"""Prepare the model for this machine: the artifacts (tokenizer.json, model.json) from a
GGUF file, then the weights the CPU engine loads (the shipped file, or a requantized copy
that is faster here and passes the quality gate; measured once, then kept).

Usage: python build/prepare_model.py [--gguf PATH] [--artifacts-dir DIR] [--weight-format auto|shipped|q8_0|q4_0]
(defaults from the ELECTRON_* settings). See gateway/model_artifacts.py and
gateway/server/weight_choice.py for what is written and why.
"""

import sys

from gateway.server.weight_choice import main

if __name__ == "__main__":
    sys.exit(main())
