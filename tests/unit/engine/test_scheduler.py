"""Step planning: playback pacing, the stream-rate floor, time to first token, fairness, overload."""

import math
import random
from dataclasses import dataclass, field

import pytest

from llama_engine.scheduler import (DecodeCandidate, PrefillCandidate, SchedulerConfig, StepPlanner, floor_wait_s,
                                    paced_wait_s, playback_lead_s)
from llama_engine.step_cost import StepCostModel


def planner():
    return StepPlanner(SchedulerConfig(max_batch_tokens=512, min_stream_rate=12.0),
                       StepCostModel(overhead_s=0.006, per_token_s=0.004))


def test_a_prefill_alone_goes_in_chunks_of_a_short_step():
    p = planner()  # 6 ms + 4 ms per token: a 0.1 s step holds 23 prompt tokens
    budget = p.prefill_budget(decodes=0)
    assert budget == 23 and p.cost.predict(budget) <= p.config.lone_step_s < p.cost.predict(budget + 1)
    big = StepPlanner(SchedulerConfig(lone_step_s=10.0), p.cost)
    assert big.prefill_budget(decodes=0) == 512  # never more than the batch holds


def test_a_short_prompt_alone_goes_in_one_step_a_long_one_in_short_steps():
    p = planner()  # 6 ms + 4 ms per token: 0.25 s (max_step_s) holds 61 prompt tokens, 0.1 s 23
    assert p.prefill_budget(0, prompt_tokens=30) == 30  # a later turn: one step, not 23 + 7
    assert p.prefill_budget(0, prompt_tokens=60) == 60
    assert p.prefill_budget(0, prompt_tokens=63) == 23  # longer: chunks a cancel need not wait for
    assert p.prefill_budget(0, prompt_tokens=800) == 23
    assert p.prefill_budget(1, 0.5, prompt_tokens=30) == p.prefill_budget(1, 0.5)  # beside streams: unchanged
    # the overload judge's estimate follows: a short prompt is one step, a long one its chunks
    assert p.prefill_time_s(0, None, 30) == pytest.approx(p.cost.predict(30))
    assert p.prefill_time_s(0, None, 92) == pytest.approx(4 * p.cost.predict(23))


def test_prefill_chunk_keeps_every_stream_above_the_busy_floor_and_uses_the_room():
    p = planner()  # busy floor 6 tok/s: a step carrying prefill may take 0.8 / 6 = 133 ms
    for decodes in (1, 4, 8):
        budget = p.prefill_budget(decodes)
        step = p.cost.predict(budget, decodes)
        assert step <= 0.8 / 6.0 + 1e-9
        assert p.cost.predict(budget + 1, decodes) > 0.8 / 6.0 - 0.004  # and uses the room
        assert budget >= p.config.min_prefill_chunk  # a waiting prompt always progresses
    assert p.prefill_budget(8) >= 20  # a later turn's new tokens fit in one or two steps


def test_saturated_decode_still_gets_minimum_prefill_chunk():
    assert planner().prefill_budget(decodes=30) == 4


def test_shortest_remaining_prompt_first():
    plan = planner().plan_prefill(
        [PrefillCandidate("long", 600, 0.1), PrefillCandidate("short", 20, 0.0), PrefillCandidate("mid", 100, 0.2)], 64
    )
    assert plan == [("short", 20), ("mid", 44)]


def test_a_starving_prompt_goes_first():
    plan = planner().plan_prefill([PrefillCandidate("old", 600, 3.0), PrefillCandidate("short", 20, 0.0)], 64)
    assert plan == [("old", 64)]


def test_cost_model_learns_the_step_line_from_observed_steps():
    cost = StepCostModel(overhead_s=0.0, per_token_s=0.010)
    for i in range(60):
        tokens = 1 + (i * 37) % 200
        cost.observe(tokens, 0.007 + 0.0045 * tokens)
    assert abs(cost.per_token_s - 0.0045) < 1e-4
    assert abs(cost.overhead_s - 0.007) < 1e-3


def test_cost_model_with_one_step_size_only_moves_the_overhead():
    cost = StepCostModel(overhead_s=0.0, per_token_s=0.005)
    for _ in range(30):
        cost.observe(8, 0.050)
    assert cost.per_token_s == 0.005 and abs(cost.predict(8) - 0.050) < 1e-3


