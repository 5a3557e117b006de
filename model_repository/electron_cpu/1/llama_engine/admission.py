"""Requests from arrival to a running slot: judged on arrival and again each step until
their prefill begins (``overload``), admitted into KV cells when a slot and room are free."""

from __future__ import annotations

import logging
import time

from .batch import stream_load
from .overload import OverloadJudge
from .prefix_cache import PrefixCache, block_keys
from .sampling import TokenSampler
from .scheduler import StepPlanner
from .sequence import SequenceState
from .stats import EngineStats

log = logging.getLogger(__name__)


class AdmissionQueue:
    """``arrived``: taken from the engine's inbox, not yet judged; ``waiting``: judged,
    not yet admitted. The engine's running list is passed in; admission appends to it."""

    def __init__(self, cache: PrefixCache, planner: StepPlanner, max_running: int, reply_reserve_tokens: int,
                 n_vocab: int, stats: EngineStats) -> None:
        self.cache = cache
        self.planner = planner
        self.max_running = max_running
        # reply tokens of each running request admission keeps KV cells for (a voice reply: 150-250)
        self.reply_reserve_tokens = reply_reserve_tokens
        self.n_vocab = n_vocab
        self.stats = stats
        self.judge = OverloadJudge(planner, cache, max_running)
        self.arrived: list[SequenceState] = []
        self.waiting: list[SequenceState] = []

    def take_arrivals(self, running: list[SequenceState]) -> None:
        """Queue new requests, refusing at once those whose first token would come
        too late (scheduler policy 7) while other work is ahead of them."""
        if not self.arrived:
            return
        arrived, self.arrived = self.arrived, []
        beside = stream_load(running, self.planner, time.time_ns(), with_prefills=False)  # beside the prompts ahead
        for s in arrived:
            s.estimate.keys = block_keys(s.request.prompt, self.cache.block_size)
            self.judge.estimate_new_tokens(s)
            # what it would prefill on a machine free when it arrived: a prefix another request
            # computed while it waited (in the inbox during a step) is its own work done for it
            cached = self.cache.cached_before(s.request.prompt, s.estimate.keys, s.timeline.arrival_clock)
            s.estimate.alone_tokens = len(s.request.prompt) - min(cached, len(s.request.prompt) - 1)
            if (running or self.waiting) and self._refused(s, running, beside, waited_s=0.0):
                continue
            self.waiting.append(s)

    def _refused(self, s: SequenceState, running: list[SequenceState], beside: tuple[int, float | None],
                 waited_s: float) -> bool:
        """Refuse ``s`` (503 ``server_overloaded``) if the judge finds it would be late."""
        refusal = self.judge.refusal(s, self.judge.queue_delay_s(s, running, self.waiting, beside), waited_s)
        if refusal is None:
            return False
        self.stats.overload_refusals += 1
        log.warning("request %s refused: %s; %d running, %d waiting", s.sink.request_id, refusal,
                    len(running), len(self.waiting))
        s.sink.fail(str(refusal))
        return True

    def shed_late(self, running: list[SequenceState], now_ns: int) -> None:
        """Judge again, each step, the requests none of whose prompt has been computed yet
        (queued, or admitted and waiting for prefill): shorter prompts that arrive later go
        first, so a wait that looked short on arrival can grow past the bound. Those that
        would now be late are refused, still before any of their prefill, so that the
        admitted ones keep their first token in time. Time spent waiting for a shared
        prefix another request computes is the request's own prefill, not a wait for others."""
        untouched = [s for s in running if not s.prefill_started and s.prompt_left > 0]
        if not self.judge.active or not (self.waiting or untouched):
            return
        beside = stream_load(running, self.planner, now_ns, with_prefills=False)
        kept = []
        for s in self.waiting:
            self.judge.estimate_new_tokens(s)  # a running prefill may have begun computing its prefix since
            if not self._refused(s, running, beside, waited_s=(now_ns - s.timeline.arrival_ns) / 1e9):
                kept.append(s)
        self.waiting = kept
        for s in untouched:
            if self._refused(s, running, beside, waited_s=(now_ns - s.timeline.arrival_ns) / 1e9):
                running.remove(s)
                s.sampler.close()
                self.cache.release(s.seq)

    def admit(self, running: list[SequenceState]) -> None:
        """Move waiting requests, in order, into ``running`` while slots, the planner's
        stream budget and KV cells allow."""
        if not self.waiting:
            return
        still_waiting = []
        load, wait = stream_load(running, self.planner, time.time_ns())
        for i, s in enumerate(self.waiting):
            if len(running) >= self.max_running or not self.planner.admits_stream(load, wait):
                still_waiting.extend(self.waiting[i:])
                break
            if self.cache.awaits_running_prefill(s.request.prompt):
                still_waiting.append(s)  # its prefix is being computed right now
                continue
            admission = self.cache.admit(s.request.prompt)
            s.seq, s.n_past = admission.seq, admission.reused_tokens
            s.prefilled, s.reused_blocks = admission.reused_tokens, admission.reused_blocks
            reserve = self.reply_reserve_tokens
            needed = s.cells_ahead(reserve) + sum(r.cells_ahead(reserve) for r in running)
            if not self.cache.make_room(needed):
                self.cache.release(s.seq)  # not enough KV now; try again when some finish
                s.seq, s.n_past, s.prefilled, s.reused_blocks = -1, 0, 0, 0
                still_waiting.extend(self.waiting[i:])
                break
            s.sampler = TokenSampler(
                s.request.sampling, self.n_vocab, s.request.end_id, s.request.max_new_tokens, s.guide
            )
            s.timeline.first_scheduled_ns = time.time_ns()
            running.append(s)
            load += 1
            log.debug(
                "request %s admitted on seq %d: %d prompt tokens, %d reused",
                s.sink.request_id, s.seq, len(s.request.prompt), s.n_past,
            )
        self.waiting = still_waiting

    def drop_cancelled(self) -> None:
        """Close the waiting requests whose client cancelled."""
        for s in [s for s in self.waiting if s.sink.is_cancelled()]:
            self.waiting.remove(s)
            self.stats.cancellations += 1
            s.sink.close_cancelled()
