"""The engine loop: in-flight batching of many requests over one llama.cpp context.

One thread owns llama.cpp. Each iteration (a *step*) admits waiting requests,
drops cancelled ones, builds one batch with the next token of every decoding
sequence plus prompt chunks of prefilling ones (see ``scheduler``), runs
``llama_decode`` once, then samples and streams the new tokens. Requests join
and leave between steps. Prompt prefixes are shared through ``prefix_cache``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Sequence

from engine_contract import PerfMetrics

from .guides import GuideMask, InvalidGuide
from .llama_runner import DECODE_NO_KV_SLOT, DECODE_OK, LlamaRunner
from .overload import OverloadJudge
from .params import GenerationRequest
from .prefix_cache import PrefixCache, block_keys
from .sequence import ResponseSink, SequenceState, StepOutput
from .sampling import TokenSampler, token_logprob
from .scheduler import DecodeCandidate, PrefillCandidate, StepPlanner, floor_wait_s, paced_wait_s, playback_lead_s
from .stats import EngineStats
from .thread_budget import ThreadBudgetWatch

log = logging.getLogger(__name__)



class Engine:
    def __init__(self, runner: LlamaRunner, cache: PrefixCache, planner: StepPlanner, max_running: int,
                 cancel_check_period_s: float = 0.02, cache_idle_s: float = 60.0,
                 token_chars: Sequence[int] | None = None, stream_interval_s: float = 0.04,
                 thread_budget: ThreadBudgetWatch | None = None, reply_reserve_tokens: int = 512):
        self.runner = runner
        # reply tokens of each running request admission keeps KV cells for (a voice reply: 150-250)
        self.reply_reserve_tokens = reply_reserve_tokens
        # llama.cpp threads follow the cores other processes leave free (None: fixed)
        self.thread_budget = thread_budget
        # a paced stream well ahead of its playhead sends its tokens at most this often (0: every token)
        self.stream_interval_s = stream_interval_s
        # characters each token id adds to the text; paced streams' playheads count them
        self.token_chars = token_chars if token_chars is not None else runner.token_chars()
        self.cache_idle_s = cache_idle_s  # cached blocks unused this long are evicted
        # asking Triton whether a request was cancelled is an IPC call per request:
        # done at most this often (TensorRT-LLM's cancellation_check_period_ms)
        self.cancel_check_period_s = cancel_check_period_s
        self._last_cancel_check = 0.0
        self.cache = cache
        self.planner = planner
        self.max_running = max_running
        self.judge = OverloadJudge(planner, cache, max_running)
        self._after_idle = True  # the engine slept before the next step (its cost is not learned from)
        self.stats = EngineStats()
        self._inbox: collections.deque[SequenceState] = collections.deque()
        self._waiting: list[SequenceState] = []
        self._arrived: list[SequenceState] = []  # taken from the inbox, not yet checked for overload
        self._running: list[SequenceState] = []
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="llama-engine", daemon=True)

    # ---- interface for the Triton model -----------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: ResponseSink, guide: GuideMask | None = None) -> None:
        """``guide``: the compiled guide of a guided request (``guides``)."""
        with self._wake:
            self._inbox.append(SequenceState(request, sink, arrival_ns=time.time_ns(), arrival_clock=time.monotonic(),
                                         guide=guide))
            self._wake.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout)
        for s in self._running + self._waiting + self._arrived + list(self._inbox):
            s.sink.fail("the model is shutting down")

    # ---- the loop ----------------------------------------------------------------
    def _loop(self) -> None:
        last_stats = last_trim = 0.0
        while True:
            with self._wake:
                while not self._stop and not self._inbox and not self._arrived and not self._running and not self._waiting:
                    self._after_idle = True
                    last_trim = self._trim_idle_cache(last_trim)
                    self._refresh_gauges()
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return
                self._arrived.extend(self._inbox)
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
        self._take_arrivals()
        self._shed_late(time.time_ns())
        self._admit()
        self._flush_held(time.time_ns())
        if not self._running:
            if self._waiting:
                time.sleep(0.002)  # waiting only on a running prefill that was cancelled
            return
        now = time.time_ns()
        prefilling = [s for s in self._running if s.prompt_left > 0]
        streams = self._decode_candidates(now)
        decoding = [c.key for c in self.planner.choose_decodes(streams, prompts_waiting=bool(prefilling))]
        wait = min((c.wait_s for c in streams), default=None)
        budget = self.planner.prefill_budget(len(decoding), wait, sum(s.prompt_left for s in prefilling)) \
            if prefilling else 0
        plan = self.planner.plan_prefill(
            [PrefillCandidate(s, s.prompt_left, (now - s.arrival_ns) / 1e9) for s in prefilling], budget
        )
        self.stats.paced_skips += len(streams) - len(decoding)
        n, samplers = self._fill_batch(decoding, plan)
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

    def _fill_batch(self, decoding, plan) -> tuple[int, list[tuple[SequenceState, int]]]:
        r = self.runner
        samplers = []
        n = 0
        for s in decoding:
            r.tokens[n], r.positions[n], r.seq_ids[n], r.want_logits[n] = s.pending, s.n_past, s.seq, 1
            samplers.append((s, n))
            n += 1
        for s, take in plan:
            start = s.prefilled
            end = start + take
            r.tokens[n : n + take] = s.request.prompt[start:end]
            r.positions[n : n + take] = range(s.n_past, s.n_past + take)
            r.seq_ids[n : n + take] = s.seq
            r.want_logits[n : n + take] = 0
            if end == len(s.request.prompt):
                r.want_logits[n + take - 1] = 1
                samplers.append((s, n + take - 1))
            n += take
        return n, samplers

    def _after_decode(self, decoding, plan, samplers) -> None:
        for s in decoding:
            self.cache.computed(s.seq, [s.pending])
            s.n_past += 1
            s.pending = None
        for s, take in plan:
            self.cache.computed(s.seq, s.request.prompt[s.prefilled : s.prefilled + take])
            s.prefill_started = True
            s.prefilled += take
            s.n_past += take
            if s.prompt_left > 0 and s.request.streaming and s.request.return_prefill_progress:
                self._report_prefill(s)
        for s, index in samplers:
            try:
                token = s.sampler.sample(self.runner.ctx, index)
            except InvalidGuide as exc:  # this request's guide is stuck: it alone fails
                self._finish(s, error=str(exc))
                continue
            self._on_token(s, token, index)

    def _decode_candidates(self, now_ns: int) -> list[DecodeCandidate]:
        """Every stream with a token to decode, with how long it can wait for the next."""
        floor, buffer = self.planner.config.min_stream_rate, self.planner.config.playback_buffer_s
        out = []
        for s in self._running:
            if s.pending is None:
                continue
            since = (now_ns - s.first_token_ns) / 1e9
            pace = s.request.playback_chars_per_s
            if pace > 0:
                lead = playback_lead_s(s.chars, since, pace)
                out.append(DecodeCandidate(s, paced_wait_s(lead, buffer), paced=True))
            else:
                out.append(DecodeCandidate(s, floor_wait_s(len(s.generated), since, floor), paced=False))
        return out

    def _on_token(self, s: SequenceState, token: int, index: int) -> None:
        now = time.time_ns()
        s.first_token_ns = s.first_token_ns or now
        s.last_token_ns = now
        request = s.request
        if token == request.end_id:
            self._finish(s)
            return
        s.generated.append(token)
        s.chars += self.token_chars[token]
        if request.return_log_probs:
            s.log_probs.append(token_logprob(self.runner.ctx, index, token, self.runner.n_vocab))
        tail = s.generated
        if len(tail) >= request.max_new_tokens or any(
            len(w) <= len(tail) and tuple(tail[-len(w) :]) == w for w in request.stop_words
        ):
            self._finish(s)
            return
        s.pending = token
        if request.streaming and not self._may_hold(s, now):
            self._send(s, final=False)

    def _may_hold(self, s: SequenceState, now_ns: int) -> bool:
        """Coalescing: a paced stream whose sent text is more than the playback buffer
        ahead of its playhead may hold new tokens for up to ``stream_interval_s`` and
        send them as one response (one gRPC message and one SSE event instead of
        several); the first token, unpaced streams and streams running low never wait."""
        pace = s.request.playback_chars_per_s
        if pace <= 0 or self.stream_interval_s <= 0 or s.sent == 0:
            return False
        if (now_ns - s.last_send_ns) / 1e9 >= self.stream_interval_s:
            return False
        sent_lead = playback_lead_s(s.sent_chars, (now_ns - s.first_token_ns) / 1e9, pace)
        return sent_lead > self.planner.config.playback_buffer_s

    def _flush_held(self, now_ns: int) -> None:
        """Send the tokens streams held back whose time has come."""
        for s in self._running:
            if s.request.streaming and s.sent < len(s.generated) and not self._may_hold(s, now_ns):
                self._send(s, final=False)

    # ---- admission, completion, cancellation ------------------------------------------
    def _load(self, now_ns: int, with_prefills: bool = True) -> tuple[int, float | None]:
        """Streams that decode in every step while prompts wait (urgent and unpaced
        decoders, plus - ``with_prefills`` - the prompts being prefilled, soon decoders),
        and how long the most urgent stream can wait for its next token."""
        streams = self._decode_candidates(now_ns)
        prefilling = sum(1 for s in self._running if s.prompt_left > 0) if with_prefills else 0
        chosen = self.planner.choose_decodes(streams, prompts_waiting=True)
        return len(chosen) + prefilling, min((c.wait_s for c in streams), default=None)

    def _take_arrivals(self) -> None:
        """Queue new requests, refusing at once those whose first token would come
        too late (scheduler policy 7) while other work is ahead of them."""
        if not self._arrived:
            return
        arrived, self._arrived = self._arrived, []
        beside = self._load(time.time_ns(), with_prefills=False)  # the streams the prompts ahead prefill beside
        for s in arrived:
            s.keys = block_keys(s.request.prompt, self.cache.block_size)
            self.judge.estimate_new_tokens(s)
            # what it would prefill on a machine free when it arrived: a prefix another request
            # computed while it waited (in the inbox during a step) is its own work done for it
            cached = self.cache.cached_before(s.request.prompt, s.keys, s.arrival_clock)
            s.alone_tokens = len(s.request.prompt) - min(cached, len(s.request.prompt) - 1)
            if (self._running or self._waiting) and self._refused(s, beside, waited_s=0.0):
                continue
            self._waiting.append(s)

    def _refused(self, s: SequenceState, beside: tuple[int, float | None], waited_s: float) -> bool:
        """Refuse ``s`` (503 ``server_overloaded``) if the judge finds it would be late."""
        refusal = self.judge.refusal(s, self.judge.queue_delay_s(s, self._running, self._waiting, beside), waited_s)
        if refusal is None:
            return False
        self.stats.overload_refusals += 1
        log.warning("request %s refused: %s; %d running, %d waiting", s.sink.request_id, refusal,
                    len(self._running), len(self._waiting))
        s.sink.fail(str(refusal))
        return True

    def _shed_late(self, now_ns: int) -> None:
        """Judge again, each step, the requests none of whose prompt has been computed yet
        (queued, or admitted and waiting for prefill): shorter prompts that arrive later go
        first, so a wait that looked short on arrival can grow past the bound. Those that
        would now be late are refused, still before any of their prefill, so that the
        admitted ones keep their first token in time. Time spent waiting for a shared
        prefix another request computes is the request's own prefill, not a wait for others."""
        untouched = [s for s in self._running if not s.prefill_started and s.prompt_left > 0]
        if not self.judge.active or not (self._waiting or untouched):
            return
        beside = self._load(now_ns, with_prefills=False)
        kept = []
        for s in self._waiting:
            self.judge.estimate_new_tokens(s)  # a running prefill may have begun computing its prefix since
            if not self._refused(s, beside, waited_s=(now_ns - s.arrival_ns) / 1e9):
                kept.append(s)
        self._waiting = kept
        for s in untouched:
            if self._refused(s, beside, waited_s=(now_ns - s.arrival_ns) / 1e9):
                self._running.remove(s)
                s.sampler.close()
                self.cache.release(s.seq)

    def _admit(self) -> None:
        if not self._waiting:
            return
        still_waiting = []
        load, wait = self._load(time.time_ns())
        for i, s in enumerate(self._waiting):
            if len(self._running) >= self.max_running or not self.planner.admits_stream(load, wait):
                still_waiting.extend(self._waiting[i:])
                break
            if self.cache.awaits_running_prefill(s.request.prompt):
                still_waiting.append(s)  # its prefix is being computed right now
                continue
            admission = self.cache.admit(s.request.prompt)
            s.seq, s.n_past = admission.seq, admission.reused_tokens
            s.prefilled, s.reused_blocks = admission.reused_tokens, admission.reused_blocks
            reserve = self.reply_reserve_tokens
            needed = s.cells_ahead(reserve) + sum(r.cells_ahead(reserve) for r in self._running)
            if not self.cache.make_room(needed):
                self.cache.release(s.seq)  # not enough KV now; try again when some finish
                s.seq, s.n_past, s.prefilled, s.reused_blocks = -1, 0, 0, 0
                still_waiting.extend(self._waiting[i:])
                break
            s.sampler = TokenSampler(
                s.request.sampling, self.runner.n_vocab, s.request.end_id, s.request.max_new_tokens, s.guide
            )
            s.first_scheduled_ns = time.time_ns()
            self._running.append(s)
            load += 1
            log.debug(
                "request %s admitted on seq %d: %d prompt tokens, %d reused",
                s.sink.request_id, s.seq, len(s.request.prompt), s.n_past,
            )
        self._waiting = still_waiting

    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check < self.cancel_check_period_s:
            return
        self._last_cancel_check = now
        for s in [s for s in self._waiting if s.sink.is_cancelled()]:
            self._waiting.remove(s)
            self.stats.cancellations += 1
            s.sink.close_cancelled()
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
            self._send(s, final=True)

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

    def _send(self, s: SequenceState, final: bool) -> None:
        request = s.request
        tokens = s.generated[s.sent :] if request.streaming else s.generated
        if not request.streaming and not request.exclude_input_in_output:
            tokens = list(request.prompt) + tokens
        log_probs = None
        if request.return_log_probs:
            log_probs = s.log_probs[s.sent :] if request.streaming else s.log_probs
        s.sent = len(s.generated)
        s.sent_chars = s.chars
        s.last_send_ns = time.time_ns()
        total = len(request.prompt) + len(s.generated)
        self._deliver(s, StepOutput(tokens=tokens, log_probs=log_probs, final=final, sequence_length=total,
                                    num_input_tokens=len(request.prompt), perf=self._perf(s, total)))

    def _report_prefill(self, s: SequenceState) -> None:
        """Prefill progress (electron extension ``return_prefill_progress``): after each chunk
        of a prompt that is not complete yet, a response without tokens whose
        ``sequence_length`` is the prompt tokens whose KV exists (reused + computed) and whose
        perf metrics hold the reused blocks: what a request cancelled before its first token
        had done (a client cancelling its stream gets no final response to read it from)."""
        self._deliver(s, StepOutput(tokens=[], log_probs=[] if s.request.return_log_probs else None, final=False,
                                    sequence_length=s.prefilled, num_input_tokens=len(s.request.prompt),
                                    perf=self._perf(s, s.prefilled)))

    def _perf(self, s: SequenceState, total: int) -> PerfMetrics:
        """``total``: the sequence's tokens so far."""
        blocks = math.ceil(total / self.cache.block_size)
        return PerfMetrics(reused_blocks=s.reused_blocks, new_blocks=blocks - s.reused_blocks, total_blocks=blocks,
                           arrival_ns=s.arrival_ns, first_scheduled_ns=s.first_scheduled_ns,
                           first_token_ns=s.first_token_ns, last_token_ns=s.last_token_ns)

    def _deliver(self, s: SequenceState, output: StepOutput) -> None:
        try:
            s.sink.send(output)
        except Exception as exc:  # noqa: BLE001 - the client went away between two checks
            log.info("request %s: response not delivered (%s)", s.sink.request_id, exc)

    def _refresh_gauges(self) -> None:
        """Update the gauges in ``stats`` (the engine thread only: they read its state).
        Other threads read ``stats`` as it is; no call in here may block."""
        st = self.stats
        st.running = len(self._running)
        st.waiting = len(self._waiting) + len(self._arrived) + len(self._inbox)
        st.kv_cells_used = self.cache.ledger.used_cells()
        st.cached_blocks = self.cache.cached_blocks
        st.threads = self.thread_budget.threads if self.thread_budget is not None else self.runner.threads
        st.prefix_hits, st.prefix_misses = self.cache.hits, self.cache.misses
