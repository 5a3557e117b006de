"""A model whose python backend stub died while Triton lives on (``dead_stub_triton``), seen
through the real Triton client with no supervisor in front (``ELECTRON_START_TRITON=false``):
503 with retry-after, never a 500; the live stream ends with an error event at once, not
after the idle timeout; /ready is 503 although Triton calls the model READY, and 200 again
once the model answers; every admitted request has its row."""

import asyncio
import dataclasses
import json
import time

import httpx2

from gateway.accounts.service import AccountService
from gateway.api.app import create_app
from gateway.engine.triton_engine import TritonEngine
from tests.services import free_port

from tests.app import dead_stub_triton

BODY = {"model": "electron", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200}


async def _stream(app, started: asyncio.Event, messages: list[bytes]) -> None:
    """POST a streamed request straight to the ASGI app; ``started`` once 3 body messages came."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": json.dumps({**BODY, "stream": True}).encode(),
                    "more_body": False}
        await asyncio.Event().wait()  # the client stays

    async def send(message):
        if message["type"] == "http.response.body":
            messages.append(message.get("body", b""))
            if len(messages) >= 3:
                started.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("gateway", 80)}
    await app(scope, receive, send)


async def test_a_dead_model_is_503_ends_live_streams_and_is_ready_again_when_it_answers(settings, model):
    port = free_port()
    server, triton = await dead_stub_triton.start(port, token=model.codec.encode(" yes")[0])
    s = dataclasses.replace(settings, triton_grpc_port=port, engine_idle_timeout_s=30)
    engine = TritonEngine(s.triton_grpc_url, s.triton_model, model.artifacts.vocab_size,
                          idle_timeout_s=s.engine_idle_timeout_s)
    accounts = AccountService(s)
    app = create_app(s, engine, model, accounts)
    try:
        await accounts.start()
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://g") as c:
            assert (await c.get("/ready")).status_code == 200
            started, messages = asyncio.Event(), []
            live = asyncio.ensure_future(_stream(app, started, messages))
            await asyncio.wait_for(started.wait(), 10)

            triton.dead = True
            refused = await c.post("/v1/chat/completions", json=BODY)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "engine_unavailable"
            assert "lost its engine process" in refused.json()["error"]["message"]

            ended = time.monotonic()
            await asyncio.wait_for(live, 5)  # not the 30 s idle timeout
            assert time.monotonic() - ended < 2
            events = [line[6:] for line in b"".join(messages).decode().splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "engine_unavailable"
            streamed = sum(1 for e in events[:-2] if json.loads(e)["choices"] and
                           json.loads(e)["choices"][0]["delta"].get("content"))

            assert (await c.get("/ready")).status_code == 503  # Triton still says READY
            assert (await c.post("/v1/chat/completions", json={**BODY, "stream": True})).status_code == 503

            triton.dead = False  # the model was restarted
            assert (await c.get("/ready")).status_code == 200
            served = await c.post("/v1/chat/completions", json={**BODY, "max_tokens": 3})
            assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 3
        assert triton.requests.count("ready-probe") == 2  # one while dead, one once answering
        await accounts.ledger.flush()
        rows = await accounts.store.usage_rows()
        assert [r["status"] for r in rows] == ["error", "error", "error", "length"]
        # the cut stream: billed for what it generated (the held-back last token may not have been sent)
        assert rows[0]["completion_tokens"] in (streamed, streamed + 1) and rows[0]["completion_tokens"] >= 2
        assert [r["completion_tokens"] for r in rows[1:]] == [0, 0, 3]
    finally:
        await accounts.close()
        await engine.close()
        await server.stop(0)
