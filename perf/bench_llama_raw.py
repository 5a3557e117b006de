"""llama.cpp alone, as the engine configures it (unified KV pool, flash attention):
the floor under every engine figure.

Prints median milliseconds for: a 1-token decode step and an 8-token batched step
at a 612-token context, a 512-token prefill, and the 1-token step again with ~10k
cells of other sequences in the pool (the cost of keeping a prefix cache).

    .venv/bin/python -m perf llama-raw [--threads N]
"""

import argparse
import statistics
import sys
import time

from gateway.model_artifacts import embedded_gguf_path
from perf import engine_path

engine_path.add()
from llama_engine.llama_runner import LlamaRunner, RunnerConfig  # noqa: E402  (after engine_path.add())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runner = LlamaRunner(RunnerConfig(gguf_path=str(embedded_gguf_path()), threads=args.threads))
    position = {}

    def step(seqs: list[int], n_each: int) -> float:
        n = 0
        for seq in seqs:
            start = position.get(seq, 0)
            runner.tokens[n : n + n_each] = range(100, 100 + n_each)
            runner.positions[n : n + n_each] = range(start, start + n_each)
            runner.seq_ids[n : n + n_each] = seq
            runner.want_logits[n : n + n_each] = 0
            runner.want_logits[n + n_each - 1] = 1
            position[seq] = start + n_each
            n += n_each
        began = time.perf_counter()
        if runner.decode(n) != 0:
            raise RuntimeError("llama_decode failed")
        return (time.perf_counter() - began) * 1000

    for seq in range(8):  # 8 sequences at a 612-token context
        step([seq], 512)
        step([seq], 100)
    rows = {
        "1-token decode step, 612-token context": statistics.median(step([0], 1) for _ in range(20)),
        "8-token batched decode step (8 streams)": statistics.median(step(list(range(8)), 1) for _ in range(10)),
        "512-token prefill (ms per token)": statistics.median(step([60 + i], 512) for i in range(3)) / 512,
    }
    for seq in range(8, 24):  # ~10k more cells held by other sequences
        step([seq], 512)
        step([seq], 100)
    rows["1-token decode step with ~10k other cells in the pool"] = statistics.median(step([0], 1) for _ in range(20))
    for name, ms in rows.items():
        sys.stdout.write(f"{name}: {ms:.2f} ms\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