def test_cost_model_learns_a_slope_for_prompt_tokens_and_one_for_decoding_streams():
    """What a 2-core AMD EPYC did with per-sequence streams at ~700-token histories: a
    decoding stream costs ~9.5 ms, a prompt token ~2.5; decode-only, prompt-only and
    mixed steps of many sizes."""
    cost = StepCostModel(overhead_s=0.006, per_token_s=0.0045)
    rng = random.Random(7)
    for _ in range(200):
        prompt, decodes = rng.choice([(rng.randint(1, 60), 0), (0, rng.randint(1, 16)),
                                      (rng.randint(4, 40), rng.randint(1, 6))])
        cost.observe(prompt, 0.004 + 0.0025 * prompt + 0.0095 * decodes, decodes=decodes)
    assert cost.per_token_s == pytest.approx(0.0025, rel=0.05)
    assert cost.decode_s == pytest.approx(0.0095, rel=0.05)
    assert cost.predict(31, 2) == pytest.approx(0.004 + 0.0025 * 31 + 0.019, rel=0.05)
    # so a later turn's 31 new tokens go in one step beside two urgent streams (the busy
    # floor's 133 ms); one line through the same steps had cut them into two or three
    p = StepPlanner(SchedulerConfig(), cost)
    assert p.prefill_budget(2, wait_s=-0.1) >= 31


def test_steps_without_decodes_leave_the_decode_slope_at_its_prior():
    cost = StepCostModel(overhead_s=0.006, per_token_s=0.0045, decode_s=0.008)
    for i in range(60):
        tokens = 1 + (i * 37) % 200
        cost.observe(tokens, 0.007 + 0.003 * tokens)
    assert cost.decode_s == 0.008 and cost.per_token_s == pytest.approx(0.003, rel=0.02)
    assert cost.tokens_within(0.1, decodes=5) == int((0.1 - cost.predict(0, 5)) / cost.per_token_s)


def test_streams_ahead_of_pace_let_a_short_prompt_in_whole():
    p = planner()
    tight = p.prefill_budget(decodes=7, wait_s=floor_wait_s(tokens=12, since_first_token_s=1.0, min_rate=12.0))
    # 7 streams that ran 20 tok/s for 1 s can wait 0.75 s before they fall below 12 tok/s
    wait = floor_wait_s(tokens=20, since_first_token_s=1.0, min_rate=12.0)
    assert abs(wait - (21 / 12 - 1)) < 1e-9
    loose = p.prefill_budget(decodes=7, wait_s=wait)
    assert tight < 30 <= loose
    assert p.cost.predict(loose, 7) <= 0.8 * (1 / 12 + p.config.max_slack_s) + 1e-9  # the wait is capped
    assert p.prefill_budget(decodes=7, wait_s=-0.3) == tight  # behind pace: the busy floor still holds


def test_new_streams_wait_when_one_more_would_break_the_admission_floor():
    p = planner()  # 6 ms + 4 ms per token; admission deadline 0.8 / 6 = 133 ms
    assert p.admits_stream(0)
    assert p.admits_stream(12)  # 6 + 4 * (13 + 4) = 74 ms: slower than 12 tok/s, still admitted
    assert p.admits_stream(26)  # 6 + 4 * (27 + 4) = 130 ms
    assert not p.admits_stream(27)  # 6 + 4 * (28 + 4) = 134 ms
    assert p.admits_stream(27, wait_s=0.5)  # the most urgent stream can wait 0.5 s: 0.4 s steps


def test_paced_streams_ahead_of_their_playhead_rest_while_prompts_wait():
    p = planner()  # buffer 1 s
    ahead = DecodeCandidate("ahead", wait_s=paced_wait_s(2.5, 1.0), paced=True)
    low = DecodeCandidate("low", wait_s=paced_wait_s(0.4, 1.0), paced=True)
    unpaced = DecodeCandidate("json", wait_s=3.0, paced=False)
    assert [c.key for c in p.choose_decodes([ahead, low, unpaced], prompts_waiting=True)] == ["low", "json"]
    # nothing waits: everyone decodes, most urgent first
    assert [c.key for c in p.choose_decodes([ahead, low, unpaced], prompts_waiting=False)] == ["low", "ahead", "json"]
    assert playback_lead_s(chars=45, since_first_token_s=2.0, chars_per_s=15.0) == 1.0
    # below its buffer a paced stream cannot wait: steps keep to the busy floor
    assert p.step_deadline_s(low.wait_s) == 0.8 / 6


