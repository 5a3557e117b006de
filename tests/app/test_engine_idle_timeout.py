"""An engine that accepts a request and never answers: the real Triton client cancels it after
the idle timeout (504), the slot comes back and the request has its row."""

import asyncio
import dataclasses
import time

import httpx2

from gateway.accounts.service import AccountService
from gateway.api.app import create_app
from gateway.engine.triton_engine import TritonEngine
from tests.services import free_port

from tests.app import stalling_triton


async def test_a_silent_engine_is_cancelled_after_the_idle_timeout(settings, model):
    port = free_port()
    server, servicer = await stalling_triton.start(port)
    s = dataclasses.replace(settings, triton_grpc_port=port, engine_idle_timeout_s=0.6)
    engine = TritonEngine(s.triton_grpc_url, s.triton_model, model.artifacts.vocab_size,
                          idle_timeout_s=s.engine_idle_timeout_s)
    accounts = AccountService(s)
    app = create_app(s, engine, model, accounts)
    try:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://g") as c:
            await accounts.start()
            key = (await accounts.store.create_key("acme", "k")).key
            await accounts.store.set_limits("acme", 1, None, None)
            await accounts.refresh()
            auth = {"Authorization": f"Bearer {key}"}
            for stream in (False, True):  # with a cap of 1, a held slot would make the second a 429
                started = time.monotonic()
                r = await c.post("/v1/chat/completions", headers=auth,
                                 json={"model": "electron", "stream": stream,
                                       "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 504 and r.json()["error"]["code"] == "engine_timeout"
                assert 0.6 <= time.monotonic() - started < 3
            await asyncio.sleep(0.2)
            assert servicer.requests == 2 and servicer.cancelled == 2  # the engine saw both cancelled
            await accounts.ledger.flush()
            rows = await accounts.store.usage_rows()
            assert [(r["status"], r["completion_tokens"], r["cost_pico"]) for r in rows] == [("error", 0, 0)] * 2
    finally:
        await accounts.close()
        await engine.close()
        await server.stop(0)
