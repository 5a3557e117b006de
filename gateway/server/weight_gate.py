"""The quality gate a requantized copy of the shipped weights must pass, and the choice
among those that pass. Pure: token lists, logits and timings in, a verdict out.

On the fixed prompt set, a candidate's greedy continuations are compared with the
shipped file's over their first ``PREFIX_TOKENS`` tokens. It passes when:

- its vocabulary (tokens, merges, special ids, chat template) is the shipped file's:
  the gateway's tokenizer and template come from it;
- every prompt where it parts from the shipped output parts at a *near-tie*: where
  the shipped model itself ranks the two tokens less than ``MAX_TIE_GAP`` logits
  apart (a larger gap means the weights changed what the model says);
- it has the same first tokens on at least ``MIN_AGREEMENT`` of the *stable* prompts:
  those whose shipped output is the same in two batch shapes (the prompts decoded in
  the given and in the reverse order). On the others the shipped file's own output is
  undecided within the prefix (this small model has many near-ties: on a 2-core Intel
  Xeon the shipped file agreed with itself across the two orders on 36 of the 50
  prompts, parting at gaps up to 0.37), so exact agreement there means nothing and
  those prompts are judged by the near-tie rule alone. At least ``MIN_STABLE`` of the
  prompts must be stable, or the gate cannot judge.

Among the passing candidates the fastest voice turn wins (a 24-token prefill at 1k
tokens of history, then the first decode steps a TTS needs to start speaking), if it
beats the shipped file by at least ``MIN_SPEEDUP``; otherwise the shipped file stays.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PREFIX_TOKENS = 32
MIN_AGREEMENT = 0.9  # of the stable prompts
MIN_STABLE = 0.5  # of the prompts: fewer stable ones and the gate cannot judge
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
    stable: int | None = None  # prompts whose shipped output is the same in both batch shapes (None: all)
    stable_agree: int | None = None  # of those, the prompts that agree

    @property
    def near_ties(self) -> int:
        return sum(d.near_tie for d in self.divergences)

    @property
    def far(self) -> int:
        return len(self.divergences) - self.near_ties

    @property
    def passed(self) -> bool:
        stable = self.prompts if self.stable is None else self.stable
        stable_agree = self.agree if self.stable_agree is None else self.stable_agree
        return (self.vocabulary_same and self.far == 0 and stable > 0
                and stable >= math.ceil(MIN_STABLE * self.prompts - 1e-9)
                and stable_agree >= math.ceil(MIN_AGREEMENT * stable - 1e-9))

    def summary(self) -> str:
        if not self.vocabulary_same:
            return "vocabulary differs from the shipped file's"
        stable = "" if self.stable is None else f" ({self.stable_agree}/{self.stable} of the stable prompts)"
        return (f"{self.agree}/{self.prompts} same first {PREFIX_TOKENS} tokens{stable}, "
                f"{self.near_ties} near-ties, {self.far} far divergences")


def divergence(prompt: int, shipped: Continuation, candidate: list[int],
               prefix: int = PREFIX_TOKENS) -> Divergence | None:
    """Where ``candidate`` first parts from ``shipped`` within ``prefix`` tokens (None: never),
    with the shipped model's logit gap between the two tokens there."""
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


def stable_prompts(shipped: list[Continuation], shipped_again: list[Continuation],
                   prefix: int = PREFIX_TOKENS) -> list[bool]:
    """Per prompt: the shipped file's two runs (two batch shapes) have the same first tokens."""
    return [a.tokens[:prefix] == b.tokens[:prefix] for a, b in zip(shipped, shipped_again)]


def judge(shipped: list[Continuation], candidate: list[list[int]], vocabulary_same: bool = True,
          stable: list[bool] | None = None, prefix: int = PREFIX_TOKENS) -> GateResult:
    """The gate's verdict on ``candidate``'s greedy outputs, prompt by prompt against ``shipped``;
    ``stable``: per prompt, whether the shipped output is the same in two batch shapes
    (``stable_prompts``; None: count every prompt as stable)."""
    if len(shipped) != len(candidate) or (stable is not None and len(stable) != len(shipped)):
        raise ValueError(f"{len(shipped)} shipped outputs, {len(candidate)} candidate outputs")
    found = [divergence(i, s, c, prefix) for i, (s, c) in enumerate(zip(shipped, candidate))]
    divergences = [d for d in found if d is not None]
    if stable is None:
        return GateResult(len(shipped), len(shipped) - len(divergences), divergences, vocabulary_same)
    return GateResult(len(shipped), len(shipped) - len(divergences), divergences, vocabulary_same,
                      stable=sum(stable), stable_agree=sum(1 for d, ok in zip(found, stable) if ok and d is None))


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