def test_with_no_prompt_waiting_streams_ahead_of_their_playhead_take_turns_in_short_steps():
    p = StepPlanner(SchedulerConfig(decode_step_s=0.06), StepCostModel(overhead_s=0.006, decode_s=0.0095))
    ahead = [DecodeCandidate(f"ahead{i}", wait_s=paced_wait_s(2.0 + i / 10, 1.0), paced=True) for i in range(16)]
    low = DecodeCandidate("low", wait_s=paced_wait_s(0.4, 1.0), paced=True)
    unpaced = DecodeCandidate("json", wait_s=3.0, paced=False)
    chosen = [c.key for c in p.choose_decodes([*ahead, low, unpaced], prompts_waiting=False)]
    # 6 ms + 9.5 ms a stream: 5 fit in 60 ms; the one below its buffer and the unpaced one always decode
    assert chosen == ["low", "ahead0", "ahead1", "ahead2", "json"]
    assert p.cost.predict(0, len(chosen)) <= 0.06
    assert [c.key for c in p.choose_decodes(ahead, prompts_waiting=False)] == [f"ahead{i}" for i in range(5)]
    slow = StepPlanner(SchedulerConfig(decode_step_s=0.001), p.cost)
    assert [c.key for c in slow.choose_decodes(ahead, prompts_waiting=False)] == ["ahead0"]  # always one
    many_urgent = [DecodeCandidate(f"u{i}", wait_s=-0.1, paced=True) for i in range(12)]
    assert len(p.choose_decodes(many_urgent + ahead, prompts_waiting=False)) == 12  # urgent ones are not capped


def test_the_step_may_take_what_the_most_urgent_stream_can_wait():
    p = planner()
    assert p.step_deadline_s(0.2) == pytest.approx(0.8 * 0.2)
    assert p.step_deadline_s(0.01) == 0.8 / 6  # never below the busy floor
    assert p.step_deadline_s(0.4) == p.step_deadline_s(5.0) == 0.25  # never above max_step_s (policy 8)
    assert p.prefill_budget(decodes=3, wait_s=0.4) > p.prefill_budget(decodes=3, wait_s=0.1)


