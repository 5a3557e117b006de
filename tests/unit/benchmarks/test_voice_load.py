"""The voice-call load generator's own logic: percentiles, SSE timing, pacing, figures."""

import json
import random

import httpx2
import numpy as np
import pytest

from perf.voice_load.calls import CallPlan, TurnRecord, caller_turn, listen_and_speak_s, start_offsets, system_prompt
from perf.voice_load.report import figures
from perf.voice_load.sse_client import TurnResult, apply_event, parse_sse_line, stream_chat
from perf.voice_load.stats import percentile, summarize


def test_percentiles_match_numpy():
    rng = random.Random(1)
    values = [rng.expovariate(1.0) for _ in range(101)]
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert summarize([]) == {"n": 0, "min": None, "p50": None, "p95": None, "p99": None, "max": None}
    assert summarize([3.0])["p99"] == 3.0


def chunk(content=None, tool=False, usage=None, choices=True):
    delta = {}
    if content is not None:
        delta["content"] = content
    if tool:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": "{"}}]
    event = {"choices": [{"index": 0, "delta": delta}] if choices else []}
    if usage:
        event["usage"] = usage
    return event


def test_first_token_counts_tool_calls_but_first_text_only_content():
    r = TurnResult()
    last = apply_event(r, chunk(content=""), 0.05, None)  # the role chunk: no delta
    assert r.ttft_s is None and last is None
    last = apply_event(r, chunk(tool=True), 0.10, last)
    last = apply_event(r, chunk(content="Hi"), 0.25, last)
    last = apply_event(r, chunk(content=" there"), 0.30, last)
    apply_event(r, chunk(choices=False, usage={"prompt_tokens": 50, "completion_tokens": 3,
                                               "prompt_tokens_details": {"cached_tokens": 32}}), 0.31, last)
    assert (r.ttft_s, r.first_text_s, r.text) == (0.10, 0.25, "Hi there")
    assert r.itl_s == pytest.approx([0.15, 0.05])
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens) == (50, 3, 32)


def test_sse_lines():
    assert parse_sse_line("data: [DONE]") == "[DONE]"
    assert parse_sse_line(": keep-alive") is None and parse_sse_line("") is None
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}


def sse_body(*events) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


async def test_stream_chat_times_a_canned_stream_and_can_abandon_it():
    events = [chunk(content="")] + [chunk(content=w) for w in ("a", "b", "c", "d")] + [
        chunk(choices=False, usage={"prompt_tokens": 9, "completion_tokens": 4})]
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx2.Response(200, content=sse_body(*events), headers={"content-type": "text/event-stream"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler), base_url="http://x/v1") as http:
        whole = await stream_chat(http, {"model": "m", "messages": []})
        cut = await stream_chat(http, {"model": "m", "messages": []}, cancel_after_deltas=2)
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert whole.ok and whole.text == "abcd" and whole.completion_tokens == 4 and len(whole.itl_s) == 3
    assert cut.cancelled and cut.text == "ab" and cut.completion_tokens is None


async def test_an_http_error_is_recorded_not_raised():
    transport = httpx2.MockTransport(lambda request: httpx2.Response(429, json={"error": {"message": "slow down"}}))
    async with httpx2.AsyncClient(transport=transport, base_url="http://x/v1") as http:
        r = await stream_chat(http, {"model": "m", "messages": []})
    assert not r.ok and r.status == 429 and "slow down" in r.error


def test_paced_callers_listen_then_speak_and_closed_ones_do_not():
    reply = TurnResult(first_text_s=0.1, end_s=0.5, text="x" * 30)  # 2 s of speech from 0.1 s
    assert listen_and_speak_s(CallPlan(pacing="paced"), reply) == pytest.approx(1.6 + 1.5)
    assert listen_and_speak_s(CallPlan(pacing="closed"), reply) == 0.0
    long_stream = TurnResult(first_text_s=0.1, end_s=9.0, text="x" * 30)  # speech over before the end
    assert listen_and_speak_s(CallPlan(pacing="paced"), long_stream) == pytest.approx(1.5)
    assert start_offsets(CallPlan(calls=3, pacing="paced", stagger_s=1.0)) == [0.0, 1.0, 2.0]
    assert start_offsets(CallPlan(calls=3, pacing="closed")) == [0.0, 0.0, 0.0]


