"""The soak benchmark's ledger check: one right row per admitted request."""

from perf.soak import check_ledger
from perf.voice_load.calls import TurnRecord
from perf.voice_load.sse_client import TurnResult


def turn(request_id, deltas, cancelled=False, tokens=None, status=200):
    result = TurnResult(status=status, request_id=request_id, cancelled=cancelled, ttft_s=0.1,
                        itl_s=[0.05] * (deltas - 1), prompt_tokens=30, cached_tokens=0, completion_tokens=tokens)
    return TurnRecord(0, 0, result)


def row(request_id, status, tokens):
    return {"request_id": request_id, "status": status, "prompt_tokens": 30, "cached_tokens": 0,
            "completion_tokens": tokens, "cost_pico": 1}


def test_a_completed_reply_needs_the_tokens_the_client_saw():
    ok = check_ledger([turn("a", 10, tokens=12)], [row("a", "length", 12)])
    assert (ok["missing"], ok["duplicated"], ok["wrong"]) == (0, 0, 0)
    bad = check_ledger([turn("a", 10, tokens=12)], [row("a", "length", 11)])
    assert bad["wrong"] == 1


def test_a_hung_up_reply_bills_at_least_what_was_received_cut_or_finished_first():
    # the reply finished on the server before the hang-up reached it: billed as finished
    finished = check_ledger([turn("a", 5, cancelled=True)], [row("a", "stop", 7)])
    assert finished["wrong"] == 0
    cut = check_ledger([turn("a", 5, cancelled=True)], [row("a", "cancelled", 5)])
    assert cut["wrong"] == 0
    short = check_ledger([turn("a", 5, cancelled=True)], [row("a", "cancelled", 4)])
    assert short["wrong"] == 1
    failed = check_ledger([turn("a", 5, cancelled=True)], [row("a", "error", 9)])
    assert failed["wrong"] == 1


def test_missing_and_duplicated_rows_are_found():
    found = check_ledger([turn("a", 3, tokens=3), turn("b", 3, tokens=3)],
                         [row("a", "stop", 3), row("a", "stop", 3)])
    assert (found["missing"], found["duplicated"]) == (1, 1)
    assert found["examples"][0] == ["b"]