def test_overload_estimate_grows_with_the_queue_and_refuses_past_the_bound():
    p = planner()  # bound 1.5 s
    assert p.prefill_time_s(decodes=0, wait_s=None, prompt_tokens=20) == p.cost.predict(20)  # one step, its size
    short = p.prefill_time_s(decodes=4, wait_s=None, prompt_tokens=20)
    assert short < 0.3 and not p.refuses(short)
    long = p.prefill_time_s(decodes=20, wait_s=None, prompt_tokens=600)
    assert long > 1.5 and p.refuses(long)
    budget = p.prefill_budget(20)  # whole chunks, then the rest
    assert long == pytest.approx(600 // budget * p.cost.predict(budget, 20) + p.cost.predict(600 % budget, 20))
    off = StepPlanner(SchedulerConfig(overload_ttft_s=0.0), p.cost)
    assert not off.refuses(long)


# ---- a simulation of calls on synthetic step costs ----------------------------------

@dataclass(eq=False)
class _Stream:
    prompt_left: int
    arrived: float
    pace: float  # characters/s; 0: unpaced
    chars_per_token: float = 4.0
    first_token: float | None = None
    tokens: int = 0
    min_lead: float = math.inf
    max_tokens: int = 24


@dataclass
class _Sim:
    planner: StepPlanner
    now: float = 0.0
    streams: list = field(default_factory=list)
    done: list = field(default_factory=list)
    ttfts: list = field(default_factory=list)

    def step(self) -> None:
        c = self.planner.config
        prefilling = [s for s in self.streams if s.prompt_left > 0]
        candidates = []
        for s in self.streams:
            if s.first_token is None:
                continue
            since = self.now - s.first_token
            if s.pace:
                lead = playback_lead_s(s.tokens * s.chars_per_token, since, s.pace)
                candidates.append(DecodeCandidate(s, paced_wait_s(lead, c.playback_buffer_s), True))
            else:
                candidates.append(DecodeCandidate(s, floor_wait_s(s.tokens, since, c.min_stream_rate), False))
        chosen = [d.key for d in self.planner.choose_decodes(candidates, bool(prefilling))]
        wait = min((d.wait_s for d in candidates), default=None)
        budget = self.planner.prefill_budget(len(chosen), wait) if prefilling else 0
        plan = self.planner.plan_prefill(
            [PrefillCandidate(s, s.prompt_left, self.now - s.arrived) for s in prefilling], budget)
        self.now += self.planner.cost.predict(sum(t for _, t in plan), len(chosen))
        for d in candidates:  # the lead each stream had when this step ended
            s = d.key
            s.min_lead = min(s.min_lead, playback_lead_s(s.tokens * s.chars_per_token, self.now - s.first_token, s.pace)
                             if s.pace else math.inf)
        for s in chosen:
            s.tokens += 1
            if s.tokens >= s.max_tokens:
                self.streams.remove(s)
                self.done.append(s)
        for s, take in plan:
            s.prompt_left -= take
            if s.prompt_left == 0:
                s.first_token, s.tokens = self.now, 1
                self.ttfts.append((s.arrived, self.now - s.arrived))

    def run(self, arrivals: list[tuple[float, int]], pace: float, until: float) -> None:
        pending = sorted(arrivals)
        while self.now < until:
            while pending and pending[0][0] <= self.now:
                at, tokens = pending.pop(0)
                self.streams.append(_Stream(tokens, at, pace))
            if not any(s.prompt_left > 0 or s.first_token is not None for s in self.streams):
                self.now = pending[0][0] if pending else until
                continue
            self.step()


def _calls(n: int) -> list[tuple[float, int]]:
    """``n`` calls starting 0.1 s apart, then a new turn every 0.3 s (40 new prompt tokens each)."""
    return [(0.1 * i, 20) for i in range(n)] + [(0.1 * n + 0.3 * i, 40) for i in range(30)]


def test_pacing_gives_first_tokens_sooner_and_no_stream_falls_behind_its_playhead():
    cost = dict(overhead_s=0.008, per_token_s=0.003)
    paced = _Sim(StepPlanner(SchedulerConfig(), StepCostModel(**cost)))
    paced.run(_calls(24), pace=15.0, until=30.0)
    unpaced = _Sim(StepPlanner(SchedulerConfig(), StepCostModel(**cost)))
    unpaced.run(_calls(24), pace=0.0, until=30.0)
    assert len(paced.ttfts) == len(unpaced.ttfts) == 54
    p95 = lambda sim: sorted(t for at, t in sim.ttfts if at >= 2.4)[28]  # noqa: E731  # of the 30 later turns
    assert p95(paced) < 0.6 * p95(unpaced), (p95(paced), p95(unpaced))
    # every paced stream kept text ahead of its player (its first token starts the playhead)
    started = [s for s in paced.streams + paced.done if s.first_token is not None]
    assert len(paced.done) > 24 and min(s.min_lead for s in started) >= 0.0


def test_cost_model_catches_up_within_a_few_steps_when_steps_get_dearer():
    cost = StepCostModel(overhead_s=0.006, per_token_s=0.004)
    for _ in range(50):
        cost.observe(64, 0.006 + 0.004 * 64)  # the line is right
    assert cost.predict(64) == pytest.approx(0.262, rel=0.01)
    for _ in range(6):  # a long prompt's chunks now cost 1.6x (attention over more positions)
        cost.observe(64, 1.6 * 0.262)
    assert cost.predict(64) > 1.45 * 0.262


# ---- policy 8: no long step, so that a cancel or a newcomer never waits long --------------


def _true_step_s(tokens: int, depth: int) -> float:
    """A 2-core CPU's step: ~6 ms a prompt token, dearer with depth (attention)."""
    return 0.008 + tokens * (0.0055 + 1.5e-6 * depth)


def _prefill_alone(planner: StepPlanner, prompt: int) -> list[float]:
    """Step times of one prompt prefilled with nothing else running, the cost model
    learning from each step as the engine's does."""
    steps, done = [], 0
    while done < prompt:
        take = planner.plan_prefill([PrefillCandidate("p", prompt - done, 0.0)], planner.prefill_budget(0))[0][1]
        took = _true_step_s(take, done)
        planner.cost.observe(take, took)
        steps.append(took)
        done += take
    return steps


def test_a_long_prompt_alone_runs_in_steps_a_cancel_need_not_wait_for():
    p = StepPlanner(SchedulerConfig())  # the engine's defaults and the prior cost line
    for prompt in (809, 2000):
        steps = _prefill_alone(p, prompt)
        # a cancel (checked before every step) waits at most for the step under way
        assert max(steps) <= 0.15, (prompt, max(steps))
        assert max(steps[3:]) <= 0.11  # once the cost line has been learned: lone_step_s
    big = StepPlanner(SchedulerConfig(lone_step_s=60.0))  # the old policy: the whole batch
    assert max(_prefill_alone(big, 809)) > 2.5  # what the engine did before: one 512-token step took ~3 s


def test_no_step_beside_streams_is_planned_longer_than_max_step():
    p = planner()
    for decodes in (0, 1, 8, 20):
        for wait in (None, -1.0, 0.1, 0.4, 2.0, 30.0):
            if decodes == 0 and wait is None:
                continue  # alone: lone_step_s, above
            budget = p.prefill_budget(decodes, wait)
            step = p.cost.predict(budget, decodes)
            # within max_step_s, unless the decoders alone already take longer (a minimal chunk then)
            assert step <= max(p.config.max_step_s, p.cost.predict(p.config.min_prefill_chunk, decodes)) + 1e-9
    # the bound never undercuts the busy floor (policy 4): a later turn still goes in one or two steps
    tight = StepPlanner(SchedulerConfig(max_step_s=0.01), p.cost)
    assert tight.step_deadline_s(5.0) == pytest.approx(0.8 / 6) and tight.prefill_budget(8) >= 20


def test_the_step_bound_follows_a_cost_model_that_runs_over():
    p = planner()
    p.cost.bias = 1.6  # recent steps took 1.6x the line (a long prompt's chunks at depth)
    budget = p.prefill_budget(0)
    assert p.cost.predict(budget) <= p.config.lone_step_s < p.cost.predict(budget + 1) and budget == 14
    assert p.cost.predict(p.prefill_budget(3, 5.0), 3) <= p.config.max_step_s


def test_one_stalled_step_or_the_first_after_idle_does_not_make_every_prediction_dear():
    """A single step that ran 5x over its line (a preempted core) moves the bias by at most
    ``max_step_ratio``'s share; the first step after the engine slept is not learned from."""
    cost = StepCostModel(overhead_s=0.006, per_token_s=0.004)
    for _ in range(50):
        cost.observe(20, 0.006 + 0.004 * 20)
    warm = cost.predict(20)
    cost.observe(20, 5 * warm)
    assert cost.predict(20) < 1.45 * warm  # unclipped: bias 0.7 + 0.3 * 5 = 2.2 on a line 20% up, 2.6x
    for _ in range(10):
        cost.observe(20, warm)
    settled = cost.predict(20), cost.predict(9)
    cost.observe(9, 3 * settled[1], after_idle=True)  # threads woke from sleep: 3x the warm line
    assert (cost.predict(20), cost.predict(9)) == settled


def test_steps_of_alike_sizes_do_not_tilt_the_line():
    """A lone prompt's chunks are all ~20-26 tokens and their times vary with depth and
    noise, not size: a raw fit of those once gave a slope of 1e-5 s a token, and a 512-token
    step was then planned at 73 ms (it took 1.4 s). The slope must stay near the truth."""
    rng = random.Random(3)
    cost = StepCostModel(overhead_s=0.006, per_token_s=0.0045)
    for _ in range(40):
        tokens = rng.choice([20, 22, 23, 25, 26])
        cost.observe(tokens, 0.006 + 0.0042 * 23 + rng.uniform(-0.02, 0.02))  # size-blind noise
    assert cost.per_token_s > 0.003
    assert cost.predict(512) > 1.5  # truth ~2.2 s
