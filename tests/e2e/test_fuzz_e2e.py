"""Fuzzing the real stack from its own OpenAPI document (schemathesis, seeded and bounded):
valid and invalid requests for every operation; no 5xx, every error in the envelope, and the
server still serves afterwards. Then hand-written hostile inputs, over raw HTTP."""

import json
import socket
from collections import Counter

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = pytest.mark.e2e
EXAMPLES = 150  # per operation and generation mode
OUTPUT_CAP = 4  # valid requests run on the real engine: keep their replies short
seen = Counter()


def _as_number(value):
    """What pydantic's lax mode would read as a number (ints, floats, numeric strings), else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _short_replies(body) -> None:
    """Valid requests run on the real engine: keep every reply to OUTPUT_CAP tokens, whatever
    form the generated limit takes (an int, a float, a numeric string, null, absent)."""
    if not isinstance(body, dict):
        return
    for name in ("max_tokens", "max_completion_tokens", "min_tokens"):
        if name in body and (body[name] is None or (_as_number(body[name]) or 0) > OUTPUT_CAP):
            body[name] = OUTPUT_CAP if name != "min_tokens" else 0
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_completion_tokens"] = OUTPUT_CAP


def _check(case, mode) -> None:
    if case.operation.path == "/v1/chat/completions":
        _short_replies(case.body)
        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
            case.body["model"] = "electron"  # any string is valid to the schema; only this one is served
    response = case.call(timeout=120)
    seen[(case.operation.path, response.status_code)] += 1
    assert response.status_code < 500, (case.operation.path, response.status_code, response.text[:500])
    if response.status_code >= 400 and case.operation.path != "/metrics":
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error
        sent_id = response.headers["x-request-id"]
        assert error["request_id"] == (sent_id[0] if isinstance(sent_id, list) else sent_id)


def test_fuzz_every_operation_from_the_openapi_document(gateway):
    """Seeded (derandomized) hypothesis runs per operation, valid and invalid requests
    (schemathesis's pytest plugin does not run under pytest 9: its generation API is used)."""
    schema = schemathesis.openapi.from_url(gateway + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/v1/models/{model}",
                                             "/v1/organization/usage/completions", "/v1/organization/costs",
                                             "/health", "/ready", "/metrics"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            examples = EXAMPLES if operation.path == "/v1/chat/completions" else EXAMPLES // 6

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                _check(case, mode)  # noqa: B023 - run in this iteration

            try:
                run()
            except Unsatisfiable:  # nothing invalid to send (an operation without parameters or body)
                assert mode == GenerationMode.NEGATIVE, operation.path
    chat = {status: n for (path, status), n in seen.items() if path == "/v1/chat/completions"}
    assert sum(chat.values()) >= EXAMPLES and set(chat) >= {200, 400}, seen
    print("fuzz cases by operation and status:", dict(seen))
    r = httpx2.post(gateway + "/v1/chat/completions", timeout=60,  # and the server still serves
                    json={"model": "electron", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def _raw(gateway: str, payload: bytes, read_until_close: bool = True) -> bytes:
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(payload)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


def _post(body: bytes, content_type: str = "application/json", version: str = "1.1", extra: str = "") -> bytes:
    return (f"POST /v1/chat/completions HTTP/{version}\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


USER = [{"role": "user", "content": "hi"}]
HOSTILE = {
    "invalid UTF-8": b'{"model": "electron", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "lone surrogate": b'{"model": "electron", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "10k messages": json.dumps({"model": "electron", "messages": USER * 10_000}).encode(),
    "deeply nested tool schema": json.dumps({"model": "electron", "messages": USER, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": json.loads(
            '{"type": "object", "properties": {"a": ' * 200 + '{"type": "string"}' + "}}" * 200)}}]}).encode(),
    "nesting beyond the parser": b'{"model": "electron", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge logit_bias": json.dumps({"model": "electron", "messages": USER,
                                   "logit_bias": {str(i): 1 for i in range(60_000)}}).encode(),
    "max_tokens at the int32 edge": json.dumps({"model": "electron", "messages": USER,
                                                "max_tokens": 2**31 - 1}).encode(),
    "max_tokens past int64": json.dumps({"model": "electron", "messages": USER, "max_tokens": 2**70}).encode(),
    "unknown tool_choice shape": json.dumps({"model": "electron", "messages": USER, "tool_choice": {"type": "x"},
                                             "tools": [{"type": "function", "function": {"name": "f"}}]}).encode(),
    "tool_choice names a missing tool": json.dumps({"model": "electron", "messages": USER, "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}).encode(),
    "a 40k-token prompt": json.dumps({"model": "electron", "messages": [
        {"role": "user", "content": "word " * 40_000}]}).encode(),
    "empty body": b"",
    "JSON array": b"[]",
    "null": b"null",
    "stop strings of every edge length": json.dumps({"model": "electron", "messages": USER,
                                                     "stop": ["", "x" * 10_000, "a", "b", "c"]}).encode(),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bodies_get_a_4xx_envelope(gateway, name):
    raw = _raw(gateway, _post(HOSTILE[name]))
    status = _status(raw)
    assert 400 <= status < 500, (name, raw[:300])
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"]["message"]


@pytest.mark.parametrize("stop", [[""], ["x" * 4], ["abcd"] * 4, ["y" * 64]])
def test_stop_strings_at_every_edge_are_answered(gateway, stop):
    r = httpx2.post(gateway + "/v1/chat/completions", timeout=60,
                    json={"model": "electron", "messages": USER, "stop": stop, "max_tokens": 3})
    assert r.status_code in (200, 400), r.text
    assert "error" in r.json() if r.status_code == 400 else r.json()["choices"][0]["finish_reason"]


def test_wrong_content_types_http_1_0_and_pipelined_requests(gateway):
    good = json.dumps({"model": "electron", "messages": USER, "max_tokens": 2}).encode()
    assert 400 <= _status(_raw(gateway, _post(b"model=electron", content_type="application/x-www-form-urlencoded"))) < 500
    assert _status(_raw(gateway, _post(good, content_type="text/plain"))) in (200, 400, 415)
    one_0 = _raw(gateway, _post(good, version="1.0"))
    assert _status(one_0) == 200 and b'"completion_tokens":2' in one_0
    # two requests pipelined on one connection: two answers, in order
    first = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(good)}\r\n\r\n").encode() + good
    both = _raw(gateway, first + _post(good))
    assert both.count(b"HTTP/1.1 200") == 2 and both.count(b'"completion_tokens":2') == 2
