"""One log line per request at its end, with its bill's figures and never its text; JSON lines."""

import json
import logging

from gateway.api.request_log import JsonFormatter

from tests.support.chat import post

SECRET = "my card number is 4111"


async def test_one_line_per_request_with_figures_and_no_text(client, say, caplog):
    say("Here is the private answer.", reused_blocks=1, engine_ttft_ms=12.34)
    caplog.set_level(logging.INFO)
    body = {"messages": [{"role": "user", "content": SECRET}]}
    r = await post(client, **body, stream=True)
    assert r.status_code == 200
    refused = await client.post("/v1/chat/completions", content=b"{not json")
    assert refused.status_code == 400
    lines = [rec for rec in caplog.records if rec.name == "gateway.request"]
    assert len(lines) == 2
    done, bad = (rec.fields for rec in lines)
    assert done["http_status"] == 200 and done["status"] == "stop" and done["account"] == "local"
    assert done["completion_tokens"] > 0 and done["cached_tokens"] == 16 and done["ttft_ms"] is not None
    assert done["engine_ttft_ms"] == 12.3  # the engine's own time to first token (perf/bench_gateway.py reads it)
    assert done["request_id"] == r.headers["x-request-id"]
    assert bad["http_status"] == 400 and "status" not in bad
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert SECRET not in text and "private answer" not in text


def test_json_lines():
    record = logging.LogRecord("gateway.request", logging.INFO, __file__, 1, "done", None, None)
    record.request_id = "req_1"
    record.fields = {"http_status": 200, "completion_tokens": 3}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "req_1" and entry["http_status"] == 200 and entry["message"] == "done"
    assert entry["level"] == "INFO" and entry["time"].endswith("Z")
