"""Counters and gauges of the engine loop, published to Triton's metrics endpoint."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    # counters (monotonic)
    decode_steps: int = 0
    step_tokens: int = 0  # tokens in all llama_decode calls; / decode_steps = tokens per step
    prefill_tokens: int = 0
    completed: int = 0
    cancellations: int = 0
    errors: int = 0
    prefix_hits: int = 0  # prompt blocks reused from the prefix cache
    prefix_misses: int = 0  # full prompt blocks that had to be prefilled
    paced_skips: int = 0  # decode steps paced streams skipped (ahead of their playhead) for waiting prompts
    overload_refusals: int = 0  # requests refused because their first token would come too late
    # gauges (current values)
    running: int = 0
    waiting: int = 0
    kv_cells_used: int = 0
    cached_blocks: int = 0
    threads: int = 0  # llama.cpp threads the next step runs on
