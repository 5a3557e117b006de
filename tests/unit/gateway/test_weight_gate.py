"""The weight format quality gate and the choice among formats (gateway/server/weight_gate.py): pure.

The rule under test: a copy passes with the shipped vocabulary and no far divergence (each
prompt's first difference a near-tie under the shipped file's own logits), however many
prompts it leaves at a near-tie; it is chosen only if it is also faster."""

import math

import pytest

from gateway.server.weight_gate import (MAX_TIE_GAP, PREFIX_TOKENS, Continuation, GateResult, choose, divergence,
                                        judge, near_tie_tokens, voice_turn_ms)


def shipped(tokens, gaps=None):
    """A shipped continuation whose step i ranks tokens[i] first and 900 + i second, ``gaps[i]``
    logits behind (1.0 unless given); token 999 is far behind everywhere."""
    gaps = gaps or {}
    top_ids = [[t, 900 + i, 999] for i, t in enumerate(tokens)]
    top_logits = [[10.0, 10.0 - gaps.get(i, 1.0), 2.0] for i in range(len(tokens))]
    return Continuation(list(tokens), top_ids, top_logits)


def test_same_tokens_agree():
    assert divergence(0, shipped([1, 2, 3]), [1, 2, 3]) is None


def test_only_the_first_prefix_tokens_count():
    base = list(range(1, PREFIX_TOKENS + 5))
    assert divergence(0, shipped(base), base[:PREFIX_TOKENS] + [7, 7, 7, 7]) is None


def test_a_divergence_reads_the_shipped_models_gap_between_the_two_tokens():
    d = divergence(3, shipped([1, 2, 3, 4], gaps={2: 0.2}), [1, 2, 902, 5])
    assert (d.prompt, d.at, d.shipped_token, d.candidate_token) == (3, 2, 3, 902)
    assert d.exact and d.gap == pytest.approx(0.2) and d.near_tie


def test_a_run_stopped_at_its_first_divergence_is_judged_there():
    d = divergence(0, shipped([1, 2, 3, 4], gaps={1: 0.3}), [1, 901])
    assert (d.at, d.candidate_token, d.near_tie) == (1, 901, True) and d.gap == pytest.approx(0.3)


def test_a_wide_gap_is_not_a_near_tie():
    d = divergence(0, shipped([1, 2, 3]), [1, 901, 3])
    assert d.exact and d.gap == pytest.approx(1.0) and not d.near_tie
    assert not divergence(0, shipped([1, 2, 3], gaps={1: MAX_TIE_GAP}), [1, 901, 3]).near_tie


def test_a_token_outside_the_kept_candidates_is_judged_far_with_a_lower_bound():
    d = divergence(0, shipped([1, 2, 3], gaps={1: 0.1}), [1, 12345, 3])
    assert not d.exact and not d.near_tie and d.gap == pytest.approx(8.0)


def test_an_output_that_ends_early_diverges_where_it_ends():
    d = divergence(0, shipped([1, 2, 3]), [1, 2])
    assert d.at == 2 and d.candidate_token is None and not d.near_tie
    longer = divergence(0, shipped([1, 2]), [1, 2, 3])
    assert longer.at == 2 and longer.gap == math.inf and not longer.near_tie


def test_near_ties_pass_however_many_prompts_they_leave_different():
    ref = [shipped([1, 2, 3], gaps={1: 0.1}) for _ in range(10)]
    all_near = judge(ref, [[1, 901, 3]] * 10)  # no prompt identical: the old 90% quota failed this
    assert (all_near.agree, all_near.near_ties, all_near.far, all_near.passed) == (0, 10, 0, True)
    assert "0/10 same first 32 tokens, 10 near-ties, 0 far divergences" == all_near.summary()
    assert judge(ref, [[1, 2, 3]] * 10).passed


