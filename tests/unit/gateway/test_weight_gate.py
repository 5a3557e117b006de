"""The weight format quality gate and the choice among formats (gateway/server/weight_gate.py): pure."""

import math

import pytest

from gateway.server.weight_gate import (MAX_TIE_GAP, PREFIX_TOKENS, Continuation, GateResult, choose, divergence,
                                        judge, stable_prompts, voice_turn_ms)


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


def test_the_gate_counts_agreement_and_judges_each_divergence():
    ref = [shipped([1, 2, 3], gaps={1: 0.1}) for _ in range(10)]
    same = [[1, 2, 3]] * 10
    near = judge(ref, same[:9] + [[1, 901, 3]])
    assert (near.agree, near.near_ties, near.far, near.passed) == (9, 1, 0, True)
    two_near = judge(ref, same[:8] + [[1, 901, 3]] * 2)
    assert (two_near.agree, two_near.near_ties, two_near.passed) == (8, 2, False)  # below 90% of the prompts
    far = judge([shipped([1, 2, 3]) for _ in range(10)], same[:9] + [[1, 901, 3]])
    assert (far.agree, far.far, far.passed) == (9, 1, False)  # 90% agree, but the rest is no near-tie
    assert judge(ref, same).passed and "10/10 same first 32 tokens" in judge(ref, same).summary()


def test_a_different_vocabulary_fails_whatever_the_tokens():
    gate = judge([shipped([1])], [[1]], vocabulary_same=False)
    assert gate.agree == 1 and not gate.passed and "vocabulary" in gate.summary()
    assert not GateResult(0, 0, []).passed
    with pytest.raises(ValueError):
        judge([shipped([1])], [])


def test_the_agreement_threshold_rounds_up():
    ref = [shipped([1, 2], gaps={1: 0.1}) for _ in range(50)]
    assert judge(ref, [[1, 2]] * 45 + [[1, 901]] * 5).passed  # 45/50 = 90%
    assert not judge(ref, [[1, 2]] * 44 + [[1, 901]] * 6).passed


def test_stable_prompts_are_those_the_shipped_file_repeats_in_another_batch_shape():
    again = [shipped([1, 2, 3]), shipped([1, 901, 3]), shipped([7] * PREFIX_TOKENS + [4])]
    assert stable_prompts([shipped([1, 2, 3]), shipped([1, 2, 3]), shipped([7] * PREFIX_TOKENS + [5])],
                          again) == [True, False, True]  # past the prefix nothing counts


def test_agreement_is_counted_on_the_stable_prompts_and_the_others_need_near_ties_only():
    ref = [shipped([1, 2, 3], gaps={1: 0.1}) for _ in range(10)]
    stable = [True] * 6 + [False] * 4
    flips_where_unstable = [[1, 2, 3]] * 6 + [[1, 901, 3]] * 4
    gate = judge(ref, flips_where_unstable, stable=stable)
    assert (gate.agree, gate.stable, gate.stable_agree, gate.near_ties, gate.passed) == (6, 6, 6, 4, True)
    assert "6/10 same first 32 tokens (6/6 of the stable prompts)" in gate.summary()
    assert not judge(ref, [[1, 901, 3]] + flips_where_unstable[1:], stable=stable).passed  # 5/6 stable agree
    far = [shipped([1, 2, 3]) for _ in range(10)]
    assert not judge(far, flips_where_unstable, stable=stable).passed  # an unstable prompt still needs a near-tie
    assert not judge(ref, [[1, 2, 3]] * 10, stable=[True] * 4 + [False] * 6).passed  # too few stable to judge
    assert judge(ref, [[1, 2, 3]] * 10, stable=[True] * 5 + [False] * 5).passed


def test_a_voice_turn_is_its_prefill_plus_the_first_decode_steps():
    assert voice_turn_ms({"prefill_24_at_1k": [50.0, 40.0, 60.0], "decode_at_1k": [10.0, 12.0, 11.0]}) == 50 + 8 * 11


def test_the_fastest_passing_copy_wins_when_it_beats_the_shipped_file():
    ok = GateResult(50, 48, [])
    failed = GateResult(50, 20, [])
    chosen, reason = choose(200.0, {"q8_0": (ok, 150.0), "q4_0": (failed, 100.0)})
    assert chosen == "q8_0" and "150 ms vs shipped 200 ms" in reason
    assert choose(200.0, {"q8_0": (ok, 150.0), "q4_0": (ok, 140.0)})[0] == "q4_0"


def test_the_shipped_file_stays_without_a_passing_or_clearly_faster_copy():
    ok = GateResult(50, 48, [])
    assert choose(200.0, {"q8_0": (ok, 195.0)}) == ("shipped", choose(200.0, {"q8_0": (ok, 195.0)})[1])
    assert "5% faster" in choose(200.0, {"q8_0": (ok, 195.0)})[1]
    assert choose(200.0, {"q8_0": (GateResult(50, 10, []), 100.0)})[0] == "shipped"
    assert choose(200.0, {"q8_0": (None, None), "q4_0": (ok, None)})[0] == "shipped"  # crashed / not timed
