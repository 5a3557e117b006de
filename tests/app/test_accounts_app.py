"""Keys, caps and the usage ledger through the gateway in process (real app, tokenizer,
template and stores; a scripted engine). The ledger tests run on SQLite and PostgreSQL."""

import asyncio
import contextlib
import dataclasses

import httpx2
import pytest

from gateway.accounts.limits import LocalLimiter
from gateway.accounts.pricing import Prices, cost_of
from gateway.accounts.service import AccountService, ProtectedModeError, check_accounts_at_start
from gateway.api.app import create_app
from gateway.errors import EngineError, EngineUnavailableError, ServerOverloadedError

from tests.app.asgi_driver import post_and_hang_up
from tests.support.chat import CALL, USER, WEATHER, sse_events
from tests.support.clock import Clock


@dataclasses.dataclass
class Gateway:
    app: object
    client: httpx2.AsyncClient
    accounts: AccountService

    async def key(self, account="acme", name="test", admin=False, **limits) -> str:
        await self.accounts.start()
        made = await self.accounts.store.create_key(account, name, admin=admin)
        if limits:
            await self.accounts.store.set_limits(account, limits.get("concurrency"), limits.get("rpm"),
                                                 limits.get("tpm"))
        await self.accounts.refresh()
        return made.key

    async def post(self, key=None, **fields):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": "electron", "messages": USER, **fields}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def rows(self):
        await self.accounts.ledger.flush()
        return await self.accounts.store.usage_rows()

    def in_flight(self, account="acme") -> int:
        return self.accounts.limiter.in_flight(account)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def open_gateway(settings, engine, model, clock):
    """Builds gateways with their own settings (store, host, limits) on demand."""
    made = []

    @contextlib.asynccontextmanager
    async def build(**changes):
        s = dataclasses.replace(settings, **changes)
        accounts = AccountService(s, limiter=LocalLimiter(clock))
        app = create_app(s, engine, model, accounts)
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway") as c:
            gateway = Gateway(app, c, accounts)
            made.append(gateway)
            try:
                yield gateway
            finally:
                await accounts.close()

    return build


