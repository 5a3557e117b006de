"""Step planning: the stream-rate floor, time to first token, fairness."""

from llama_engine.scheduler import PrefillCandidate, SchedulerConfig, StepCostModel, StepPlanner, pace_slack_s


def planner():
    return StepPlanner(SchedulerConfig(max_batch_tokens=512, min_stream_rate=12.0),
                       StepCostModel(overhead_s=0.006, per_token_s=0.004))


def test_no_stream_decoding_prefills_a_whole_batch():
    assert planner().prefill_budget(decodes=0) == 512


def test_prefill_chunk_keeps_every_stream_above_the_busy_floor_and_uses_the_room():
    p = planner()  # busy floor 6 tok/s: a step carrying prefill may take 0.8 / 6 = 133 ms
    for decodes in (1, 4, 8):
        budget = p.prefill_budget(decodes)
        step = p.cost.predict(decodes + budget)
        assert step <= 0.8 / 6.0 + 1e-9
        assert p.cost.predict(decodes + budget + 1) > 0.8 / 6.0 - 0.004  # and uses the room
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


def test_streams_ahead_of_pace_let_a_short_prompt_in_whole():
    p = planner()
    tight = p.prefill_budget(decodes=7, slack_s=0.0)
    # 7 streams that ran 20 tok/s for 1 s are 0.67 s ahead of a 12 tok/s pace
    slack = pace_slack_s(tokens=20, since_first_token_s=1.0, min_rate=12.0)
    assert abs(slack - (20 / 12 - 1)) < 1e-9
    loose = p.prefill_budget(decodes=7, slack_s=slack)
    assert tight < 30 <= loose
    assert p.cost.predict(7 + loose) <= 0.8 / 12 + p.config.max_slack_s + 1e-9  # slack is capped
    assert p.prefill_budget(decodes=7, slack_s=-0.3) == tight  # behind pace: no borrowing


def test_new_streams_wait_when_one_more_would_break_the_admission_floor():
    p = planner()  # 6 ms + 4 ms per token; admission deadline 0.8 / 6 = 133 ms
    assert p.admits_stream(0)
    assert p.admits_stream(12)  # 6 + 4 * (13 + 4) = 74 ms: slower than 12 tok/s, still admitted
    assert p.admits_stream(26)  # 6 + 4 * (27 + 4) = 130 ms
    assert not p.admits_stream(27)  # 6 + 4 * (28 + 4) = 134 ms
