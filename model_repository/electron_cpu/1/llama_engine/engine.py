"""The engine loop: in-flight batching of many requests over one llama.cpp context.

One thread owns llama.cpp. Each iteration (a *step*) admits waiting requests
(``admission``), drops cancelled ones, builds one batch with the next token of every
decoding sequence plus prompt chunks of prefilling ones (``scheduler`` plans it,
``batch`` fills it), runs ``llama_decode`` once, then samples the new tokens and
streams them (``responses``). Requests join and leave between steps. Prompt prefixes
are shared through ``prefix_cache``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Sequence

from .admission import AdmissionQueue
from .batch import decode_candidates, fill_batch, record_decoded
from .guides import GuideMask, InvalidGuide
from .llama_runner import DECODE_NO_KV_SLOT, DECODE_OK, LlamaRunner
from .params import GenerationRequest
from .prefix_cache import PrefixCache
from .responses import ResponseWriter
from .sampling import token_logprob
from .scheduler import PrefillCandidate, StepPlanner
from .sequence import ResponseSink, SequenceState, Timeline
from .stats import EngineStats
from .thread_budget import ThreadBudgetWatch

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runner: LlamaRunner, cache: PrefixCache, planner: StepPlanner, max_running: int,
                 cancel_check_period_s: float = 0.02, cache_idle_s: float = 60.0,
                 token_chars: Sequence[int] | None = None, stream_interval_s: float = 0.04,
                 thread_budget: ThreadBudgetWatch | None = None, reply_reserve_tokens: int = 512):
        self.runner = runner
        # llama.cpp threads follow the cores other processes leave free (None: fixed)
        self.thread_budget = thread_budget
        # characters each token id adds to the text; paced streams' playheads count them
        self.token_chars = token_chars if token_chars is not None else runner.token_chars()
        self.cache_idle_s = cache_idle_s  # cached blocks unused this long are evicted
        # asking Triton whether a request was cancelled is an IPC call per request:
        # done at most this often (TensorRT-LLM's cancellation_check_period_ms)
        self.cancel_check_period_s = cancel_check_period_s
        self._last_cancel_check = 0.0
        self.cache = cache
        self.planner = planner
        self._after_idle = True  # the engine slept before the next step (its cost is not learned from)
        self.stats = EngineStats()
        self.queue = AdmissionQueue(cache, planner, max_running, reply_reserve_tokens, runner.n_vocab, self.stats)
        self.responses = ResponseWriter(cache.block_size, stream_interval_s, planner.config.playback_buffer_s)
        self._inbox: collections.deque[SequenceState] = collections.deque()
        self._running: list[SequenceState] = []
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="llama-engine", daemon=True)

    # ---- interface for the Triton model -----------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: ResponseSink, guide: GuideMask | None = None) -> None:
        """``guide``: the compiled guide of a guided request (``guides``)."""
        timeline = Timeline(arrival_ns=time.time_ns(), arrival_clock=time.monotonic())
        with self._wake:
            self._inbox.append(SequenceState(request, sink, timeline, guide=guide))
            self._wake.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout)
        for s in self._running + self.queue.waiting + self.queue.arrived + list(self._inbox):
            s.sink.fail("the model is shutting down")

    # ---- the loop ----------------------------------------------------------------
    def _loop(self) -> None:
        last_stats = last_trim = 0.0
        queue = self.queue
        while True:
            with self._wake:
                while not self._stop and not self._inbox and not queue.arrived and not self._running \
                        and not queue.waiting:
                    self._after_idle = True
                    last_trim = self._trim_idle_cache(last_trim)
                    self._refresh_gauges()
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return
                queue.arrived.extend(self._inbox)
                self._inbox.clear()
            try:
                self._step()
            except Exception:  # a bug must not wedge the model: fail what ran, go on
                log.exception("engine step failed; failing %d running requests", len(self._running))
                for s in list(self._running):
                    self._finish(s, error="internal engine error")
            now = time.monotonic()
            if now - last_stats >= 0.1:
                last_stats = now
                self._refresh_gauges()
            last_trim = self._trim_idle_cache(last_trim)

    def _trim_idle_cache(self, last_trim: float) -> float:
        """At most once a second, evict cached blocks idle for ``cache_idle_s``."""
        now = time.monotonic()
        if now - last_trim < 1.0:
            return last_trim
        evicted = self.cache.evict_idle(self.cache_idle_s)
        if evicted:
            log.debug("evicted %d prefix-cache blocks idle for over %.0f s", evicted, self.cache_idle_s)
        return now

    def _step(self) -> None:
        step_started = time.perf_counter()
        self._drop_cancelled()
        self.queue.take_arrivals(self._running)
        self.queue.shed_late(self._running, time.time_ns())
        self.queue.admit(self._running)
        self.responses.flush_held(self._running, time.time_ns())
        if not self._running:
            if self.queue.waiting:
                time.sleep(0.002)  # waiting only on a running prefill that was cancelled
            return
        now = time.time_ns()
        prefilling = [s for s in self._running if s.prompt_left > 0]
        streams = decode_candidates(self._running, self.planner, now)
        decoding = [c.key for c in self.planner.choose_decodes(streams, prompts_waiting=bool(prefilling))]
        wait = min((c.wait_s for c in streams), default=None)
        budget = self.planner.prefill_budget(len(decoding), wait, sum(s.prompt_left for s in prefilling)) \
            if prefilling else 0
        plan = self.planner.plan_prefill(
            [PrefillCandidate(s, s.prompt_left, (now - s.timeline.arrival_ns) / 1e9) for s in prefilling], budget
        )
        self.stats.paced_skips += len(streams) - len(decoding)
        n, samplers = fill_batch(self.runner, decoding, plan)
        if self.thread_budget is not None:
            self.runner.use_threads(self.thread_budget.threads)
        decode_started = time.perf_counter()
        rc = self.runner.decode(n)
        if rc == DECODE_NO_KV_SLOT and self.cache.make_room(n):
            rc = self.runner.decode(n)
        if rc == DECODE_NO_KV_SLOT:
            self._end_longest()  # running replies alone fill the pool; the next step plans again
            return
        if rc != DECODE_OK:
            self._fail_batch(decoding, plan, rc)
            return
        decoded = time.perf_counter()
        self._after_decode(decoding, plan, samplers)
        # the whole step counts: sampling, responses and checks slow streams too
        took = time.perf_counter() - step_started
        prompt_tokens = n - len(decoding)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("step: %d decodes (%d resting), %d prompt tokens, predicted %.1f ms, took %.1f ms "
                      "(planning %.1f, llama_decode %.1f, sampling and sending %.1f)",
                      len(decoding), len(streams) - len(decoding), prompt_tokens,
                      1e3 * self.planner.cost.predict(prompt_tokens, len(decoding)), 1e3 * took,
                      1e3 * (decode_started - step_started), 1e3 * (decoded - decode_started),
                      1e3 * (step_started + took - decoded))
        self.planner.cost.observe(prompt_tokens, took, after_idle=self._after_idle, decodes=len(decoding))
        self._after_idle = False
        self.stats.decode_steps += 1
        self.stats.step_tokens += n
        self.stats.prefill_tokens += sum(take for _, take in plan)

    def _after_decode(self, decoding, plan, samplers) -> None:
        record_decoded(self.cache, decoding, plan)
        for s, _ in plan:
            if s.prompt_left > 0 and s.request.streaming and s.request.return_prefill_progress:
                self.responses.report_prefill(s)
        for s, index in samplers:
            try:
                token = s.sampler.sample(self.runner.ctx, index)
            except InvalidGuide as exc:  # this request's guide is stuck: it alone fails
                self._finish(s, error=str(exc))
                continue
            self._on_token(s, token, index)

    def _on_token(self, s: SequenceState, token: int, index: int) -> None:
        now = time.time_ns()
        s.timeline.first_token_ns = s.timeline.first_token_ns or now
        s.timeline.last_token_ns = now
        request = s.request
        if token == request.end_id:
            self._finish(s)
            return
        s.generated.append(token)
        s.chars += self.token_chars[token]
        if request.return_log_probs:
            s.log_probs.append(token_logprob(self.runner.ctx, index, token, self.runner.n_vocab))
        if s.reached_stop():
            self._finish(s)
            return
        s.pending = token
        if request.streaming and not self.responses.may_hold(s, now):
            self.responses.send(s, final=False)

    # ---- completion, cancellation -------------------------------------------------
    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check < self.cancel_check_period_s:
            return
        self._last_cancel_check = now
        self.queue.drop_cancelled()
        for s in [s for s in self._running if s.sink.is_cancelled()]:
            self.stats.cancellations += 1
            self._finish(s, cancelled=True)

    def _finish(self, s: SequenceState, error: str | None = None, cancelled: bool = False) -> None:
        self._running.remove(s)
        if s.sampler is not None:
            s.sampler.close()
        self.cache.release(s.seq)
        if error is not None:
            self.stats.errors += 1
            s.sink.fail(error)
        elif cancelled:
            s.sink.close_cancelled()
            log.info("request %s cancelled after %d tokens", s.sink.request_id, len(s.generated))
        else:
            self.stats.completed += 1
            self.responses.send(s, final=True)

    def _end_longest(self) -> None:
        """The KV pool is full of running sequences (admission reserves ``reply_reserve_tokens``
        of each reply, not the whole context): end the reply holding the most cells as if it
        had reached its limit, so that the others go on."""
        longest = max(self._running, key=lambda r: r.n_past)
        log.warning("request %s ended after %d tokens: the KV pool (%d cells) is full of running requests",
                    longest.sink.request_id, len(longest.generated), self.cache.ledger.n_cells)
        self._finish(longest)

    def _fail_batch(self, decoding, plan, rc: int) -> None:
        log.error("llama_decode returned %d for a batch of %d sequences", rc, len(decoding) + len(plan))
        for s in {*decoding, *(s for s, _ in plan)}:
            self._finish(s, error=f"the model failed to decode (llama.cpp code {rc})")

    def _refresh_gauges(self) -> None:
        """Update the gauges in ``stats`` (the engine thread only: they read its state).
        Other threads read ``stats`` as it is; no call in here may block."""
        st = self.stats
        st.running = len(self._running)
        st.waiting = len(self.queue.waiting) + len(self.queue.arrived) + len(self._inbox)
        st.kv_cells_used = self.cache.ledger.used_cells()
        st.cached_blocks = self.cache.cached_blocks
        st.threads = self.thread_budget.threads if self.thread_budget is not None else self.runner.threads
        st.prefix_hits, st.prefix_misses = self.cache.hits, self.cache.misses
