"""Step planning for voice: who gets the next ``llama_decode`` call, and how much.

Policy (documented in the README):

1. Every running stream decodes one token in every step; no stream is ever
   paused for another.
2. Time to first token comes first: while any prompt is waiting to be prefilled,
   every step also carries a prefill chunk; there are no decode-only steps.
3. The chunk is as large as the stream-rate floor allows: the step must finish
   within ``1 / min_stream_rate`` seconds (with a safety margin) so that every
   stream keeps at least ``min_stream_rate`` tokens/s - several times the pace of
   speech. With no stream decoding, the chunk is the whole batch.
4. Prompts are prefilled shortest-remaining first (a later turn whose history is
   cached needs a few dozen tokens and gets its first token almost at once),
   except that a prompt waiting longer than ``starvation_s`` goes first.
5. The step cost is learned online: ``overhead + per_decode * decodes +
   per_prefill * prefill tokens``, moving averages of measured steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepCostModel:
    overhead_s: float = 0.002
    per_decode_s: float = 0.004
    per_prefill_s: float = 0.003
    smoothing: float = 0.2

    def observe(self, decodes: int, prefills: int, seconds: float) -> None:
        a = self.smoothing
        if prefills == 0 and decodes > 0:
            sample = max(seconds - self.overhead_s, 0.0) / decodes
            self.per_decode_s += a * (sample - self.per_decode_s)
        elif prefills > 0:
            rest = seconds - self.overhead_s - decodes * self.per_decode_s
            sample = max(rest, 0.0) / prefills
            self.per_prefill_s += a * (max(sample, 1e-5) - self.per_prefill_s)

    def predict(self, decodes: int, prefills: int) -> float:
        return self.overhead_s + decodes * self.per_decode_s + prefills * self.per_prefill_s


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 512
    min_stream_rate: float = 12.0  # tokens/s every running stream keeps
    safety: float = 0.8  # fraction of the step deadline the plan may use
    min_prefill_chunk: int = 16  # a waiting prompt always progresses
    starvation_s: float = 2.0


@dataclass
class PrefillCandidate:
    key: object  # the engine's sequence object
    remaining: int  # prompt tokens still to prefill
    waited_s: float


class StepPlanner:
    def __init__(self, config: SchedulerConfig, cost: StepCostModel | None = None):
        self.config = config
        self.cost = cost or StepCostModel()

    def prefill_budget(self, decodes: int) -> int:
        """Prompt tokens the next step may carry beside ``decodes`` decode tokens."""
        room = self.config.max_batch_tokens - decodes
        if decodes == 0:
            return room
        deadline = self.config.safety / self.config.min_stream_rate
        spare = deadline - self.cost.predict(decodes, 0)
        tokens = int(spare / self.cost.per_prefill_s) if spare > 0 else 0
        return max(min(tokens, room), min(self.config.min_prefill_chunk, room), 0)

    def plan_prefill(self, candidates: list[PrefillCandidate], budget: int) -> list[tuple[object, int]]:
        """Split ``budget`` prompt tokens among prefilling sequences (see policy)."""
        starving = sorted(
            (c for c in candidates if c.waited_s >= self.config.starvation_s), key=lambda c: -c.waited_s
        )
        rest = sorted((c for c in candidates if c.waited_s < self.config.starvation_s), key=lambda c: c.remaining)
        plan = []
        for candidate in starving + rest:
            if budget <= 0:
                break
            take = min(candidate.remaining, budget)
            plan.append((candidate.key, take))
            budget -= take
        return plan
