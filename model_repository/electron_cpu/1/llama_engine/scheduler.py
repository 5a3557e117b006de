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

from .step_cost import StepCostModel


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
