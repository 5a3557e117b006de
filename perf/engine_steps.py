"""The engine's own step costs, through its runner (``llama_engine.llama_runner``), as the
child process of ``engine_vs_llamacpp.py`` runs them: one engine configuration per process,
since GOMP_SPINCOUNT is read once, when the OpenMP runtime loads.

Prefill rows: one sequence with H tokens of history (built once per depth, untimed), then
an n-token prefill at positions H.. in chunks of the runner's batch size (the engine's
prefill steps), timed, and removed again with ``seq_rm``; median of the repetitions after
one warm-up. Decode rows: one ``history``-token history (1,024) prefilled in sequence 0 and
copied to the other sequences with ``seq_cp`` (in a unified pool the copies share its cells, as the
prefix cache shares a system prompt; with per-sequence streams each stream gets a copy of
the buffer), then steps of one new token for each of N sequences; median of the steps after
one warm-up step; the new tokens are removed with ``seq_rm`` before the next N.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from perf import engine_path

engine_path.add()
from llama_engine.llama_runner import LlamaRunner, RunnerConfig  # noqa: E402  (after engine_path.add())


@dataclass(frozen=True)
class StepPlan:
    prefill_sizes: tuple[int, ...] = (16, 64, 512)
    depths: tuple[int, ...] = (0, 1024, 4096)
    batch_sizes: tuple[int, ...] = (1, 8, 16, 32)
    history: int = 1024  # of each decoding sequence
    prefill_reps: int = 5
    long_prefill_reps: int = 3  # for prefills of 512 tokens
    decode_steps: int = 8


class _Steps:
    """A runner plus the next free position of each sequence."""

    def __init__(self, runner: LlamaRunner, vocab: int):
        self.runner = runner
        self.end: dict[int, int] = {}
        self._rng = random.Random(7)
        self._vocab = vocab

    def run(self, rows: list[tuple[int, int]]) -> float:
        """Decodes ``rows`` of (sequence, n new tokens) in steps of at most the runner's
        batch size; logits of each sequence's last token. Returns milliseconds."""
        r, cap = self.runner, self.runner.config.max_batch_tokens
        items = [(seq, self.end.get(seq, 0) + i, i == n - 1) for seq, n in rows for i in range(n)]
        for seq, n in rows:
            self.end[seq] = self.end.get(seq, 0) + n
        began = time.perf_counter()
        for start in range(0, len(items), cap):
            chunk = items[start : start + cap]
            for j, (seq, pos, last) in enumerate(chunk):
                r.tokens[j] = self._rng.randrange(self._vocab)
                r.positions[j] = pos
                r.seq_ids[j] = seq
                r.want_logits[j] = 1 if last or j == len(chunk) - 1 else 0
            if r.decode(len(chunk)) != 0:
                raise RuntimeError("llama_decode failed (KV pool too small?)")
        return (time.perf_counter() - began) * 1000

    def cut(self, seq: int, end: int) -> None:
        self.runner.seq_rm(seq, end, -1)
        self.end[seq] = end


def _config(gguf: str, threads: int, cfg: dict, cells: int, sequences: int) -> RunnerConfig:
    return RunnerConfig(gguf_path=gguf, kv_cells=cells, max_sequences=sequences,
                        max_batch_tokens=cfg["ubatch"], threads=threads, flash_attn=cfg["flash_attn"],
                        kv_unified=cfg["kv_unified"], extra_buffer_types=cfg["extra_buffer_types"])


def prefill_rows(gguf: str, threads: int, cfg: dict, plan: StepPlan) -> list[dict]:
    cells = -(-(max(plan.depths) + max(plan.prefill_sizes) + 256) // 256) * 256
    runner = LlamaRunner(_config(gguf, threads, cfg, cells, 1))
    steps, out = _Steps(runner, runner.n_vocab), []
    try:
        for depth in sorted(plan.depths):
            while steps.end.get(0, 0) < depth:  # history, untimed
                steps.run([(0, min(runner.config.max_batch_tokens, depth - steps.end.get(0, 0)))])
            for n in plan.prefill_sizes:
                reps = plan.long_prefill_reps if n >= 512 else plan.prefill_reps
                samples = []
                for _ in range(reps + 1):
                    samples.append(steps.run([(0, n)]))
                    steps.cut(0, depth)
                out.append({"kind": "prefill", "tokens": n, "depth": depth,
                            "ms": statistics.median(samples[1:]), "samples_ms": samples[1:]})
    finally:
        runner.close()
    return out


def decode_rows(gguf: str, threads: int, cfg: dict, plan: StepPlan) -> list[dict]:
    n_seq = max(plan.batch_sizes)
    per_stream = -(-(plan.history + plan.decode_steps + 2) // 256) * 256
    # per-sequence streams split the pool evenly: each stream must hold its own history
    cells = per_stream * n_seq if not cfg["kv_unified"] else per_stream + 256 * -(-n_seq * (plan.decode_steps + 2) // 256)
    runner = LlamaRunner(_config(gguf, threads, cfg, cells, n_seq))
    steps, out = _Steps(runner, runner.n_vocab), []
    try:
        while steps.end.get(0, 0) < plan.history:
            steps.run([(0, min(runner.config.max_batch_tokens, plan.history - steps.end.get(0, 0)))])
        for seq in range(1, n_seq):
            runner.seq_cp(0, seq, -1, -1)
            steps.end[seq] = plan.history
        steps.run([(0, 1)])  # applies the streams' buffer copies (llama.cpp does them at the next decode)
        steps.cut(0, plan.history)
        for n in plan.batch_sizes:
            samples = [steps.run([(seq, 1) for seq in range(n)]) for _ in range(plan.decode_steps + 1)]
            for seq in range(n):
                steps.cut(seq, plan.history)
            out.append({"kind": "decode", "sequences": n, "depth": plan.history,
                        "ms": statistics.median(samples[1:]), "samples_ms": samples[1:]})
    finally:
        runner.close()
    return out


def measure(gguf: str, threads: int, cfg: dict, plan: StepPlan) -> list[dict]:
    """Every row of ``plan`` for one engine configuration (keys flash_attn, kv_unified, ubatch,
    extra_buffer_types)."""
    return prefill_rows(gguf, threads, cfg, plan) + decode_rows(gguf, threads, cfg, plan)
