"""Operating the real stack: metrics on the gateway and on Triton move with traffic."""

import httpx2
import openai
import pytest

from tests.support.metrics import samples, value
from tests.e2e.triton_client import read_metrics

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


def _tritonserver_pid(grpc_port: int) -> int:
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"tritonserver") and f"--grpc-port={grpc_port}".encode() in command:
            return int(proc.name)
    raise LookupError(f"no tritonserver on gRPC port {grpc_port}")


async def test_a_killed_tritonserver_is_restarted_and_the_gateway_serves_again(tmp_path):
    import asyncio
    import json
    import os
    import signal
    import time

    from gateway.accounts.store import AccountStore
    from perf.voice_load.servers import ElectronServer

    port = 18400  # Triton of its own on 18401-18403
    data = tmp_path / "data"
    server = ElectronServer(port, log_path=tmp_path / "serve.log", log_level="INFO",
                            env={"ELECTRON_DATA_DIR": str(data)})
    gateway_pid = server.process.pid
    try:
        body = {"model": "electron", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 400, "min_tokens": 400, "stream": True}
        events = []
        async with httpx2.AsyncClient(base_url=server.root_url, timeout=60) as http:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if len(events) == 5:
                        os.kill(_tritonserver_pid(port + 1), signal.SIGKILL)
            # the live stream ended with one error event, then [DONE]
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["code"] == "engine_unavailable"

            # new requests: 503 with retry-after at once, never a hang; /ready says not ready
            started = time.monotonic()
            refused = await http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4,
                                                                      "min_tokens": 0})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "engine_unavailable"
            assert time.monotonic() - started < 5
            assert (await http.get("/ready")).status_code == 503

            # Triton comes back under the same gateway process, which serves again by itself
            deadline = time.monotonic() + 180
            while True:
                r = await http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4,
                                                                   "min_tokens": 0})
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and time.monotonic() < deadline, r.text
                await asyncio.sleep(0.5)
            assert r.json()["usage"]["completion_tokens"] == 4
            assert (await http.get("/ready")).status_code == 200
        assert server.process.pid == gateway_pid and server.process.poll() is None
        restarted_pid = _tritonserver_pid(port + 1)

        # a model that stops being ready while its process lives on: Triton is restarted too
        import tritonclient.grpc as grpcclient
        await asyncio.sleep(2)  # the supervisor has seen the restarted model ready (it polls every 0.25 s)
        triton = grpcclient.InferenceServerClient(f"127.0.0.1:{port + 1}")
        triton.unload_model("electron_cpu")
        triton.close()
        deadline = time.monotonic() + 120
        async with httpx2.AsyncClient(base_url=server.root_url, timeout=60) as http:
            while True:
                r = await http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2,
                                                                   "min_tokens": 2})
                if r.status_code == 200 and _tritonserver_pid(port + 1) != restarted_pid:
                    break
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.5)
    finally:
        assert server.stop() == 0
    store = await AccountStore.open(f"sqlite+aiosqlite:///{data / 'electron.db'}")
    try:
        rows = await store.usage_rows()
    finally:
        await store.close()
    statuses = [r["status"] for r in rows]
    assert statuses[0] == "error" and rows[0]["completion_tokens"] >= 4  # the stream cut by the crash, billed
    assert statuses[-1] == "length"
    # requests admitted while Triton was down are recorded, at no cost (the engine made nothing)
    assert all(r["status"] in ("error", "length") for r in rows[1:-1])
    assert all(r["cost_pico"] == 0 for r in rows[1:-1] if r["status"] == "error")
    log = (tmp_path / "serve.log").read_text()
    assert "tritonserver exited" in log and "tritonserver restarted (restart 1)" in log
    assert "not ready for" in log and "tritonserver restarted (restart 2)" in log


async def _streams_then_sigterm(tmp_path, triton, grace_s: float, max_tokens: int):
    """8 live streams, SIGTERM once each has its first chunk; returns (events per stream,
    what a new request and /ready got during the drain, exit code, usage rows)."""
    import asyncio
    import json
    import signal

    from gateway.accounts.store import AccountStore
    from tests.services import free_port
    from perf.voice_load.servers import ElectronServer

    data = tmp_path / "data"
    server = ElectronServer(free_port(), log_path=tmp_path / "gateway.log", triton_grpc_port=triton.triton_grpc_port,
                            log_level="INFO", env={"ELECTRON_DATA_DIR": str(data),
                                                   "ELECTRON_DRAIN_GRACE_S": str(grace_s)})
    body = {"model": "electron", "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
            "max_tokens": max_tokens, "min_tokens": max_tokens, "stream": True}
    started = [asyncio.Event() for _ in range(8)]

    async def stream(i: int, http) -> list:
        events = []
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
                    started[i].set()
        return events

    try:
        async with httpx2.AsyncClient(base_url=server.root_url, timeout=120,
                                      limits=httpx2.Limits(max_connections=20)) as http:
            tasks = [asyncio.ensure_future(stream(i, http)) for i in range(8)]
            await asyncio.wait_for(asyncio.gather(*[e.wait() for e in started]), 60)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with httpx2.AsyncClient(base_url=server.root_url, timeout=10) as fresh:
                ready = await fresh.get("/ready")
                refused = await fresh.post("/v1/chat/completions", json={**body, "stream": False})
            results = await asyncio.gather(*tasks)
        code = server.process.wait(60)
    finally:
        server.stop()
    store = await AccountStore.open(f"sqlite+aiosqlite:///{data / 'electron.db'}")
    try:
        rows = await store.usage_rows()
    finally:
        await store.close()
    return results, ready, refused, code, rows


async def test_sigterm_drains_8_live_streams_and_exits_0(tmp_path, triton):
    results, ready, refused, code, rows = await _streams_then_sigterm(tmp_path, triton, grace_s=60, max_tokens=40)
    assert ready.status_code == 503
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "server_shutting_down"
    for events in results:  # every admitted stream ran to its end
        assert events[-1] == "[DONE]"
        finish = [e["choices"][0]["finish_reason"] for e in events[:-1] if e.get("choices")]
        assert finish[-1] == "length" and not any("error" in e for e in events[:-1])
    assert code == 0
    assert sorted(r["status"] for r in rows) == ["length"] * 8  # flushed at exit; the refused one has none
    assert all(r["completion_tokens"] == 40 for r in rows)


async def test_streams_still_running_after_the_grace_period_are_cut_off_and_billed(tmp_path, triton):
    results, ready, refused, code, rows = await _streams_then_sigterm(tmp_path, triton, grace_s=1, max_tokens=400)
    assert ready.status_code == 503 and refused.status_code == 503
    for events in results:
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "server_shutting_down"
    assert code == 0
    assert [r["status"] for r in rows] == ["cancelled"] * 8
    assert all(0 < r["completion_tokens"] < 400 and r["cost_pico"] > 0 for r in rows)
