"""``GET /metrics``: values that move with traffic (checked, not just names)."""

import asyncio
import dataclasses

import httpx2

from gateway.accounts.limits import LocalLimiter
from gateway.accounts.service import AccountService
from gateway.api.app import create_app

from tests.support.chat import USER, post
from tests.support.metrics import samples, value


async def test_metrics_move_with_traffic(client, say):
    say("one two three four", reused_blocks=1, delay_s=0.01)
    usage = (await post(client)).json()["usage"]
    stream = await post(client, stream=True)
    assert stream.status_code == 200
    assert (await client.post("/v1/chat/completions", content=b"nope")).status_code == 400
    found = samples((await client.get("/metrics")).text)
    chat = "/v1/chat/completions"
    assert value(found, "electron_requests_total", route=chat, status_code="200", error_code="") == 2
    assert value(found, "electron_requests_total", route=chat, status_code="400", error_code="invalid_request_error") == 1
    assert value(found, "electron_prompt_tokens_total", model="electron") == 2 * usage["prompt_tokens"]
    assert value(found, "electron_cached_prompt_tokens_total", model="electron") == 2 * 16
    assert value(found, "electron_completion_tokens_total", model="electron") == 2 * usage["completion_tokens"]
    expected_cost = 2 * ((usage["prompt_tokens"] - 16) * 0.4 + 16 * 0.1 + usage["completion_tokens"] * 1.6) / 1e6
    assert abs(value(found, "electron_cost_usd_total", model="electron") - expected_cost) < 1e-12
    assert value(found, "electron_time_to_first_token_seconds_count", model="electron") == 2
    assert value(found, "electron_inter_token_latency_seconds_count", model="electron") == 2 * (
        usage["completion_tokens"] - 1)
    gaps = value(found, "electron_inter_token_latency_seconds_sum", model="electron")
    assert 0.005 * 2 * (usage["completion_tokens"] - 1) < gaps < 5  # the scripted 10 ms between outputs
    assert value(found, "electron_request_duration_seconds_count", model="electron", status="stop") == 2
    assert value(found, "electron_requests_in_flight") == 0
    assert value(found, "electron_ledger_queue_rows") == 2  # not yet written (every second)


async def test_refusals_disconnects_and_the_metrics_token(settings, engine, model, say):
    say("a b c d e f g h", delay_s=0.05)
    s = dataclasses.replace(settings, metrics_token="scrape-me")
    accounts = AccountService(s, limiter=LocalLimiter())
    app = create_app(s, engine, model, accounts)
    try:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://g") as c:
            await accounts.start()
            key = (await accounts.store.create_key("acme", "k")).key
            await accounts.store.set_limits("acme", 1, None, None)
            await accounts.refresh()
            auth = {"Authorization": f"Bearer {key}"}
            body = {"model": "electron", "messages": USER}
            results = await asyncio.gather(*[c.post("/v1/chat/completions", json=body, headers=auth)
                                             for _ in range(4)])
            assert sorted(r.status_code for r in results) == [200, 429, 429, 429]
            assert (await c.get("/metrics")).status_code == 401
            found = samples((await c.get("/metrics", headers={"Authorization": "Bearer scrape-me"})).text)
            assert value(found, "electron_rate_limited_requests_total", cap="concurrency") == 3
            assert value(found, "electron_requests_total", route="/v1/chat/completions", status_code="429",
                         error_code="rate_limit_exceeded") == 3
    finally:
        await accounts.close()


def test_the_grafana_dashboard_loads_and_reads_only_metrics_the_gateway_exports():
    import json
    import re

    from gateway.api.metrics import GatewayMetrics
    from tests.paths import ROOT

    dashboard = json.loads((ROOT / "build" / "grafana-dashboard.json").read_text())
    exported = set()
    for family in GatewayMetrics().registry.collect():
        exported |= {family.name, family.name + "_total", family.name + "_bucket", family.name + "_count",
                     family.name + "_sum"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10 and {p["title"] for p in dashboard["panels"]} >= {
        "Time to first token (engine) and first text", "Tokens per second", "Refused (429) by cap", "Errors",
        "Prefix cache: share of prompt tokens cached"}
    for expr in exprs:
        for name in re.findall(r"\belectron_[a-z_]+", expr):
            assert name in exported, name