async def test_missing_unknown_and_disabled_keys_get_401_without_a_hint(open_gateway, say):
    say("Hello there.")
    async with open_gateway() as gw:
        key = await gw.key()
        other = await gw.key(name="to-disable")
        await gw.accounts.store.set_disabled((await gw.accounts.store.find_key(other[:12])).key_id, True)
        await gw.accounts.refresh()
        assert (await gw.post(key)).status_code == 200
        answers = {}
        for label, header in {"missing": None, "unknown": "sk-el-" + "x" * 43, "disabled": other,
                              "not bearer": "Basic abc"}.items():
            headers = {"Authorization": header if label == "not bearer" else f"Bearer {header}"} if header else {}
            r = await gw.client.post("/v1/chat/completions", json={"model": "electron", "messages": USER},
                                     headers=headers)
            assert r.status_code == 401, label
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
            assert error["request_id"] == r.headers["x-request-id"]
            answers[label] = error["message"]
        assert answers["unknown"] == answers["disabled"]  # a disabled key looks like any wrong key
        assert "x" * 10 not in answers["unknown"] and other not in answers["disabled"]
        assert (await gw.client.get("/v1/models")).status_code == 401
        assert (await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        assert (await gw.client.get("/health")).status_code == 200  # probes need no key
        assert len(await gw.rows()) == 1  # refused requests leave no row


async def test_protected_mode_open_on_loopback_only(open_gateway, say, settings):
    say("Hi.")
    async with open_gateway() as gw:  # 127.0.0.1, no key
        r = await gw.post()
        assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers
        [row] = await gw.rows()
        assert row["account_id"] == "local" and row["key_id"] is None
        key = await gw.key()  # once a key exists, every request needs one
        assert (await gw.post()).status_code == 401 and (await gw.post(key)).status_code == 200
    exposed = dataclasses.replace(settings, gateway_host="0.0.0.0", data_dir=settings.data_dir + "-exposed")
    with pytest.raises(ProtectedModeError, match="electron-keys create"):
        await check_accounts_at_start(exposed)
    async with open_gateway(gateway_host="0.0.0.0", data_dir=exposed.data_dir) as gw:
        assert (await gw.post()).status_code == 401  # never open off loopback, even if started anyway
    assert await check_accounts_at_start(dataclasses.replace(settings, gateway_host="0.0.0.0")) == 1


async def test_concurrency_cap_admits_exactly_the_cap_under_a_burst(open_gateway, say):
    say("one two three four five six seven eight nine ten", delay_s=0.1)
    async with open_gateway() as gw:
        key = await gw.key(concurrency=5, rpm=10_000)
        responses = await asyncio.gather(*[gw.post(key) for _ in range(200)])
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 5 and statuses.count(429) == 195
        refused = next(r for r in responses if r.status_code == 429)
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert "concurrent requests" in error["message"] and "limit 5" in error["message"]
        assert refused.headers["retry-after"] == "1" and refused.headers["retry-after-ms"] == "1000"
        assert refused.headers["x-ratelimit-limit-requests"] == "10000"
        assert gw.in_flight() == 0
        assert len(await gw.rows()) == 5


async def test_requests_per_minute_window_slides(open_gateway, say, clock):
    say("ok")
    async with open_gateway() as gw:
        key = await gw.key(concurrency=0, rpm=200)
        statuses = []
        for _ in range(250):
            clock.now += 0.01
            statuses.append((await gw.post(key)).status_code)
        assert statuses[:200] == [200] * 200 and statuses[200:] == [429] * 50
        r = await gw.post(key)
        error = r.json()["error"]
        assert r.status_code == 429 and "requests per minute (RPM)" in error["message"] and "limit 200" in error["message"]
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert 57 <= int(r.headers["retry-after"]) <= 60
        assert int(r.headers["retry-after-ms"]) == pytest.approx(60_000 - 2510 + 10, abs=20)
        clock.now += 58.0  # the first ~50 admissions leave the window: as many get in, no more
        statuses = [(await gw.post(key)).status_code for _ in range(60)]
        assert 40 <= statuses.count(200) <= 52 and statuses[statuses.count(200):] == [429] * statuses.count(429)
        assert len(await gw.rows()) == 200 + statuses.count(200)


async def test_success_carries_rate_limit_headers_and_tokens_per_minute_cap(open_gateway, say):
    say("one two three")
    async with open_gateway() as gw:
        key = await gw.key(concurrency=3, rpm=10, tpm=1)
        r = await gw.post(key)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "10" and r.headers["x-ratelimit-remaining-requests"] == "9"
        assert r.headers["x-ratelimit-limit-tokens"] == "1"
        r = await gw.post(key)
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        assert "tokens per minute" in r.json()["error"]["message"]


async def test_key_and_limit_changes_reach_a_running_gateway(open_gateway, say):
    say("ok", delay_s=0.3)
    async with open_gateway(accounts_refresh_s=0.2) as gw:
        key = await gw.key(concurrency=1)
        first = asyncio.ensure_future(gw.post(key))
        await asyncio.sleep(0.1)
        assert (await gw.post(key)).status_code == 429
        await first
        await gw.accounts.store.set_limits("acme", 2, None, None)  # as electron-keys limits does
        await asyncio.sleep(0.5)
        both = await asyncio.gather(gw.post(key), gw.post(key))
        assert [r.status_code for r in both] == [200, 200]
        record = await gw.accounts.store.find_key(key[:12])
        await gw.accounts.store.set_disabled(record.key_id, True)
        await asyncio.sleep(0.5)
        assert (await gw.post(key)).status_code == 401


async def test_closing_waits_for_a_refresh_under_way_instead_of_cancelling_its_query(settings):
    # a key re-read cancelled midway left aiosqlite's connection closing forever: a hung shutdown
    accounts = AccountService(dataclasses.replace(settings, accounts_refresh_s=0.01))
    await accounts.start()
    entered, release = asyncio.Event(), asyncio.Event()
    read_keys = accounts.store.keys

    async def slow_keys():
        entered.set()
        await release.wait()
        return await read_keys()

    accounts.store.keys = slow_keys
    await asyncio.wait_for(entered.wait(), 5)
    closing = asyncio.ensure_future(accounts.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # it waits for the re-read under way
    release.set()
    await asyncio.wait_for(closing, 5)
    assert accounts._refresher.done() and not accounts._refresher.cancelled()


def _hang_up_cases():
    yield "stream, before the first byte", True, 0
    yield "stream, after the first chunk", True, 1
    yield "stream, mid-stream", True, 4
    yield "non-stream, while generating", False, 0


@pytest.mark.parametrize("label, stream, after", list(_hang_up_cases()), ids=[c[0] for c in _hang_up_cases()])
async def test_a_slot_is_released_and_a_row_written_whichever_way_a_client_hangs_up(
        open_gateway, say, engine, label, stream, after):
    ids = say("a b c d e f g h i j k l m n o p q r s t u v w x y z", delay_s=0.02)
    async with open_gateway() as gw:
        key = await gw.key(concurrency=1)
        for _ in range(3):  # with a cap of 1, a leaked slot would refuse the next one
            exchange = await post_and_hang_up(gw.app, "/v1/chat/completions",
                                              {"model": "electron", "messages": USER, "stream": stream}, after,
                                              headers={"Authorization": f"Bearer {key}"})
            assert exchange.status in (200, 499, None)
            await asyncio.sleep(0.05)
            assert gw.in_flight() == 0, label
        assert (await gw.post(key)).status_code == 200
        rows = await gw.rows()
        assert [r["status"] for r in rows] == ["cancelled"] * 3 + ["stop"]
        for row, call in zip(rows[:3], engine.calls):
            assert row["completion_tokens"] == call.responses_sent < len(ids)
            assert (row["cost_pico"] > 0) == (call.responses_sent > 0)


@pytest.mark.parametrize("policy", ["cached", "full", "none"])
async def test_a_request_cancelled_during_its_prefill_pays_for_the_prompt_the_engine_took_in(
        open_gateway, say, engine, policy):
    # the engine reports its prefill after each chunk: 1 block (16 tokens) reused, then 20 and
    # 28 of the 33 prompt tokens taken in; the caller hangs up before the first token
    say("a b c d", reused_blocks=1, prefill_progress=(20, 28), delay_s=0.01, first_token_delay_s=5.0)
    async with open_gateway(cancelled_prompt_billing=policy) as gw:
        key = await gw.key()
        exchange = await post_and_hang_up(gw.app, "/v1/chat/completions",
                                          {"model": "electron", "messages": USER, "stream": True}, 0,
                                          headers={"Authorization": f"Bearer {key}"}, hang_up_after_s=0.2)
        assert exchange.status in (499, None) and engine.calls[0].abandoned
        say("a b c d")
        waited = await post_and_hang_up(gw.app, "/v1/chat/completions",  # hung up before the engine did anything
                                        {"model": "electron", "messages": USER, "stream": True}, 0,
                                        headers={"Authorization": f"Bearer {key}"})
        assert waited.status in (499, None)
        [row, nothing] = await gw.rows()
    assert (row["status"], row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (
        "cancelled", 28, 16, 0)
    expected = {"cached": (0, 28 * 100_000), "full": (12 * 400_000, 16 * 100_000), "none": (0, 0)}[policy]
    assert (row["cost_input_pico"], row["cost_cached_input_pico"], row["cost_output_pico"]) == (*expected, 0)
    assert row["cost_pico"] == sum(expected)
    assert (nothing["status"], nothing["prompt_tokens"], nothing["cost_pico"]) == ("cancelled", 0, 0)


async def test_ledger_rows_equal_the_usage_of_every_kind_of_ending(open_gateway, say, engine, store_url):
    prices = Prices(400_000, 100_000, 1_600_000)
    async with open_gateway(database_url=store_url) as gw:
        key = await gw.key(admin=False)
        record = await gw.accounts.store.find_key(key[:12])
        usages, expected = [], []

        def usage_of(body):
            return body["usage"]["prompt_tokens"], body["usage"]["prompt_tokens_details"]["cached_tokens"], \
                body["usage"]["completion_tokens"]

        say("Hello there, how are you?", reused_blocks=2)
        body = (await gw.post(key)).json()
        usages.append(usage_of(body)), expected.append("stop")
        say("one two three four five six seven eight")
        body = (await gw.post(key, max_tokens=3)).json()
        usages.append(usage_of(body)), expected.append("length")
        say("Sure. Here it is: STOP and the rest")
        r = await gw.post(key, stream=True, stop="STOP", stream_options={"include_usage": True})
        usages.append(usage_of(sse_events(r.text)[-2])), expected.append("stop")
        say(CALL)
        body = (await gw.post(key, tools=[WEATHER], tool_choice="required")).json()
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        usages.append(usage_of(body)), expected.append("tool_calls")
        say("a b c d e f g h i j k l m n o p q r s t", delay_s=0.02)
        await post_and_hang_up(gw.app, "/v1/chat/completions", {"model": "electron", "messages": USER,
                               "stream": True}, 3, headers={"Authorization": f"Bearer {key}"})
        await asyncio.sleep(0.05)
        usages.append(None), expected.append("cancelled")
        say("one two three four", error_after=2, error=EngineUnavailableError("Triton went away"))
        r = await gw.post(key, stream=True)
        assert sse_events(r.text)[-2]["error"]["code"] == "engine_unavailable"
        usages.append(None), expected.append("error")
        say("hello", error_after=0, error=EngineError("boom"))
        assert (await gw.post(key)).status_code == 500
        usages.append(None), expected.append("error")
        say("hello", error_after=0, error=ServerOverloadedError("at capacity"))
        r = await gw.post(key, stream=True)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_overloaded"
        usages.append(None), expected.append("overloaded")

        rows = await gw.rows()
        assert [r["status"] for r in rows] == expected
        for row, usage, call in zip(rows, usages, engine.calls):
            assert row["account_id"] == "acme" and row["key_id"] == record.key_id and row["model"] == "electron"
            assert row["request_id"] == call.request_id
            if usage is not None:  # the row is the usage the response reported
                assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == usage
            else:  # every token the engine delivered
                assert row["completion_tokens"] == call.responses_sent  # one token per scripted response
            produced = call.responses_sent > 0
            cost = cost_of(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], prices)
            assert (row["cost_input_pico"], row["cost_cached_input_pico"], row["cost_output_pico"]) == (
                (cost.input, cost.cached_input, cost.output) if produced else (0, 0, 0))
            assert row["cost_pico"] == row["cost_input_pico"] + row["cost_cached_input_pico"] + row["cost_output_pico"]
            assert (row["price_input_micro"], row["price_cached_input_micro"], row["price_output_micro"]) == (
                400_000, 100_000, 1_600_000)
            assert row["duration_ms"] >= 0 and row["finished_at_ms"] >= row["started_at_ms"]
        assert rows[0]["cached_tokens"] == 2 * 16 and rows[0]["ttft_ms"] is not None
        assert rows[4]["completion_tokens"] >= 2 and rows[4]["cost_pico"] > 0  # billed although cut off
        assert rows[6]["completion_tokens"] == 0 and rows[6]["cost_pico"] == 0  # failed before the engine's first token
        assert rows[7]["completion_tokens"] == 0 and rows[7]["cost_pico"] == 0  # refused by the engine
        assert gw.in_flight() == 0


async def test_usage_and_costs_endpoints_total_the_responses(open_gateway, say, engine, store_url):
    async with open_gateway(database_url=store_url) as gw:
        admin = await gw.key(name="admin", admin=True)
        plain = await gw.key(name="plain")
        other = await gw.key(account="someone-else", name="theirs")
        totals = [0, 0, 0, 0]
        for i, key in enumerate([admin, plain, plain, admin]):
            say("word " * (3 + i), reused_blocks=i)
            usage = (await gw.post(key)).json()["usage"]
            totals = [a + b for a, b in zip(totals, (usage["prompt_tokens"],
                                                      usage["prompt_tokens_details"]["cached_tokens"],
                                                      usage["completion_tokens"], 1))]
        say("not ours")
        assert (await gw.post(other)).status_code == 200
        headers = {"Authorization": f"Bearer {admin}"}
        start = 0
        r = await gw.client.get(f"/v1/organization/usage/completions?start_time={start}&bucket_width=1d&limit=31",
                                headers={"Authorization": f"Bearer {plain}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
        import time as _time
        start = int(_time.time()) - 3600
        page = (await gw.client.get("/v1/organization/usage/completions",
                                    params={"start_time": start, "bucket_width": "1h", "limit": 3},
                                    headers=headers)).json()
        assert page["object"] == "page" and page["has_more"] is False and len(page["data"]) == 2
        results = [res for bucket in page["data"] for res in bucket["results"]]
        assert [page["data"][0]["start_time"], page["data"][0]["end_time"]] == [start, start + 3600]
        summed = [sum(res[f] for res in results) for f in ("input_tokens", "input_cached_tokens", "output_tokens",
                                                           "num_model_requests")]
        assert summed == totals  # the other account's request is not in it
        assert all(res["object"] == "organization.usage.completions.result" for res in results)
        by_key = (await gw.client.get("/v1/organization/usage/completions",
                                      params=[("start_time", start), ("bucket_width", "1d"), ("group_by", "api_key_id"),
                                              ("group_by", "model")], headers=headers)).json()
        grouped = [res for bucket in by_key["data"] for res in bucket["results"]]
        assert sorted(res["num_model_requests"] for res in grouped) == [2, 2]
        assert {res["model"] for res in grouped} == {"electron"} and None not in {res["api_key_id"] for res in grouped}
        costs = (await gw.client.get("/v1/organization/costs", params=[("start_time", start), ("group_by", "line_item")],
                                     headers=headers)).json()
        items = {res["line_item"]: res["amount"]["value"] for b in costs["data"] for res in b["results"]}
        prompt, cached, output, _ = totals
        assert items["input"] == pytest.approx((prompt - cached) * 0.40e-6, rel=1e-9)
        assert items["cached input"] == pytest.approx(cached * 0.10e-6, rel=1e-9)
        assert items["output"] == pytest.approx(output * 1.60e-6, rel=1e-9)
        total = (await gw.client.get("/v1/organization/costs", params={"start_time": start}, headers=headers)).json()
        [[result]] = [b["results"] for b in total["data"] if b["results"]]
        assert result["amount"]["currency"] == "usd"
        assert result["amount"]["value"] == pytest.approx(sum(items.values()), rel=1e-9)
        paged = (await gw.client.get("/v1/organization/usage/completions",
                                     params={"start_time": start - 7200, "bucket_width": "1h", "limit": 1},
                                     headers=headers)).json()
        assert paged["has_more"] is True and paged["next_page"] == "1"
        bad = await gw.client.get("/v1/organization/usage/completions", params={"bucket_width": "1w"}, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_time"


async def test_a_batch_written_twice_is_stored_once_and_close_writes_everything(settings, store_url):
    from gateway.accounts.ledger import UsageLedger, usage_row
    from gateway.accounts.store import AccountStore

    store = await AccountStore.open(store_url)
    try:
        ledger = UsageLedger(store, flush_s=0.05)
        rows = [usage_row(request_id=f"r{i}", account_id="a", key_id=None, model="m", status="stop",
                          prompt_tokens=10, cached_tokens=4, completion_tokens=3,
                          cost=cost_of(10, 4, 3, Prices(1, 1, 1)), prices=Prices(1, 1, 1), ttft_ms=None,
                          started_at_ms=i, finished_at_ms=i, duration_ms=0.0) for i in range(50)]
        await store.insert_usage(rows[:10])
        for row in rows:  # the first ten again: a retried batch
            ledger.record(row)
        await asyncio.sleep(0.01)
        await ledger.close()  # the writer may be mid-write: it is awaited, never cancelled
        stored = await store.usage_rows()
        assert sorted(r["id"] for r in stored) == sorted(r.id for r in rows)
        assert ledger.depth == 0
    finally:
        await store.close()
