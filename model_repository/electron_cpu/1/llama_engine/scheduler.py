"""Step planning for voice: who gets the next ``llama_decode`` call, and how much.

Policy (docs/engine.md, "Scheduling for voice"):

1. A caller hears a reply at speech pace, so a *paced* stream (one whose text is
   played to a caller at ``chars_per_s``) only has to stay ahead of its
   playhead: the playhead starts at the stream's first token and advances at
   the speech pace; the stream's *lead* is the speech it has generated beyond
   the playhead, in seconds. While prompts wait to be prefilled, a paced stream
   with more than ``playback_buffer_s`` of lead skips the step, so the step's
   time goes to callers waiting for a first token; streams whose lead runs low,
   and unpaced streams (non-streaming, tools, JSON, or opted out), decode in
   every step. With no prompt waiting, every stream decodes (nothing to gain
   by waiting, and a finished stream frees its KV cells), in steps no longer
   than policy 9 allows.
2. Time to first token comes first: while any prompt is waiting to be prefilled,
   every step also carries a prefill chunk; there are no decode-only steps.
3. The chunk is as large as the most urgent stream allows: a step may take
   ``safety`` times the time that stream can wait for its next token - a paced
   stream until its lead falls to the playback buffer, an unpaced one until it
   falls below the floor of ``min_stream_rate`` tokens per second since its
   first token (capped at ``1 / min_stream_rate + max_slack_s``). A paced
   stream below its buffer can wait no time: steps then keep to the busy floor
   (policy 4), and each gives it a token (~0.27 s of speech) in ~0.13 s, so its
   lead climbs back to the buffer - the buffer, not zero, is where paced
   streams settle, and it absorbs steps that run over their prediction. With
   no stream decoding, the chunk is what fits a short step (policy 8).
4. Callers waiting for a first token come before stream speed above a lower
   *busy* floor (``busy_stream_rate``, 6 tokens/s: still above the pace of
   speech, ~4 tokens/s): a step may always take ``safety / busy_stream_rate``
   seconds, so a later turn's few dozen new tokens are prefilled in one or two
   steps even when every stream is urgent, and a new request is admitted while
   one more stream (plus a minimal prefill chunk) fits that step beside the
   streams that decode while prompts wait. With nothing running, a request is
   always admitted.
5. Prompts are prefilled shortest-remaining first (a later turn whose history is
   cached needs a few dozen tokens and gets its first token almost at once),
   except that a prompt waiting longer than ``starvation_s`` goes first.
6. The step cost - the whole engine step, not only ``llama_decode`` - is
   learned online (``StepCostModel``). When the decoding streams alone
   already fill the deadline, the chunk shrinks to ``min_prefill_chunk``
   tokens: prompts still progress, streams slow down a little.
7. Overload: a new request that would wait longer than ``overload_ttft_s``
   for the work ahead of it (other prompts to prefill first, by the same cost
   line, and a running slot when all are taken) is refused at once, before any
   prefill, instead of waiting in silence: the voice platform can fail over.
   Its own prefill does not count: a long prompt on a free machine is not an
   overload. Requests none of whose prompt has been computed yet are judged
   again every step, with the time they have already waited: a shorter prompt
   arriving later goes first and can push a request past the bound after its
   arrival; it is refused then, still before any of its prefill. A prefix
   another request computes for it (a shared system prompt), also while it
   waited, is its own work done for it: the wait is measured against the
   prefill it would need alone on the machine as it was when it arrived; and
   the blocks it shares with requests queued ahead of it count once, as its
   own prefill (whichever goes first computes them for both).
8. Short steps: a cancel, a new arrival and every waiting prompt wait for the
   step under way, so no step carrying prefill is planned longer than
   ``max_step_s`` (0.25 s; never below the busy floor of policy 4), and a
   prefill with no stream decoding beside it - where a step's only fixed cost is
   reading the weights once - in steps of ``lone_step_s`` (0.1 s): a long prompt
   is cut into chunks the cost model predicts to fit, so a cancel takes effect
   and a newcomer is admitted within about that. (Measured on a 2-core Xeon, an
   800-token prompt in chunks of 16 to 512 tokens cost the same per token
   within noise, 5.3-6.2 ms; llama.cpp's one 512-token step took 2.8 s.)
   A prompt whose whole rest fits in ``max_step_s`` is not cut, though: a later
   turn of a call (25-35 new tokens) cut into 0.1 s chunks took two or three
   steps, each paying the step's fixed cost again (one paced call of 8 turns on
   the 2-core Xeon, alternated fresh starts: later-turn TTFT p50 207 and 181 ms
   cut, 187 and 171 ms whole). A cancel then waits at most ``max_step_s`` for
   it, and what that step computes stays cached for the next request.
9. Short decode steps: with no prompt waiting, paced streams with more than the
   playback buffer of lead decode only as many at a time as fit in
   ``decode_step_s`` (most urgent first; streams at or below their buffer and
   unpaced streams always decode): the next caller's turn arrives while a step
   is under way and waits for it. (24 paced calls on a 2-core AMD EPYC with
   per-sequence streams: decode-only steps of 12-16 streams took 120-170 ms, each
   stream ~9.5 ms whatever the batch, and later turns that arrived during one
   waited for it before their prefill.) Splitting costs a step's small fixed part
   once more; the streams left out are seconds ahead of their callers.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepCostModel:
    """Step time as a plane in the batch's prompt and decode tokens,
    ``overhead + prompt_s * prompt_tokens + decode_s * decodes``, fitted online by
    exponentially weighted least squares over measured steps. The fixed part is reading
    the weights once per step. The two slopes differ: a prompt token shares its
    sequence's attention with the rest of its chunk, a decode token reads its sequence's
    whole history alone, and each one is sampled and sent. (On a 2-core AMD EPYC with
    per-sequence KV streams, histories of ~700 tokens, 24 paced calls: decode-only steps
    cost ~9.5 ms a stream at every batch size from 1 to 16, prompt-only steps ~2.5 ms a
    token; one line through both planned a 15-token chunk beside 2 decodes at 130 ms that
    took 76, and cut a later turn's 31 new tokens into two or three steps.)

    Until steps of different sizes were seen, the prior slopes are used: a slope follows
    the fit only once recent steps' counts of its kind spread by ``slope_min_var`` (a
    standard deviation of 10 prompt tokens) or ``decode_min_var`` (2 decoding streams), so
    steps of alike sizes move the overhead, not the slopes.

    Two kinds of step would teach it wrong: the first step after the engine slept
    (its threads wake, its caches are cold: on an AMD EPYC a 9-token step took 54 ms
    where the warm line said 24) is not learned from at all, and one step's excess
    moves the running ``bias`` by at most ``max_step_ratio`` - a single stall (a
    preempted core) must not make every prediction three times too dear for the
    next steps, which would refuse requests as overloaded and keep streams out."""

    max_step_ratio = 2.0  # one step's measured / predicted time counts at most this much
    slope_min_var = 100.0  # tokens^2: how widely recent steps' prompt tokens must spread to move their slope
    decode_min_var = 4.0  # streams^2: the same for decodes (a step holds a few dozen streams at most)

    def __init__(self, overhead_s: float = 0.006, per_token_s: float = 0.0045, memory: float = 0.95,
                 decode_s: float | None = None):
        self.overhead_s = overhead_s
        self.per_token_s = per_token_s  # a prompt token
        self.decode_s = per_token_s if decode_s is None else decode_s  # a decoding stream's token
        self._memory = memory
        # weighted sums of 1, p, d, t, pp, dd, pd, pt, dt (p prompt tokens, d decodes, t seconds)
        self._sums = [0.0] * 9
        # recent steps' measured / predicted time: the line lags when steps get dearer
        # quickly (a long prompt's chunks attend over more and more positions)
        self.bias = 1.0

    def observe(self, tokens: int, seconds: float, after_idle: bool = False, decodes: int = 0) -> None:
        """Learn from a step of ``tokens`` prompt tokens beside ``decodes`` decoding streams
        that took ``seconds``; ``after_idle``: the engine slept before it (not learned from)."""
        if after_idle:
            return
        line = self._line(tokens, decodes)
        if line > 0:
            ratio = min(max(seconds / line, 1.0 / self.max_step_ratio), self.max_step_ratio)
            self.bias = min(max(0.7 * self.bias + 0.3 * ratio, 0.8), 3.0)
            seconds = ratio * line  # the line too learns at most that much from one step
        m, p, d, t = self._memory, tokens, decodes, seconds
        self._sums = [m * old + new for old, new in zip(self._sums, (1.0, p, d, t, p * p, d * d, p * d, p * t, d * t))]
        w, sp, sd, st, spp, sdd, spd, spt, sdt = self._sums
        mp, md, mt = sp / w, sd / w, st / w
        var_p, var_d, cov_pd = spp / w - mp * mp, sdd / w - md * md, spd / w - mp * md
        cov_pt, cov_dt = spt / w - mp * mt, sdt / w - md * mt
        lam_p, lam_d = self.slope_min_var, self.decode_min_var
        # each slope whose counts spread enough moves toward the least-squares one (ridge
        # toward its current value: by var / (var + min_var) of the way when alone); one whose
        # counts do not stays, and the other is fitted to what it leaves. Steps of alike
        # sizes (a lone prompt's 20-26-token chunks, whose times differ by noise and depth,
        # not size) leave the slopes alone: their raw fit once gave 1e-5 s a token, and a
        # 512-token step was planned at 73 ms; it took 1.4 s, and a cancel waited for it
        free_p, free_d = var_p > lam_p, var_d > lam_d
        if free_p and free_d:
            a11, a12, a22 = var_p + lam_p, cov_pd, var_d + lam_d
            b1, b2 = cov_pt + lam_p * self.per_token_s, cov_dt + lam_d * self.decode_s
            det = a11 * a22 - a12 * a12
            self.per_token_s, self.decode_s = (b1 * a22 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
        elif free_p:
            self.per_token_s = (cov_pt - self.decode_s * cov_pd + lam_p * self.per_token_s) / (var_p + lam_p)
        elif free_d:
            self.decode_s = (cov_dt - self.per_token_s * cov_pd + lam_d * self.decode_s) / (var_d + lam_d)
        self.per_token_s = min(max(self.per_token_s, 1e-5), 0.1)
        self.decode_s = min(max(self.decode_s, 1e-5), 0.1)
        self.overhead_s = max(mt - self.per_token_s * mp - self.decode_s * md, 0.0)

    def _line(self, tokens: int, decodes: int) -> float:
        return self.overhead_s + self.per_token_s * tokens + self.decode_s * decodes

    def predict(self, tokens: int, decodes: int = 0) -> float:
        """A step of ``tokens`` prompt tokens beside ``decodes`` decoding streams."""
        return self._line(tokens, decodes) * self.bias

    def decodes_within(self, seconds: float) -> int:
        """The most decoding streams a step without prompt tokens can carry and still be
        predicted to take at most ``seconds``."""
        spare = seconds - self.predict(0, 0)
        return int(spare / (self.decode_s * self.bias)) if spare > 0 else 0

    def tokens_within(self, seconds: float, decodes: int = 0) -> int:
        """The most prompt tokens a step beside ``decodes`` decoding streams can carry and
        still be predicted to take at most ``seconds`` (0 when those alone take longer)."""
        spare = seconds - self.predict(0, decodes)
        return int(spare / (self.per_token_s * self.bias)) if spare > 0 else 0


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 512
    min_stream_rate: float = 12.0  # tokens/s every running stream keeps while prompts are prefilled
    busy_stream_rate: float = 6.0  # tokens/s every stream keeps while callers wait for a first token
    safety: float = 0.8  # fraction of the step deadline the plan may use
    min_prefill_chunk: int = 4  # a waiting prompt always progresses
    starvation_s: float = 2.0
    max_slack_s: float = 0.5  # most a step may borrow from streams ahead of pace
    playback_buffer_s: float = 1.0  # paced streams with more speech ahead than this skip steps while prompts wait
    overload_ttft_s: float = 1.5  # a new request whose first token would come later is refused; 0: never
    max_step_s: float = 0.25  # longest step carrying prefill (policy 8; the busy floor wins if larger)
    lone_step_s: float = 0.1  # longest prefill step with no stream decoding beside it (policy 8)
    decode_step_s: float = 0.06  # longest decode-only step of paced streams ahead of their playhead (policy 9)

    @property
    def max_wait_s(self) -> float:
        return 1.0 / self.min_stream_rate + self.max_slack_s


@dataclass
class PrefillCandidate:
    key: object  # the engine's sequence object
    remaining: int  # prompt tokens still to prefill
    waited_s: float


@dataclass
class DecodeCandidate:
    key: object  # the engine's sequence object
    wait_s: float  # how long it can wait for its next token (``paced_wait_s`` or ``floor_wait_s``)
    paced: bool


def playback_lead_s(chars: int, since_first_token_s: float, chars_per_s: float) -> float:
    """Seconds of speech a paced stream has generated beyond its playhead (negative:
    the caller's player is waiting for text)."""
    return chars / chars_per_s - since_first_token_s


def paced_wait_s(lead_s: float, buffer_s: float) -> float:
    """How long a paced stream can wait for its next token before its lead falls
    below the playback buffer (negative: it is below, and must catch up)."""
    return lead_s - buffer_s


def floor_wait_s(tokens: int, since_first_token_s: float, min_rate: float) -> float:
    """How long an unpaced stream can wait for its next token before it falls
    below ``min_rate`` tokens/s since its first token."""
    return (tokens + 1) / min_rate - since_first_token_s


class StepPlanner:
    def __init__(self, config: SchedulerConfig, cost: StepCostModel | None = None):
        self.config = config
        self.cost = cost or StepCostModel()

    def choose_decodes(self, streams: list[DecodeCandidate], prompts_waiting: bool) -> list[DecodeCandidate]:
        """The streams that decode in the next step (policies 1 and 9), most urgent first."""
        ordered = sorted(streams, key=lambda c: c.wait_s)
        must = [c for c in ordered if not c.paced or c.wait_s <= 0]
        if prompts_waiting:
            return must
        ahead = [c for c in ordered if c.paced and c.wait_s > 0]
        room = max(self.cost.decodes_within(self.config.decode_step_s) - len(must), 0 if must else 1)
        return sorted(must + ahead[:room], key=lambda c: c.wait_s)

    def prefill_budget(self, decodes: int, wait_s: float | None = None, prompt_tokens: int | None = None) -> int:
        """Prompt tokens the next step may carry beside ``decodes`` decode tokens;
        ``wait_s``: how long the most urgent running stream can wait (policy 3), None
        with no stream running: the prefill alone, in steps of ``lone_step_s``, or in one
        step when all ``prompt_tokens`` left fit in ``max_step_s`` (policy 8)."""
        c = self.config
        room = c.max_batch_tokens - decodes
        lone = decodes == 0 and wait_s is None
        if lone and prompt_tokens is not None and 0 < prompt_tokens <= room \
                and self.cost.predict(prompt_tokens) <= c.max_step_s:
            return prompt_tokens
        tokens = self.cost.tokens_within(c.lone_step_s if lone else self.step_deadline_s(wait_s), decodes)
        return max(min(tokens, room), min(c.min_prefill_chunk, room), 0)

    def step_deadline_s(self, wait_s: float | None = None) -> float:
        """How long a step carrying prefill may take: ``safety`` times what the most
        urgent stream can wait (capped; the floor pace when unknown), never less
        than the busy floor allows, never more than ``max_step_s`` (policy 8)."""
        c = self.config
        wait = 1.0 / c.min_stream_rate if wait_s is None else wait_s
        floor = c.safety / c.busy_stream_rate
        return min(max(c.safety * min(wait, c.max_wait_s), floor), max(c.max_step_s, floor))

    def admits_stream(self, decoding: int, wait_s: float | None = None) -> bool:
        """May a new stream join when ``decoding`` streams decode beside prompts
        (policy 4)? ``wait_s`` as in ``prefill_budget``."""
        if decoding == 0:
            return True
        return self.cost.predict(self.config.min_prefill_chunk, decoding + 1) <= self.step_deadline_s(wait_s)

    def prefill_time_s(self, decodes: int, wait_s: float | None, prompt_tokens: int) -> float:
        """How long ``prompt_tokens`` prompt tokens take to prefill in chunks of the
        budget, ``decodes`` streams decoding beside them (policy 7)."""
        if prompt_tokens <= 0:
            return 0.0
        budget = max(self.prefill_budget(decodes, wait_s, prompt_tokens), 1)
        full, rest = divmod(prompt_tokens, budget)
        return full * self.cost.predict(budget, decodes) + (self.cost.predict(rest, decodes) if rest else 0.0)

    def refuses(self, eta_s: float) -> bool:
        return 0 < self.config.overload_ttft_s < eta_s

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
