"""The quality gate a requantized copy of the shipped weights must pass, and the choice
among those that pass. Pure: token lists, logits and timings in, a verdict out.

On the fixed prompt set, a candidate's greedy continuations are compared with the
shipped file's over their first ``PREFIX_TOKENS`` tokens. It passes when:

- its vocabulary (tokens, merges, special ids, chat template) is the shipped file's:
  the gateway's tokenizer and template come from it;
- it has **no far divergence**: wherever it first parts from the shipped output, the
  shipped model itself ranks the two tokens less than ``MAX_TIE_GAP`` logits apart
  (a *near-tie*, read exactly from the shipped file's own logits at that step). A
  larger gap, or a token outside the shipped model's kept candidates, means the
  weights changed what the model says.

There is no quota of identical outputs. The shipped file does not repeat itself: in
another batch order (other batch shapes, last bits of the logits) it gave the same
first 32 tokens on only 34-36 of the 50 prompts on a 2-core Intel Xeon, parting at
gaps up to 0.37 (28-36 of 50 on a 2-core AMD EPYC). A count of identical outputs
measures that noise, not the weights. What the weights can change is a choice the
model makes by a margin, and that is what a far divergence is. Q8_0 made from Q4_1
represents every Q4_1 weight within a small fraction of its own quantization step,
so its divergences are expected at near-ties only; Q4_0 drops Q4_1's per-block
offset, and it parted far on 33-39 of the 50 prompts (AMD EPYC, Intel Xeon).

Only the first divergence of a prompt is judged: past it the two continuations have
different contexts, and nothing later compares like with like. So a candidate's run
may stop a prompt there, and may stop altogether at its first far divergence (the
verdict is then known); prompts it did not run are ``None`` in its outputs.

Among the passing candidates the fastest voice turn wins (a 24-token prefill at 1k
tokens of history, then the first decode steps a TTS needs to start speaking), if it
beats the shipped file by at least ``MIN_SPEEDUP``; otherwise the shipped file stays.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PREFIX_TOKENS = 32
MAX_TIE_GAP = 0.5  # logits, under the shipped model
MIN_SPEEDUP = 0.05  # a candidate's voice turn must be this much shorter than the shipped file's
TURN_DECODES = 8  # decode steps counted in a voice turn (the first words a TTS speaks)


@dataclass(frozen=True)
class Continuation:
    """A greedy continuation with, per step, the top candidates (chosen first) and their logits."""

    tokens: list[int]
    top_ids: list[list[int]] = field(default_factory=list)
    top_logits: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class Divergence:
    prompt: int
    at: int  # index of the first differing token
    shipped_token: int
    candidate_token: int | None  # None: the candidate's output ended there
    gap: float  # the shipped model's logit of its token minus the candidate's
    exact: bool  # False: the candidate's token was not among the kept candidates, ``gap`` is a lower bound

    @property
    def near_tie(self) -> bool:
        return self.exact and self.gap < MAX_TIE_GAP


@dataclass(frozen=True)
class GateResult:
    prompts: int
    agree: int  # prompts whose first PREFIX_TOKENS tokens equal the shipped output's
    divergences: list[Divergence]
    vocabulary_same: bool = True
    not_run: int = 0  # prompts the candidate did not run: it stopped at a far divergence before them

    @property
    def near_ties(self) -> int:
        return sum(d.near_tie for d in self.divergences)

    @property
    def far(self) -> int:
        return len(self.divergences) - self.near_ties

    @property
    def passed(self) -> bool:
        """Same vocabulary, every prompt judged, and no far divergence."""
        return self.vocabulary_same and self.prompts > 0 and self.not_run == 0 and self.far == 0

    def summary(self) -> str:
        if not self.vocabulary_same:
            return "vocabulary differs from the shipped file's"
        stopped = f" (stopped there, {self.not_run} prompts not run)" if self.not_run else ""
        return (f"{self.agree}/{self.prompts} same first {PREFIX_TOKENS} tokens, "
                f"{self.near_ties} near-ties, {self.far} far divergences{stopped}")


def divergence(prompt: int, shipped: Continuation, candidate: list[int],
               prefix: int = PREFIX_TOKENS) -> Divergence | None:
    """Where ``candidate`` first parts from ``shipped`` within ``prefix`` tokens (None: never),
    with the shipped model's logit gap between the two tokens there. ``candidate`` may end
    at its first differing token (a run that stops a prompt there)."""
    a, b = shipped.tokens[:prefix], candidate[:prefix]
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if at is None:
        if len(a) == len(b):
            return None
        at = min(len(a), len(b))
    if at >= len(a):  # the shipped output ended first: nothing of the shipped model to judge by
        return Divergence(prompt, at, -1, b[at], math.inf, False)
    mine = b[at] if at < len(b) else None
    ids, logits = shipped.top_ids[at], shipped.top_logits[at]
    if mine is not None and mine in ids:
        return Divergence(prompt, at, a[at], mine, logits[0] - logits[ids.index(mine)], True)
    return Divergence(prompt, at, a[at], mine, logits[0] - logits[-1], False)


def near_tie_tokens(shipped: Continuation, prefix: int = PREFIX_TOKENS) -> list[list[int]]:
    """Per step of ``shipped``, the tokens a candidate may take there instead of the
    shipped one and still be a near-tie (``Divergence.near_tie``): what a candidate's run
    needs to know to stop at its first far divergence."""
    return [[i for i, logit in zip(ids, logits) if logits[0] - logit < MAX_TIE_GAP]
            for ids, logits in zip(shipped.top_ids[:prefix], shipped.top_logits[:prefix])]


def judge(shipped: list[Continuation], candidate: list[list[int] | None], vocabulary_same: bool = True,
          prefix: int = PREFIX_TOKENS) -> GateResult:
    """The gate's verdict on ``candidate``'s greedy outputs, prompt by prompt against
    ``shipped``; a ``None`` output is a prompt the candidate did not run."""
    if len(shipped) != len(candidate):
        raise ValueError(f"{len(shipped)} shipped outputs, {len(candidate)} candidate outputs")
    run = [(i, s, c) for i, (s, c) in enumerate(zip(shipped, candidate)) if c is not None]
    found = [divergence(i, s, c, prefix) for i, s, c in run]
    divergences = [d for d in found if d is not None]
    return GateResult(len(shipped), len(run) - len(divergences), divergences, vocabulary_same,
                      not_run=len(shipped) - len(run))


def voice_turn_ms(times_ms: dict[str, list[float]]) -> float:
    """A later turn of a call: its prefill at 1k history plus the first decode steps (medians)."""
    return statistics.median(times_ms["prefill_24_at_1k"]) + TURN_DECODES * statistics.median(times_ms["decode_at_1k"])


def choose(shipped_turn_ms: float, candidates: dict[str, tuple[GateResult | None, float | None]]) -> tuple[str, str]:
    """``candidates``: format -> (gate result or None if it could not be judged, voice turn ms
    or None if not timed). Returns the chosen format ("shipped" or a candidate's) and why."""
    passing = {name: turn for name, (gate, turn) in candidates.items()
               if gate is not None and gate.passed and turn is not None}
    if not passing:
        return "shipped", "no requantized copy passed the quality gate"
    best = min(passing, key=passing.get)
    if passing[best] > (1 - MIN_SPEEDUP) * shipped_turn_ms:
        return "shipped", (f"no passing copy is {MIN_SPEEDUP:.0%} faster: {best} {passing[best]:.0f} ms "
                           f"vs shipped {shipped_turn_ms:.0f} ms a voice turn")
    gate = candidates[best][0]
    return best, (f"{best}: {gate.summary()}; a voice turn {passing[best]:.0f} ms "
                  f"vs shipped {shipped_turn_ms:.0f} ms")