def test_prompts():
    assert len(system_prompt(450).split()) == 450
    assert system_prompt(50, "s1") != system_prompt(50, "s2")
    turn = caller_turn(random.Random(3))
    assert 8 <= len(turn.split()) <= 20


def test_figures_split_turns_and_count_errors():
    def turn(call, n, ttft, cached, ok=True, spec=False):
        r = TurnResult(status=200 if ok else 500, ttft_s=ttft, first_text_s=ttft, end_s=ttft + 1.0,
                       itl_s=[0.05, 0.07], prompt_tokens=100, completion_tokens=21, cached_tokens=cached)
        return TurnRecord(call, n, r, speculative=spec)
    records = [turn(0, 0, 1.0, 0), turn(0, 1, 0.2, 90), turn(1, 0, 3.0, 0), turn(1, 1, 0.4, 90),
               turn(1, 2, 9.9, 0, ok=False), turn(1, 2, 0.1, 0, spec=True)]
    f = figures(records, wall_s=10.0)
    assert f["turns"] == 5 and f["errors"] == 1 and f["speculative"] == 1
    assert f["first_turn"]["ttft_ms"]["p50"] == pytest.approx(2000.0)
    assert f["later_turns"]["ttft_ms"]["p50"] == pytest.approx(300.0)
    assert f["all"]["decode_tps"]["p50"] == pytest.approx(20.0)
    assert f["output_tokens_per_s"] == pytest.approx(8.4) and f["cache_ratio"] == pytest.approx(0.45)


def test_scenario_specs_become_plans():
    from perf.voice_bench import SWEEP, plans
    base = CallPlan(calls=8, turns=6)
    got = plans(["paced-warm:16", "cold-burst", "closed:4", "sweep"], base)
    assert [(n, p.calls, p.turns, p.pacing) for n, p in got[:3]] == [
        ("paced-warm", 16, 6, "paced"), ("cold-burst", 8, 1, "closed"), ("closed", 4, 6, "closed")]
    assert [p.calls for n, p in got[3:]] == SWEEP


def fake_row(server, calls, later_p50, tps, scenario="sweep"):
    f = figures([TurnRecord(0, 0, TurnResult(status=200, ttft_s=0.5, first_text_s=0.5, end_s=1.5,
                                             completion_tokens=11)),
                 TurnRecord(0, 1, TurnResult(status=200, ttft_s=later_p50 / 1000, end_s=2.0,
                                             completion_tokens=11))], wall_s=1.0)
    f["output_tokens_per_s"] = tps
    return {"scenario": scenario, "server": server, "plan": {"calls": calls, "turns": 2}, "figures": f,
            "samples": {"ttft_ms": [500.0, later_p50]}}


def test_markdown_pairs_the_servers_with_ratios():
    from perf.voice_bench import report
    rows = [fake_row("electron", 8, 200.0, 60.0, "closed"), fake_row("llama-server", 8, 400.0, 40.0, "closed")]
    table = report(rows, {"date": "d", "machine": "m", "servers": "electron vs llama-server"}).markdown()
    assert "| closed | 8 | 2 | electron | 500 / 500 | 200 / 200 / 200 |" in table
    assert "| closed | 8 | 1.00 / 0.50 | 1.50 |" in table


