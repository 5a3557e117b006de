"""The overload judge (scheduler policy 7): how much later than on a free machine a
request would get its first token, and whether that is past the bound.

A request that would wait longer than ``overload_ttft_s`` for other requests is refused
(503 ``server_overloaded``) before any of its prefill, so that the admitted ones keep
their first token in time and a load balancer can retry elsewhere. The engine asks on
arrival and again each step for requests none of whose prompt has been computed yet.
"""

from __future__ import annotations

from typing import Sequence

from engine_contract import Overloaded

from .prefix_cache import PrefixCache, shared_blocks
from .scheduler import StepPlanner
from .sequence import SequenceState


class OverloadJudge:
    def __init__(self, planner: StepPlanner, cache: PrefixCache, max_running: int) -> None:
        self.planner = planner
        self.cache = cache
        self.max_running = max_running

    @property
    def active(self) -> bool:
        return self.planner.config.overload_ttft_s > 0

    def refusal(self, s: SequenceState, delay_s: float, waited_s: float) -> Overloaded | None:
        """The refusal of ``s`` if, having waited ``waited_s``, it would wait ``delay_s``
        more for other work than the bound allows."""
        if not self.planner.refuses(waited_s + delay_s):
            return None
        return Overloaded(f"the request would wait about {waited_s + delay_s:.1f} s for other requests before its "
                          f"first token (limit {self.planner.config.overload_ttft_s:g} s); retry on another "
                          "replica or later")

    def estimate_new_tokens(self, s: SequenceState) -> None:
        """The prompt tokens ``s`` would prefill itself now (not cached nor being computed by a
        running prefill) and the sequences computing the rest of its prefix."""
        reusable, computing = self.cache.reusable_prefix(s.request.prompt, s.estimate.keys)
        s.estimate.new_tokens, s.estimate.awaits = len(s.request.prompt) - reusable, frozenset(computing)

    def queue_delay_s(self, s: SequenceState, running: Sequence[SequenceState], waiting: Sequence[SequenceState],
                      beside: tuple[int, float | None]) -> float:
        """How much later than on a free machine ``s`` would get its first token: the
        prompt tokens prefilled before its own (shortest remaining first, and the
        prefixes other requests compute for it), beside the streams that keep decoding,
        less the prefill of its prompt on its own (a prefix computed for it is work it
        would otherwise do), plus the wait for a running slot when all are taken.
        ``beside``: the engine's load without prefills, once per judging pass - the prompts
        ahead are prefilled beside the streams decoding now (with none, in full chunks, as
        the step does); once prefilled, a paced stream rests after a few tokens."""
        is_running = s.seq >= 0
        own = s.prompt_left if is_running else s.estimate.new_tokens
        ahead = sum(r.prompt_left for r in running if r is not s and 0 < r.prompt_left
                    and (r.prompt_left <= own or r.seq in s.estimate.awaits))
        ahead += sum(self.work_beside(w, s) for w in waiting if w.estimate.new_tokens <= own and w is not s)
        load, wait = beside
        alone = max(s.estimate.alone_tokens, own)
        delay = self.planner.prefill_time_s(load, wait, ahead + own) - self.planner.prefill_time_s(load, wait, alone)
        queued = len(running) + sum(1 for w in waiting if w is not s) - self.max_running
        if not is_running and queued >= 0:  # slots free as streams end: the soonest ends after its remaining tokens
            step = self.planner.cost.predict(0, max(load, 1))
            left = sorted(r.request.max_new_tokens - len(r.generated) for r in running)
            delay += left[min(queued, len(left) - 1)] * step if left else 0.0
        return delay

    def work_beside(self, w: SequenceState, s: SequenceState) -> int:
        """Prompt tokens the queued ``w`` would prefill that ``s`` does not need: the blocks
        their prompts share are computed once, by whichever goes first, and are part of
        ``s``'s own prefill (a burst of calls with a new system prompt waits only for the
        others' own turns, not for the system prompt once per call)."""
        reusable = len(w.request.prompt) - w.estimate.new_tokens  # cached or being computed already
        # only blocks past those matter (this runs for every pair of queued requests each step:
        # a cached system prompt is not walked again)
        common = shared_blocks(w.estimate.keys, s.estimate.keys, start=reusable // self.cache.block_size) * self.cache.block_size
        return max(min(w.estimate.new_tokens, 1), w.estimate.new_tokens - max(0, common - reusable))  # its logits
