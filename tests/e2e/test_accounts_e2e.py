"""Keys, caps and the usage ledger through the whole stack: real tritonserver, real gateway
processes, keys made with the installed ``electron-keys``, the official ``openai`` SDK and
raw HTTP, real Redis and PostgreSQL servers. No mocks."""

import asyncio
import json
import os
import signal
import socket
import threading
import time

import httpx2
import openai
import pytest


from tests.support.stack import ASK, LONG, MODEL, Stack, cli, create_key, sdk, serve_once

pytestmark = pytest.mark.e2e
@pytest.fixture
def stack(triton, tmp_path):
    made = Stack(triton, tmp_path)
    yield made
    made.stop()


def hold_streams(root: str, key: str, n: int) -> list:
    """``n`` long streams, each read to its first chunk and kept open."""
    held = []
    for _ in range(n):
        client = httpx2.Client(base_url=root, timeout=60)
        response = client.send(client.build_request("POST", "/v1/chat/completions", json={**LONG, "stream": True},
                                                    headers={"Authorization": f"Bearer {key}"}), stream=True)
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)
        held.append((client, response, lines))
    return held


def hang_up(held) -> None:
    for client, response, _ in held:
        response.close()
        client.close()


def test_keys_401_429_headers_and_the_sdk_retrying(stack):
    admin = create_key(stack.env, "acme", "prod", admin=True)
    second = create_key(stack.env, "acme", "second")
    out = cli(stack.env, "electron-keys", "limits", "--account", "acme", "--concurrency", "2", "--rpm", "1000")
    assert "concurrency 2" in out and "rpm 1000" in out
    listing = cli(stack.env, "electron-keys", "list")
    assert admin[:12] in listing and second[:12] in listing and admin not in listing and second[12:] not in listing
    root = stack.start()

    for wrong in (None, "sk-el-" + "A" * 43):
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(root, wrong).chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"

    raw = sdk(root, admin).chat.completions.with_raw_response.create(model=MODEL, messages=ASK, max_tokens=2)
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == 999
    assert raw.parse().usage.completion_tokens == 2

    held = hold_streams(root, admin, 2)
    try:
        with pytest.raises(openai.RateLimitError) as limited:
            sdk(root, second).chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
        error = limited.value
        assert error.status_code == 429 and error.code == "rate_limit_exceeded"
        assert "concurrent requests" in error.message and "limit 2" in error.message
        assert error.response.headers["retry-after"] == "1" and error.response.headers["retry-after-ms"] == "1000"
        assert error.response.headers["x-ratelimit-limit-requests"] == "1000"

        # The SDK retries a 429 (twice by default) after retry-after-ms: the slot frees meanwhile.
        statuses = []
        hooks = {"response": [lambda response: statuses.append(response.status_code)]}
        retrying = openai.OpenAI(base_url=root + "/v1", api_key=second, timeout=120,
                                 http_client=openai.DefaultHttpxClient(event_hooks=hooks))
        threading.Timer(0.3, hang_up, [held[:1]]).start()
        started = time.monotonic()
        reply = retrying.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
        assert reply.usage.completion_tokens == 2
        assert statuses == [429, 200] and time.monotonic() - started >= 0.9  # it waited retry-after-ms
    finally:
        hang_up(held)

    cli(stack.env, "electron-keys", "disable", second[:12])  # reaches the running gateway within 5 s
    disabled_at = time.monotonic()
    while True:
        try:
            sdk(root, second).chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
        except openai.AuthenticationError:
            break
        assert time.monotonic() - disabled_at < 5, "a disabled key still works after 5 s"
        time.sleep(0.2)
    cli(stack.env, "electron-keys", "enable", second[:12])
    time.sleep(2.5)
    assert sdk(root, second).chat.completions.create(model=MODEL, messages=ASK, max_tokens=1).usage


async def test_a_burst_of_200_against_a_concurrency_cap_of_5_admits_exactly_5(stack):
    key = create_key(stack.env, "burst", "k")
    cli(stack.env, "electron-keys", "limits", "--account", "burst", "--concurrency", "5", "--rpm", "100000")
    root = stack.start()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(base_url=root, timeout=120,
                                  limits=httpx2.Limits(max_connections=250, max_keepalive_connections=0)) as http:
        responses = await asyncio.gather(*[http.post("/v1/chat/completions", json=LONG, headers=headers)
                                           for _ in range(200)])
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 5 and statuses.count(429) == 195, statuses
        # every slot came back: the cap admits 5 again at once
        again = await asyncio.gather(*[http.post("/v1/chat/completions", json={**LONG, "max_tokens": 4,
                                                                                "min_tokens": 4},
                                                 headers=headers) for _ in range(5)])
        assert [r.status_code for r in again] == [200] * 5
    stack.stop()
    rows = await stack.rows()
    assert len(rows) == 10 and all(r["completion_tokens"] in (300, 4) for r in rows)


