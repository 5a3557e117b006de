"""The per-request TTFT timeline: every stage from the key check to the first content on the
socket, logged at DEBUG when the request ends, with the engine's own stages from its timestamps."""

import logging

from gateway.chat.timeline import Timeline

from tests.support.chat import post

GATEWAY_STAGES = ["auth", "read_body", "parse", "template", "tokenize", "guide", "admit"]
ENGINE_STAGES = ["to_engine", "engine_queue", "prefill", "from_engine"]


def timeline_records(caplog):
    return [rec for rec in caplog.records if rec.name == "gateway.timeline"]


async def test_a_streamed_request_logs_every_stage_in_order(client, say, caplog):
    say("Hello there, friend.", engine_ttft_ms=40.0, first_token_delay_s=0.05)
    caplog.set_level(logging.DEBUG, logger="gateway.timeline")
    r = await post(client, messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert r.status_code == 200
    [record] = timeline_records(caplog)
    assert record.fields["request_id"] == r.headers["x-request-id"]
    stages = record.fields["ttft_stages_ms"]
    assert list(stages) == GATEWAY_STAGES + ENGINE_STAGES + ["detokenize", "sse_write"]
    assert all(ms >= 0 for ms in stages.values())
    # the scripted engine's first token came 40 ms after its arrival, 50 ms after the call
    assert 39.5 <= stages["engine_queue"] + stages["prefill"] <= 40.5
    assert stages["to_engine"] + stages["engine_queue"] + stages["prefill"] + stages["from_engine"] >= 49
    assert record.fields["first_content_visible"] is True
    assert abs(record.fields["ttft_total_ms"] - sum(stages.values())) < 1.0


async def test_a_first_token_without_text_is_counted_as_held_back(client, say, caplog):
    # "I" alone may still take a combining mark: its text goes out with the next token
    say("I think so.", delay_s=0.03)
    caplog.set_level(logging.DEBUG, logger="gateway.timeline")
    r = await post(client, messages=[{"role": "user", "content": "Really?"}], stream=True)
    assert r.status_code == 200
    [record] = timeline_records(caplog)
    stages = record.fields["ttft_stages_ms"]
    assert list(stages)[-3:] == ["detokenize", "held_back", "sse_write"]
    assert stages["held_back"] >= 25  # the next token came 30 ms later
    assert "engine" in stages  # no engine timestamps: one stage for the whole engine call


async def test_nothing_is_logged_above_debug(client, say, caplog):
    say("Fine.")
    caplog.set_level(logging.INFO)
    r = await post(client, messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert r.status_code == 200
    assert timeline_records(caplog) == []


def test_stages_split_the_engine_call_by_its_timestamps():
    timeline = Timeline()
    timeline.mark("auth")
    timeline.engine_called()
    called_ns = timeline._start_ns + round((timeline._last - timeline._start) * 1e9)
    ms = 1_000_000
    timeline.first_output(called_ns + 2 * ms, called_ns + 5 * ms, called_ns + 85 * ms)
    stages = timeline.stages()
    assert stages["to_engine"] == 2.0 and stages["engine_queue"] == 3.0 and stages["prefill"] == 80.0
    assert stages["from_engine"] < 0  # the "engine's" first token is in the future here
    timeline.delta(visible=False)
    timeline.written()
    assert "sse_write" not in timeline.stages()  # nothing to hear was written yet
    timeline.delta(visible=True)
    timeline.written()
    assert list(timeline.stages())[-3:] == ["detokenize", "held_back", "sse_write"]