def test_plots_are_written(tmp_path):
    from perf.voice_load import plots
    rows = [fake_row(s, n, 100.0 * n, 10.0 * n) for s in ("electron", "llama-server") for n in (1, 2, 4)]
    rows += [fake_row(s, 8, 150.0, 50.0, "paced-warm") for s in ("electron", "llama-server")]
    for path in (plots.ttft_distribution(rows, "paced-warm", tmp_path / "a.png"),
                 plots.by_concurrency(rows, "sweep", tmp_path / "b.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert plots.by_concurrency(rows, "paced-warm", tmp_path / "c.png") is None  # one concurrency only


def test_playback_stalls_only_when_the_player_runs_out_of_text():
    from perf.voice_load.playback import longest_stall, stalls

    # 15 chars/s: 30 characters at t=0 last until t=2.0; text at 1.5 s extends it by 1 s to 3.0
    assert stalls([(0.0, 30), (1.5, 15), (2.9, 15)]) == []
    # the next text arrives at 3.5 s, 0.5 s after the player fell silent at 3.0
    waits = stalls([(0.0, 30), (1.5, 15), (3.5, 15), (4.0, 3)])
    assert waits == pytest.approx([0.5])
    assert longest_stall([(0.2, 3), (0.5, 3)]) == pytest.approx(0.1)  # 3 chars spoken by 0.4, next at 0.5
    assert longest_stall([]) == 0.0 and stalls([(1.0, 5)], chars_per_s=5) == []


def _paced_turn(ttft_s, gaps=(), status=200, chars=15):
    """A reply whose first text comes at ``ttft_s`` then one delta after each gap."""
    deltas, at = [(ttft_s, chars)], ttft_s
    for gap in gaps:
        at += gap
        deltas.append((at, chars))
    return TurnResult(status=status, ttft_s=ttft_s if status == 200 else None, text_deltas=deltas if status == 200 else [])


def test_capacity_judges_ttft_stalls_and_refusals_per_turn():
    from perf.report import markdown
    from perf.voice_load.capacity import Slo, capacity, judge, sections
    slo = Slo()
    # 15 characters last 1 s at 15 chars/s: deltas 1.0 s apart never stall, 1.5 s apart stall 500 ms
    calm = [TurnRecord(i, 0, _paced_turn(0.2, gaps=[1.0, 1.0])) for i in range(99)]
    good = judge(calm + [TurnRecord(99, 0, _paced_turn(0.25, gaps=[1.5]))], slo)
    assert good["turns"] == 100 and good["stalled_share"] == pytest.approx(0.01) and good["meets_slo"]
    assert good["stall_ms"]["max"] == pytest.approx(500.0)
    refused = judge(calm + [TurnRecord(99, 0, _paced_turn(0.2, gaps=[1.5]))]
                    + [TurnRecord(100, 0, _paced_turn(0.0, status=503))], slo)
    assert refused["refused"] == 1 and refused["failed_share"] == pytest.approx(2 / 101) and not refused["meets_slo"]
    slow = judge([TurnRecord(i, 0, _paced_turn(0.1 if i < 90 else 0.5)) for i in range(100)], slo)
    assert slow["ttft_ms"]["p95"] == pytest.approx(500.0) and slow["stalled_share"] == 0 and not slow["meets_slo"]
    points = {"electron": {16: good, 24: good, 32: slow}, "llama-server": {16: refused, 24: slow}}
    assert capacity(points["electron"]) == 24 and capacity(points["llama-server"]) == 0
    assert capacity(points["electron"], ttft_p95_ms=600) == 32 and capacity({24: slow}, 600) == 24
    assert capacity(points["llama-server"], 600) == 0  # its refusals at 16 cap it below its 24
    # a miss caps capacity there, even where a larger N happened to pass
    assert capacity({8: good, 16: slow, 24: good}) == 8 and capacity({8: slow, 16: good}) == 0
    table = markdown(sections(points, slo, "t"))
    assert "| electron | 24 |" in table and "| llama-server | 0 |" in table and "none of the measured N" in table
    assert "| 32 | electron | 100 | 100 / 500 / 500 | - / - | 0 / 0 | 0.0% | 0 | 0 | no |" in table


def test_capacity_reports_the_later_turns_ttft_apart_from_first_turns():
    from perf.report import markdown
    from perf.voice_load.capacity import Slo, judge, sections
    # first turns compute the system prompt (slow), later turns only their new text (fast)
    records = [TurnRecord(call, turn, _paced_turn(0.6 if turn == 0 else 0.08 + 0.01 * call))
               for call in range(4) for turn in range(3)]
    records.append(TurnRecord(4, 1, _paced_turn(0.0, status=503)))  # a refused later turn has no TTFT
    point = judge(records, Slo())
    assert point["ttft_ms"]["p95"] == pytest.approx(600.0)
    assert point["later_ttft_ms"]["p50"] == pytest.approx(95.0) and point["later_ttft_ms"]["p95"] == pytest.approx(110.0)
    assert "| 4 | electron | 13 | 105 / 600 / 600 | 95 / 110 |" in markdown(sections({"electron": {4: point}}, Slo(), "t"))


def test_capacity_plot_is_written(tmp_path):
    from perf.voice_load import plots
    from perf.voice_load.capacity import Slo, judge
    point = judge([TurnRecord(0, 0, _paced_turn(0.2, gaps=[1.0]))], Slo())
    path = plots.capacity({"electron": {16: point, 32: point}, "llama-server": {16: point}}, Slo(), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