def _raw(root: str, request: bytes) -> socket.socket:
    host, port = root.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(request)
    return s


def _post_bytes(key: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


async def test_slots_come_back_and_rows_are_written_when_clients_hang_up_at_every_stage(stack):
    key = create_key(stack.env, "hangups", "k")
    cli(stack.env, "electron-keys", "limits", "--account", "hangups", "--concurrency", "1", "--rpm", "100000")
    root = stack.start()
    streaming = _post_bytes(key, {**LONG, "stream": True})
    whole = _post_bytes(key, LONG)

    def partial_body():
        _raw(root, streaming[:-10]).close()

    def before_first_byte():
        _raw(root, streaming).close()

    def after_first_chunk():
        s = _raw(root, streaming)
        s.recv(1)
        s.close()

    def mid_stream():
        s = _raw(root, streaming)
        received = b""
        while received.count(b"data: ") < 10:
            received += s.recv(65536)
        s.close()

    def non_streaming():
        s = _raw(root, whole)
        time.sleep(0.3)
        s.close()

    async def admitted_again() -> None:
        """With a cap of 1, the next request gets in once the slot is back (within ~1 s)."""
        deadline = time.monotonic() + 3
        async with httpx2.AsyncClient(base_url=root, timeout=60) as http:
            while True:
                r = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                    json={"model": MODEL, "messages": ASK, "max_tokens": 1, "temperature": 0})
                if r.status_code == 200:
                    return
                assert r.status_code == 429 and time.monotonic() < deadline, "the slot did not come back"
                await asyncio.sleep(0.1)

    for hang in (partial_body, before_first_byte, after_first_chunk, mid_stream, non_streaming):
        hang()
        await admitted_again()
    stack.stop()
    rows = await stack.rows()
    statuses = [r["status"] for r in rows]
    # the partial body was never admitted; the four others were, each billed for what the engine made
    assert statuses == ["length", "cancelled", "length", "cancelled", "length", "cancelled", "length", "cancelled",
                        "length"], statuses
    cancelled = [r for r in rows if r["status"] == "cancelled"]
    assert all(r["completion_tokens"] < 300 for r in cancelled)
    assert cancelled[2]["completion_tokens"] >= 9  # mid-stream: at least what the client received
    assert all((r["cost_pico"] > 0) == (r["completion_tokens"] > 0) for r in cancelled if r["completion_tokens"])
    # hung up before the first token: the prompt tokens the engine took in, at the cached price (the default)
    assert all(r["cost_pico"] == r["prompt_tokens"] * 100_000 for r in cancelled if not r["completion_tokens"])
    log = "".join(path.read_text() for path in stack.tmp_path.glob("gateway-*.log"))
    assert "unexpected error" not in log and "Traceback" not in log


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_ledger_rows_and_usage_endpoints_equal_the_responses(triton, tmp_path, store, postgres_server):
    env = {}
    if store == "postgresql":
        env["ELECTRON_DATABASE_URL"] = postgres_server.create_database(f"ledger_{os.getpid()}_{time.time_ns()}")
    stack = Stack(triton, tmp_path, **env)
    try:
        admin = create_key(stack.env, "ledger", "admin", admin=True)
        root = stack.start()
        client = sdk(root, admin)
        usages = []
        system = "You are a helpful voice agent for a bank. " * 20
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "Say hello."}]
        greetings = []
        for _ in range(2):  # the second reads the cached prefix
            greeting = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
            greetings.append(greeting.choices[0].finish_reason)  # "length", or "stop" if the model ends its hello
            usages.append(greeting.usage)
        reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, temperature=0)
        assert reply.choices[0].finish_reason == "length"
        usages.append(reply.usage)
        stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, temperature=0, stream=True,
                                                stop=[" the"], stream_options={"include_usage": True})
        chunks = list(stream)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        usages.append(chunks[-1].usage)
        weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
        call = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                              tools=[weather], tool_choice="required", temperature=0, max_tokens=60)
        assert call.choices[0].finish_reason == "tool_calls"
        usages.append(call.usage)
        with httpx2.Client(base_url=root, timeout=60) as http:  # a caller who hangs up mid-stream
            with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True},
                             headers={"Authorization": f"Bearer {admin}"}) as r:
                received = 0
                for line in r.iter_lines():
                    received += line.startswith("data: ")
                    if received >= 6:
                        break
        time.sleep(1.5)  # the ledger writes every second

        start = int(time.time()) - 600
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx2.Client(base_url=root, timeout=60, headers=headers) as http:
            page = http.get("/v1/organization/usage/completions", params={"start_time": start}).json()
            costs = http.get("/v1/organization/costs", params=[("start_time", start), ("group_by", "line_item")]).json()
        stack.stop()
        rows = await stack.rows()
        assert [r["status"] for r in rows] == [*greetings, "length", "stop", "tool_calls", "cancelled"]
        for row, usage in zip(rows, usages):
            assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
                usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens)
        assert rows[1]["cached_tokens"] > 0 and rows[1]["cost_cached_input_pico"] == rows[1]["cached_tokens"] * 100_000
        assert 5 <= rows[5]["completion_tokens"] < 300 and rows[5]["cost_pico"] > 0
        [bucket] = [b for b in page["data"] if b["results"]]
        [result] = bucket["results"]
        assert result["num_model_requests"] == 6
        assert result["input_tokens"] == sum(r["prompt_tokens"] for r in rows)
        assert result["input_cached_tokens"] == sum(r["cached_tokens"] for r in rows)
        assert result["output_tokens"] == sum(r["completion_tokens"] for r in rows)
        spent = sum(res["amount"]["value"] for b in costs["data"] for res in b["results"])
        assert spent == pytest.approx(sum(r["cost_pico"] for r in rows) / 1e12, rel=1e-9)
        report = cli(stack.env, "electron-usage", "--account", "ledger")
        total_line = report.strip().splitlines()[-1].split()
        assert total_line[0] == "total" and int(total_line[1]) == 6
        assert int(total_line[4]) == result["output_tokens"]
    finally:
        stack.stop()


