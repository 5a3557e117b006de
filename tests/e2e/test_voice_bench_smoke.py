"""The voice-call load generator against the real stack: a tiny run (1 call, 2 turns)."""

import json

import pytest

from perf import voice_bench
from perf.voice_load.calls import CallPlan, run_calls, system_prompt
from perf.voice_load.report import figures

pytestmark = pytest.mark.e2e


async def test_one_call_two_turns_is_timed_and_its_second_turn_is_cached(gateway):
    plan = CallPlan(calls=1, turns=2, pacing="closed", system_words=200, reply_tokens=8)
    records, wall = await run_calls(gateway + "/v1", plan, system_prompt(200, "smoke"))
    assert [(r.call, r.turn) for r in records] == [(0, 0), (0, 1)]
    first, second = (r.result for r in records)
    assert first.ok and second.ok and 0 < first.ttft_s <= first.end_s
    assert first.completion_tokens == 8 or first.text  # capped reply, or an early end of turn
    assert second.cached_tokens >= first.prompt_tokens - 16 > 0
    f = figures(records, wall)
    assert f["errors"] == 0 and f["later_turns"]["ttft_ms"]["n"] == 1 and f["cache_ratio"] > 0.3


def test_the_command_writes_its_table(gateway, tmp_path):
    code = voice_bench.main(["--url", gateway + "/v1", "--scenario", "closed", "--calls", "1", "--turns", "2",
                             "--system-words", "100", "--reply-tokens", "6", "--out", str(tmp_path)])
    assert code == 0
    (result,) = tmp_path.glob("*/voice.json")
    rows = json.loads(result.read_text())["rows"]
    assert rows[0]["scenario"] == "closed" and rows[0]["figures"]["errors"] == 0
    assert "| closed | 1 | 2 |" in (result.parent / "voice.md").read_text()
