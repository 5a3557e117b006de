"""Step planning for voice: who gets the next ``llama_decode`` call, and how much.

Policy (documented in the README):

1. Every running stream decodes one token in every step; no stream is ever
   paused for another.
2. Time to first token comes first: while any prompt is waiting to be prefilled,
   every step also carries a prefill chunk; there are no decode-only steps.
3. The chunk is as large as the stream-rate floor allows. The floor is a pace:
   from its first token, every stream must have produced at least
   ``min_stream_rate`` tokens per second - several times the pace of speech. A
   step may take ``1 / min_stream_rate`` seconds (with a safety margin) plus the
   time the slowest decoding stream is ahead of that pace (``slack_s``, capped at
   ``max_slack_s``): a stream that ran fast absorbs a longer step, so a short
   prompt is prefilled whole instead of trickling in. With no stream decoding,
   the chunk is the whole batch.
4. Callers waiting for a first token come before stream speed above a lower
   *busy* floor (``busy_stream_rate``, 6 tokens/s: still well above the pace
   of speech, ~3.5 tokens/s): a step may always take ``safety /
   busy_stream_rate`` seconds, so a later turn's few dozen new tokens are
   prefilled in one or two steps even when every stream is at the floor, and
   a new request is admitted while one more stream (plus a minimal prefill
   chunk) fits that step. Measured on 2 cores: holding prefill and admission
   to the 12 tokens/s floor left later turns waiting 6-20 s once more than ~8
   calls were talking, while the streams' audio was far ahead of speech
   anyway. With nothing running, a request is always admitted.
5. Prompts are prefilled shortest-remaining first (a later turn whose history is
   cached needs a few dozen tokens and gets its first token almost at once),
   except that a prompt waiting longer than ``starvation_s`` goes first.
6. The step cost - the whole engine step, not only ``llama_decode`` - is
   learned online (``StepCostModel``). When the running streams
   alone already fill the deadline, the chunk shrinks to ``min_prefill_chunk``
   tokens: prompts still progress, streams slow down a little.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepCostModel:
    """Step time as a line in the batch's token count, ``overhead + per_token * n``,
    fitted online by exponentially weighted least squares over measured steps.
    (On CPU a decode token and a prompt token cost about the same inside one
    batch; the fixed part is reading the weights once per step.) Until steps of
    different sizes were seen, the prior line is used."""

    def __init__(self, overhead_s: float = 0.006, per_token_s: float = 0.0045, memory: float = 0.95):
        self.overhead_s = overhead_s
        self.per_token_s = per_token_s
        self._memory = memory
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        m = self._memory
        self._w = m * self._w + 1.0
        self._n = m * self._n + tokens
        self._t = m * self._t + seconds
        self._nn = m * self._nn + tokens * tokens
        self._nt = m * self._nt + tokens * seconds
        mean_n, mean_t = self._n / self._w, self._t / self._w
        var_n = self._nn / self._w - mean_n * mean_n
        if var_n > 4.0:  # sizes differ enough to separate the two terms
            slope = (self._nt / self._w - mean_n * mean_t) / var_n
            self.per_token_s = min(max(slope, 1e-5), 0.1)
            self.overhead_s = max(mean_t - self.per_token_s * mean_n, 0.0)
        elif mean_n > 0:
            self.overhead_s = max(mean_t - self.per_token_s * mean_n, 0.0)

    def predict(self, tokens: int) -> float:
        return self.overhead_s + self.per_token_s * tokens


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 512
    min_stream_rate: float = 12.0  # tokens/s every running stream keeps while prompts are prefilled
    busy_stream_rate: float = 6.0  # tokens/s every stream keeps while callers wait for a first token
    safety: float = 0.8  # fraction of the step deadline the plan may use
    min_prefill_chunk: int = 4  # a waiting prompt always progresses
    starvation_s: float = 2.0
    max_slack_s: float = 0.5  # most a step may borrow from streams ahead of pace


@dataclass
class PrefillCandidate:
    key: object  # the engine's sequence object
    remaining: int  # prompt tokens still to prefill
    waited_s: float


def pace_slack_s(tokens: int, since_first_token_s: float, min_rate: float) -> float:
    """How far ahead of ``min_rate`` tokens/s a stream is (negative: behind)."""
    return tokens / min_rate - since_first_token_s


class StepPlanner:
    def __init__(self, config: SchedulerConfig, cost: StepCostModel | None = None):
        self.config = config
        self.cost = cost or StepCostModel()

    def prefill_budget(self, decodes: int, slack_s: float = 0.0) -> int:
        """Prompt tokens the next step may carry beside ``decodes`` decode tokens;
        ``slack_s``: how far the slowest decoding stream is ahead of the floor pace."""
        room = self.config.max_batch_tokens - decodes
        if decodes == 0:
            return room
        spare = self.step_deadline_s(slack_s) - self.cost.predict(decodes)
        tokens = int(spare / self.cost.per_token_s) if spare > 0 else 0
        return max(min(tokens, room), min(self.config.min_prefill_chunk, room), 0)

    def step_deadline_s(self, slack_s: float = 0.0) -> float:
        """How long a step carrying prefill may take: the floor pace plus the slack
        of the slowest stream, and never less than the busy floor allows."""
        paced = self.config.safety / self.config.min_stream_rate + min(max(slack_s, 0.0), self.config.max_slack_s)
        return max(paced, self.config.safety / self.config.busy_stream_rate)

    def admits_stream(self, running: int, slack_s: float = 0.0) -> bool:
        """May a new stream join ``running`` ones without breaking the floor?
        ``slack_s`` as in ``prefill_budget``: its prefill may borrow it."""
        if running == 0:
            return True
        return self.cost.predict(running + 1 + self.config.min_prefill_chunk) <= self.step_deadline_s(slack_s)

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
