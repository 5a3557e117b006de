"""perf_analyzer --input-data: voice-like requests (a ~600-token shared system
prompt plus a short user turn, 48 new tokens, greedy) for perf/perf_analyzer.sh."""

import json
import sys

from tokenizers import Tokenizer

from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts

WORDS = "the caller wants to change a booking for two people on friday evening near the window".split()
tokenizer = Tokenizer.from_file(str(prepare_artifacts(Settings.from_env()).tokenizer_path))
system = tokenizer.encode(" ".join(f"Rule {i}: {' '.join(WORDS)}." for i in range(60))).ids[:600]
data = []
for i in range(16):
    prompt = (system + tokenizer.encode(f" Caller {i} asks about order {i * 37} and the weather today please").ids)[:632]
    prompt += [198] * (632 - len(prompt))
    data.append({
        "input_ids": {"content": prompt, "shape": [len(prompt)]},
        "input_lengths": [len(prompt)],
        "request_output_len": [48],
        "min_tokens": [48],
        "streaming": [True],
        "exclude_input_in_output": [True],
        "temperature": [0.0],
    })
json.dump({"data": data}, sys.stdout)