async def test_two_replicas_share_caps_through_redis_and_a_killed_one_gives_its_slots_back(
        triton, tmp_path, redis_server, postgres_server):
    database = postgres_server.create_database(f"replicas_{time.time_ns()}")
    stack = Stack(triton, tmp_path, ELECTRON_REDIS_URL=redis_server.url, ELECTRON_DATABASE_URL=database,
                  ELECTRON_CONCURRENCY_LEASE_S="3")
    try:
        window_key = create_key(stack.env, "window", "k")
        cli(stack.env, "electron-keys", "limits", "--account", "window", "--concurrency", "50", "--rpm", "200")
        slots_key = create_key(stack.env, "slots", "k")
        cli(stack.env, "electron-keys", "limits", "--account", "slots", "--concurrency", "4", "--rpm", "100000")
        roots = [stack.start(), stack.start()]

        # 250 quick requests spread over both replicas against 200 per minute: exactly 200
        quick = {"model": MODEL, "messages": ASK, "max_tokens": 1}
        async with httpx2.AsyncClient(timeout=60) as http:
            async def one(i):
                return (await http.post(roots[i % 2] + "/v1/chat/completions", json=quick,
                                        headers={"Authorization": f"Bearer {window_key}"})).status_code
            window_opened = time.monotonic()
            statuses = []
            for batch in range(0, 250, 10):
                statuses += await asyncio.gather(*[one(i) for i in range(batch, batch + 10)])
            assert statuses.count(200) == 200 and statuses.count(429) == 50

            # a burst over both replicas against a concurrency cap of 4: exactly 4
            burst = await asyncio.gather(*[http.post(roots[i % 2] + "/v1/chat/completions", json=LONG,
                                                     headers={"Authorization": f"Bearer {slots_key}"})
                                           for i in range(40)])
            assert [r.status_code for r in burst].count(200) == 4

        # replica 1 holds 3 slots and is killed: they come back after the 3 s lease, not before
        held = hold_streams(roots[1], slots_key, 3)
        stack.servers[1].process.send_signal(signal.SIGKILL)
        stack.servers[1].process.wait()
        hang_up(held)
        killed = time.monotonic()
        ask_slots = sdk(roots[0], slots_key)
        admitted = [ask_slots.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)]  # the 4th slot
        held_here = hold_streams(roots[0], slots_key, 1)
        with pytest.raises(openai.RateLimitError):
            ask_slots.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
        assert time.monotonic() - killed < 3
        time.sleep(max(0.0, killed + 3.5 - time.monotonic()))
        admitted += [ask_slots.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1) for _ in range(3)]
        hang_up(held_here)

        # the request window slides: a minute after the first admissions, requests get in again
        time.sleep(max(0.0, window_opened + 61 - time.monotonic()))
        again = sdk(roots[0], window_key).chat.completions.with_raw_response.create(model=MODEL, messages=ASK,
                                                                                    max_tokens=1)
        assert again.http_response.status_code == 200
    finally:
        stack.stop()


def test_the_gateway_refuses_to_start_open_off_loopback_or_beside_another_local_limiter(stack, tmp_path):
    exposed = serve_once({"ELECTRON_DATA_DIR": str(tmp_path / "exposed"), "ELECTRON_GATEWAY_HOST": "0.0.0.0"})
    assert exposed.returncode == 2
    assert "No API key exists" in exposed.stderr and "electron-keys create" in exposed.stderr

    stack.start()  # holds the data directory's local limits
    second = serve_once(stack.env)
    assert second.returncode == 2 and "ELECTRON_REDIS_URL" in second.stderr
