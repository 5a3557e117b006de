"""Figures of one run: latency percentiles split by first and later turns, throughput, cache ratio."""

from __future__ import annotations

from perf.voice_load.calls import TurnRecord
from perf.voice_load.stats import summarize


def _ms(values: list[float | None]) -> list[float]:
    return [v * 1000 for v in values if v is not None]


def figures(records: list[TurnRecord], wall_s: float) -> dict:
    real = [r for r in records if not r.speculative]
    ok = [r for r in real if r.result.ok]
    out = {"turns": len(real), "errors": len(real) - len(ok),
           "speculative": sum(r.speculative for r in records)}
    for name, group in (("all", ok), ("first_turn", [r for r in ok if r.turn == 0]),
                        ("later_turns", [r for r in ok if r.turn > 0])):
        out[name] = {
            "ttft_ms": summarize(_ms([r.result.ttft_s for r in group])),
            "first_text_ms": summarize(_ms([r.result.first_text_s for r in group])),
            "itl_ms": summarize(_ms([gap for r in group for gap in r.result.itl_s])),
            "decode_tps": summarize([t for r in group if (t := r.result.decode_tps) is not None]),
        }
    tokens = sum(r.result.completion_tokens or 0 for r in ok)
    prompt = sum(r.result.prompt_tokens or 0 for r in ok)
    cached = sum(r.result.cached_tokens or 0 for r in ok)
    out["output_tokens_per_s"] = tokens / wall_s if wall_s > 0 else 0.0
    out["cache_ratio"] = cached / prompt if prompt else 0.0
    out["wall_s"] = wall_s
    return out
