"""The Redis limiter against a real redis-server: caps shared exactly by several
limiters (replicas), leases that come back when a holder dies, fail closed or open."""

import asyncio
import uuid

import pytest

from gateway.accounts.limits import Admission, Limits, Refusal
from gateway.accounts.redis_limiter import LimiterUnavailable, RedisLimiter
from gateway.accounts.service import AccountService
from gateway.api.app import create_app
from tests.services import free_port

import dataclasses
import httpx2

from tests.support.chat import USER


@pytest.fixture
def account():
    return "acct-" + uuid.uuid4().hex[:8]  # every test its own keys in the shared server


@pytest.fixture
async def replicas(redis_server):
    made = [RedisLimiter(redis_server.url, lease_s=1.5) for _ in range(2)]
    yield made
    for limiter in made:
        await limiter.close()


async def test_two_replicas_share_one_concurrency_cap_exactly(replicas, account):
    caps = Limits(concurrency=5, rpm=0)
    decisions = await asyncio.gather(*[replicas[i % 2].admit(account, caps) for i in range(200)])
    admitted = [d for d in decisions if isinstance(d, Admission)]
    assert len(admitted) == 5
    assert all(d.cap == "concurrency" and d.retry_after_s == 1.0 for d in decisions if isinstance(d, Refusal))
    for d in admitted:
        replicas[0].release(d)
        replicas[0].release(d)  # twice: still one slot back
    await asyncio.sleep(0.1)
    again = await asyncio.gather(*[replicas[i % 2].admit(account, caps) for i in range(20)])
    assert sum(isinstance(d, Admission) for d in again) == 5


async def test_two_replicas_share_one_sliding_request_window(replicas, account):
    caps = Limits(concurrency=0, rpm=200)
    decisions = []
    for i in range(250):
        decisions.append(await replicas[i % 2].admit(account, caps))
    assert sum(isinstance(d, Admission) for d in decisions) == 200
    refusal = decisions[-1]
    assert refusal.cap == "rpm" and 55 < refusal.retry_after_s <= 60 and refusal.window.used == 200


async def test_slots_of_a_dead_replica_come_back_after_their_lease(redis_server, account):
    caps = Limits(concurrency=3, rpm=0)
    dead = RedisLimiter(redis_server.url, lease_s=1.0)
    alive = RedisLimiter(redis_server.url, lease_s=1.0)
    try:
        held = [await dead.admit(account, caps) for _ in range(2)]
        assert all(isinstance(d, Admission) for d in held)
        kept = await alive.admit(account, caps)  # held by a live replica, renewed while it runs
        dead._renewer.cancel()  # the dead replica renews nothing and releases nothing
        assert isinstance(await alive.admit(account, caps), Refusal)
        await asyncio.sleep(1.6)
        fresh = [await alive.admit(account, caps) for _ in range(3)]
        assert [isinstance(d, Admission) for d in fresh] == [True, True, False]  # the live slot still counts
        alive.release(kept)
    finally:
        await dead.close()
        await alive.close()


async def test_redis_unreachable_fails_closed_or_open_as_configured(account):
    url = f"redis://127.0.0.1:{free_port()}/0"
    closed = RedisLimiter(url, timeout_s=0.2)
    opened = RedisLimiter(url, timeout_s=0.2, fail_open=True)
    try:
        with pytest.raises(LimiterUnavailable) as refused:
            await closed.admit(account, Limits(1, 1))
        assert refused.value.status == 503 and refused.value.headers["retry-after"] == "1"
        admitted = await opened.admit(account, Limits(1, 1))
        assert isinstance(admitted, Admission) and admitted.window is None
        opened.release(admitted)
    finally:
        await closed.close()
        await opened.close()


async def test_the_gateway_answers_503_with_retry_after_when_redis_is_down(settings, engine, model, say):
    say("ok")
    s = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    accounts = AccountService(s)
    app = create_app(s, engine, model, accounts)
    try:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway") as c:
            await accounts.start()
            key = (await accounts.store.create_key("acme", "k")).key
            await accounts.refresh()
            r = await c.post("/v1/chat/completions", json={"model": "electron", "messages": USER},
                             headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "limiter_unavailable"
            assert engine.calls == []  # no engine work
            await accounts.ledger.flush()
            assert await accounts.store.usage_rows() == []  # refused: no row
    finally:
        await accounts.close()
