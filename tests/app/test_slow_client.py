"""A client that stops reading its stream: the gateway stops pulling from the engine (nothing
piles up), and after the slow-client timeout the request is cancelled, billed and its slot freed."""

import asyncio
import dataclasses
import json
import time

from gateway.accounts.service import AccountService
from gateway.api.app import create_app

from tests.support.chat import USER


async def test_a_client_that_stops_reading_is_treated_as_gone(settings, engine, model, say):
    ids = say(" ".join(["word"] * 200), delay_s=0.005)
    s = dataclasses.replace(settings, slow_client_timeout_s=0.5)
    accounts = AccountService(s)
    app = create_app(s, engine, model, accounts)
    received = []

    async def receive():
        await asyncio.Event().wait()  # never a disconnect: the client is there, just not reading

    async def send(message):
        if message["type"] == "http.response.body":
            received.append(message.get("body", b""))
            if len(received) >= 3:  # its buffers are full from here on: send waits for a drain
                await asyncio.Event().wait()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("gateway", 80)}
    body = json.dumps({"model": "electron", "messages": USER, "stream": True}).encode()
    sent = False

    async def receive_body():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    try:
        started = time.monotonic()
        await asyncio.wait_for(app(scope, receive_body, send), 5)
        took = time.monotonic() - started
        await asyncio.sleep(0.1)
        call = engine.calls[0]
        assert 0.5 <= took < 3
        assert call.abandoned and call.responses_sent < 20 < len(ids)  # the engine was not read ahead
        assert app.state.gateway.chat.in_flight == 0
        await accounts.ledger.flush()
        [row] = await accounts.store.usage_rows()
        assert row["status"] == "cancelled" and row["completion_tokens"] == call.responses_sent > 0
        assert row["cost_pico"] > 0
    finally:
        await accounts.close()
