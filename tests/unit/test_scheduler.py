"""Step planning: the stream-rate floor, time to first token, fairness."""

from llama_engine.scheduler import PrefillCandidate, SchedulerConfig, StepCostModel, StepPlanner


def planner(**cost):
    return StepPlanner(SchedulerConfig(max_batch_tokens=512, min_stream_rate=12.0),
                       StepCostModel(overhead_s=0.002, per_decode_s=0.005, per_prefill_s=0.004, **cost))


def test_no_stream_decoding_prefills_a_whole_batch():
    assert planner().prefill_budget(decodes=0) == 512


def test_prefill_chunk_keeps_every_stream_above_the_rate_floor():
    p = planner()
    for decodes in (1, 4, 8):
        budget = p.prefill_budget(decodes)
        step = p.cost.predict(decodes, budget)
        assert step <= 0.8 / 12.0 + 1e-9 or budget == p.config.min_prefill_chunk
        assert budget >= p.config.min_prefill_chunk  # a waiting prompt always progresses


def test_saturated_decode_still_gets_minimum_prefill_chunk():
    assert planner().prefill_budget(decodes=30) == 16


def test_shortest_remaining_prompt_first():
    plan = planner().plan_prefill(
        [PrefillCandidate("long", 600, 0.1), PrefillCandidate("short", 20, 0.0), PrefillCandidate("mid", 100, 0.2)], 64
    )
    assert plan == [("short", 20), ("mid", 44)]


def test_a_starving_prompt_goes_first():
    plan = planner().plan_prefill([PrefillCandidate("old", 600, 3.0), PrefillCandidate("short", 20, 0.0)], 64)
    assert plan == [("old", 64)]


def test_cost_model_learns_from_observed_steps():
    cost = StepCostModel(overhead_s=0.0, per_decode_s=0.010, per_prefill_s=0.010, smoothing=0.5)
    for _ in range(20):
        cost.observe(decodes=8, prefills=0, seconds=8 * 0.004)
        cost.observe(decodes=8, prefills=100, seconds=8 * 0.004 + 100 * 0.002)
    assert abs(cost.per_decode_s - 0.004) < 1e-4
    assert abs(cost.per_prefill_s - 0.002) < 1e-4
