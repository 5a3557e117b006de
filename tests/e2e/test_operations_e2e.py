"""Operating the real stack: metrics on the gateway and on Triton move with traffic."""

import httpx2
import openai
import pytest

from app.test_metrics_app import samples, value
from triton_client import read_metrics

pytestmark = pytest.mark.e2e


def test_gateway_metrics_move_with_real_traffic(gateway, triton):
    before = samples(httpx2.get(gateway + "/metrics").text)
    engine_before = read_metrics(triton.triton_metrics_port)
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="none", max_retries=0)
    usage = []
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(
                model="electron", messages=[{"role": "user", "content": "Count to five."}], max_tokens=12,
                stream=True, stream_options={"include_usage": True}))
            usage.append(chunks[-1].usage)
        else:
            usage.append(client.chat.completions.create(
                model="electron", messages=[{"role": "user", "content": "Count to five."}], max_tokens=12).usage)
    after = samples(httpx2.get(gateway + "/metrics").text)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("electron_requests_total", route="/v1/chat/completions", status_code="200", error_code="") == 2
    assert moved("electron_completion_tokens_total", model="electron") == sum(u.completion_tokens for u in usage)
    assert moved("electron_prompt_tokens_total", model="electron") == sum(u.prompt_tokens for u in usage)
    assert moved("electron_cached_prompt_tokens_total", model="electron") == sum(
        u.prompt_tokens_details.cached_tokens for u in usage)
    assert moved("electron_time_to_first_token_seconds_count", model="electron") == 2
    ttft = moved("electron_time_to_first_token_seconds_sum", model="electron")
    assert 0 < ttft < 20
    assert value(after, "electron_requests_in_flight") == 0
    engine_after = read_metrics(triton.triton_metrics_port)  # the engine's own, on Triton's port
    assert engine_after["electron_engine_completed_total"] >= engine_before["electron_engine_completed_total"]