def test_one_far_divergence_fails_the_copy_whatever_the_rest_agrees():
    ref = [shipped([1, 2, 3], gaps={1: 0.1}) for _ in range(9)] + [shipped([1, 2, 3], gaps={1: 0.6})]
    gate = judge(ref, [[1, 2, 3]] * 9 + [[1, 901]])
    assert (gate.agree, gate.near_ties, gate.far, gate.passed) == (9, 0, 1, False)
    gap = judge([shipped([1, 2, 3], gaps={1: MAX_TIE_GAP - 1e-3})], [[1, 901]])
    assert gap.passed and not judge([shipped([1, 2, 3], gaps={1: MAX_TIE_GAP})], [[1, 901]]).passed
    unknown = judge([shipped([1, 2, 3], gaps={1: 0.1})], [[1, 4242]])  # not among the shipped model's candidates
    assert (unknown.far, unknown.passed) == (1, False)


def test_prompts_a_stopped_run_left_out_are_counted_and_never_pass():
    ref = [shipped([1, 2, 3]) for _ in range(4)]
    gate = judge(ref, [[1, 2, 3], [1, 901], None, None])
    assert (gate.agree, gate.far, gate.not_run, gate.passed) == (1, 1, 2, False)
    assert gate.summary().endswith("1 far divergences (stopped there, 2 prompts not run)")
    assert not judge(ref, [[1, 2, 3]] * 3 + [None]).passed  # not run is not judged good


def test_a_different_vocabulary_fails_whatever_the_tokens():
    gate = judge([shipped([1])], [[1]], vocabulary_same=False)
    assert gate.agree == 1 and gate.far == 0 and not gate.passed and "vocabulary" in gate.summary()
    assert not GateResult(0, 0, []).passed
    with pytest.raises(ValueError):
        judge([shipped([1])], [])


def test_the_near_tie_tokens_of_each_step_are_those_within_the_gap_of_the_shipped_one():
    ref = Continuation([5, 6], [[5, 7, 8], [6, 9, 10]], [[3.0, 2.6, 2.4], [1.0, 0.5, -4.0]])
    assert near_tie_tokens(ref) == [[5, 7], [6]]  # 0.4 behind is a tie, 0.6 and 0.5 are not
    for step, ties in enumerate(near_tie_tokens(ref)):
        for token in ties[1:]:
            assert divergence(0, ref, ref.tokens[:step] + [token]).near_tie


def test_a_voice_turn_is_its_prefill_plus_the_first_decode_steps():
    assert voice_turn_ms({"prefill_24_at_1k": [50.0, 40.0, 60.0], "decode_at_1k": [10.0, 12.0, 11.0]}) == 50 + 8 * 11


def test_the_fastest_passing_copy_wins_when_it_beats_the_shipped_file():
    ok = GateResult(50, 30, [])
    failed = judge([shipped([1, 2])], [[1, 901]])
    chosen, reason = choose(200.0, {"q8_0": (ok, 150.0), "q4_0": (failed, 100.0)})
    assert chosen == "q8_0" and "150 ms vs shipped 200 ms" in reason
    assert choose(200.0, {"q8_0": (ok, 150.0), "q4_0": (ok, 140.0)})[0] == "q4_0"


def test_a_passing_copy_that_is_not_faster_leaves_the_shipped_file():
    ok = GateResult(50, 30, [])
    chosen, reason = choose(200.0, {"q8_0": (ok, 195.0)})
    assert chosen == "shipped" and "5% faster: q8_0 195 ms vs shipped 200 ms" in reason
    assert choose(200.0, {"q8_0": (ok, 191.0)})[0] == "shipped"  # 4.5% is not enough
    assert choose(200.0, {"q8_0": (ok, 189.0)})[0] == "q8_0"
    assert choose(200.0, {"q8_0": (ok, 250.0)})[0] == "shipped"
    assert choose(200.0, {"q8_0": (judge([shipped([1, 2])], [[1, 901]]), 100.0)})[0] == "shipped"
    assert choose(200.0, {"q8_0": (None, None), "q4_0": (ok, None)})[0] == "shipped"  # crashed / not timed
