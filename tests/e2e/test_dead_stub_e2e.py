"""The model's python backend stub dies while tritonserver lives (the real stack of
``electron-serve``, the official SDK and raw HTTP): a SIGSEGV in the middle of a live stream,
a SIGKILL while idle (with two gateway workers). Left alone, Triton keeps the model READY and
answers every request 500 "Stub process ... is not healthy" for ever; here /ready turns 503
within 5 s, new requests get 503 with retry-after, the live stream ends with an error event,
every admitted request has its row, and the stack serves again by itself. Without a supervisor
(``ELECTRON_START_TRITON=false``) the gateway alone still answers 503, ends the live stream and
says not ready until the model answers again."""

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx2
import openai
import pytest

from gateway.accounts.store import AccountStore
from gateway.server.triton_launcher import start_triton, stop_triton
from gateway.settings import Settings
from gateway.server.stub_watch import children, is_stub
from perf.voice_load.servers import ElectronServer

pytestmark = pytest.mark.e2e

READY_WITHIN_S = 5.0
SERVES_AGAIN_WITHIN_S = 60.0
LONG = {"model": "electron", "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400, "min_tokens": 400, "stream": True, "logprobs": True}
SHORT = {"model": "electron", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
         "temperature": 0}  # greedy ("Hello! I'm"): sampled, it can end early


def _tritonserver_pid(grpc_port: int) -> int:
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


def _stub_pid(grpc_port: int) -> int:
    triton = _tritonserver_pid(grpc_port)
    stubs = [p.pid for p in children(triton) if is_stub(p) and p.state not in ("Z", "X")]
    assert len(stubs) == 1, f"tritonserver {triton} has stubs {stubs}"
    return stubs[0]


class Chats:
    """Every chat request the test sends and what it got: (status, seconds to the answer, admitted)."""

    def __init__(self, root_url: str) -> None:
        self.root_url = root_url
        self.answers: list[tuple[int, float, bool]] = []

    async def post(self, body: dict) -> httpx2.Response:
        started = time.monotonic()
        async with httpx2.AsyncClient(base_url=self.root_url, timeout=30) as http:  # a new connection
            r = await http.post("/v1/chat/completions", json=body)
        # a gateway worker that has not yet read the model's config from Triton refuses before admission
        # (no row): "cannot serve" is that refusal's message
        admitted = r.status_code == 200 or "cannot serve" not in r.json()["error"]["message"]
        self.answers.append((r.status_code, time.monotonic() - started, admitted))
        return r

    def admitted(self, status: int | None = None) -> int:
        return sum(1 for s, _, admitted in self.answers if admitted and status in (None, s))

    def assert_refused(self, r: httpx2.Response) -> None:
        """503 with retry-after in OpenAI's envelope, at once."""
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "1000"
        assert r.json()["error"]["code"] == "engine_unavailable" and r.json()["error"]["type"]
        assert self.answers[-1][1] < 5

    async def until_served(self, since: float) -> float:
        """Seconds from ``since`` until a request is served again; every answer meanwhile is 503."""
        while True:
            r = await self.post({**SHORT, "stream": False})
            if r.status_code == 200:
                assert r.json()["usage"]["completion_tokens"] == 4
                return time.monotonic() - since
            self.assert_refused(r)
            assert time.monotonic() - since < SERVES_AGAIN_WITHIN_S, "the stack did not serve again"
            await asyncio.sleep(0.5)


async def _ready_503_after(root_url: str, since: float) -> float:
    """Seconds from ``since`` to the first 503 of /ready (a new connection each time: any worker)."""
    while True:
        async with httpx2.AsyncClient(base_url=root_url, timeout=10) as http:
            r = await http.get("/ready")
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "engine_unavailable"
            return time.monotonic() - since
        assert time.monotonic() - since < READY_WITHIN_S, "/ready still 200"
        await asyncio.sleep(0.1)


def _sdk_refused(root_url: str) -> None:
    """The official SDK sees a 503 with retry-after, not a 500."""
    client = openai.OpenAI(base_url=root_url + "/v1", api_key="none", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(**SHORT)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
    assert refused.value.code == "engine_unavailable"


def _sdk_serves(root_url: str) -> None:
    client = openai.OpenAI(base_url=root_url + "/v1", api_key="none", max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(**SHORT, stream=True, stream_options={"include_usage": True}))
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4
    assert client.chat.completions.create(**SHORT).usage.completion_tokens == 4


async def _rows(data: Path, count: int) -> list[dict]:
    """The usage rows, once there are ``count`` (written in batches every second)."""
    deadline = time.monotonic() + 15
    while True:
        store = await AccountStore.open(f"sqlite+aiosqlite:///{data / 'electron.db'}")
        try:
            rows = await store.usage_rows()
        finally:
            await store.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


async def test_a_stub_killed_by_sigsegv_mid_stream_is_seen_and_healed(tmp_path):
    port = 18720  # Triton of its own on 18721-18723
    data, log = tmp_path / "data", tmp_path / "serve.log"
    server = ElectronServer(port, log_path=log, log_level="INFO", env={"ELECTRON_DATA_DIR": str(data)})
    chats = Chats(server.root_url)
    try:
        stub = _stub_pid(port + 1)
        events = []
        async with httpx2.AsyncClient(base_url=server.root_url, timeout=60) as http:
            async with http.stream("POST", "/v1/chat/completions", json=LONG) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if len(events) == 5:
                        os.kill(stub, signal.SIGSEGV)
                        killed = time.monotonic()
                        # sent at once: Triton still says READY and would answer 500
                        chats.assert_refused(await chats.post({**SHORT, "stream": True}))
                        await asyncio.to_thread(_sdk_refused, server.root_url)
                        chats.answers.append((503, 0.0, True))  # the SDK's request
                        ready_after = await _ready_503_after(server.root_url, killed)
        stream_ended = time.monotonic() - killed
        assert ready_after < READY_WITHIN_S
        # the live stream ended with one error event, then [DONE], well before the 30 s idle timeout
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "engine_unavailable"
        assert stream_ended < READY_WITHIN_S + 2
        choices = [json.loads(e)["choices"] for e in events[:-2]]
        sent_tokens = sum(len(c[0]["logprobs"]["content"]) for c in choices if c and c[0].get("logprobs"))

        served_after = await chats.until_served(killed)
        assert _stub_pid(port + 1) != stub
        await asyncio.to_thread(_sdk_serves, server.root_url)
        chats.answers += [(200, 0.0, True)] * 2
        async with httpx2.AsyncClient(base_url=server.root_url, timeout=10) as http:
            assert (await http.get("/ready")).status_code == 200
        print(f"\nSIGSEGV mid-stream: /ready 503 after {ready_after:.2f} s, stream ended after {stream_ended:.2f} s, "
              f"served again after {served_after:.1f} s")
    finally:
        assert server.stop() == 0
    rows = await _rows(data, 1 + chats.admitted())
    assert len(rows) == 1 + chats.admitted()  # one row per admitted request
    cut = rows[0]
    assert cut["status"] == "error" and sent_tokens >= 4
    # billed for what the engine generated: what the client got, and the tokens of at most one character
    # held back (incomplete UTF-8)
    assert sent_tokens <= cut["completion_tokens"] <= sent_tokens + 3 and cut["cost_pico"] > 0
    refused = [r for r in rows[1:] if r["status"] == "error"]
    assert len(refused) == chats.admitted(503)
    assert all(r["completion_tokens"] == 0 and r["cost_pico"] == 0 for r in refused)
    text = log.read_text()
    assert "python backend stub of electron_cpu" in text and "tritonserver restarted (restart 1)" in text
    assert "not healthy" not in text.split("tritonserver restarted (restart 1)")[1]  # healed, not failing on
    # a fault signal is kept for the engine's next start: plain CPU buffers, the extra ones not tried
    assert f"python backend stub of electron_cpu (pid {stub}, SIGSEGV)" in text
    assert f"the engine's stub (pid {stub}) died of SIGSEGV at " in text
    restarted = text.split(f"the engine's stub (pid {stub}) died of SIGSEGV at ", 1)[1]
    paths = next(line for line in restarted.splitlines() if "llama_engine.cpu_paths INFO CPU paths" in line)
    # plain buffers: kept from before (where the probe chose them) or taken without trying the extra ones
    assert "extra buffer types not tried" in paths or "probed: extra buffer types passed" not in paths, paths


async def test_a_stub_killed_while_idle_is_seen_and_healed_with_two_gateway_workers(tmp_path, redis_server):
    port = 18730  # Triton of its own on 18731-18733
    data, log = tmp_path / "data", tmp_path / "serve.log"
    server = ElectronServer(port, log_path=log, log_level="INFO",
                            env={"ELECTRON_DATA_DIR": str(data), "ELECTRON_GATEWAY_WORKERS": "2",
                                 "ELECTRON_REDIS_URL": redis_server.url})
    chats = Chats(server.root_url)
    try:
        assert (await chats.post({**SHORT, "stream": False})).status_code == 200
        stub = _stub_pid(port + 1)
        os.kill(stub, signal.SIGKILL)
        killed = time.monotonic()
        # no request tells the gateway first: /ready turns 503 by the supervisor's restart alone
        ready_after = await _ready_503_after(server.root_url, killed)
        assert ready_after < READY_WITHIN_S
        for _ in range(2):  # new connections: either worker
            chats.assert_refused(await chats.post({**SHORT, "stream": False}))
        served_after = await chats.until_served(killed)
        assert _stub_pid(port + 1) != stub
        for _ in range(4):  # on new connections, so both workers (each reconnects within ~1 s)
            await chats.until_served(killed)
        await asyncio.to_thread(_sdk_serves, server.root_url)
        chats.answers += [(200, 0.0, True)] * 2
        print(f"\nSIGKILL idle, 2 workers: /ready 503 after {ready_after:.2f} s, served again after "
              f"{served_after:.1f} s")
    finally:
        assert server.stop() == 0
    rows = await _rows(data, chats.admitted())
    assert len(rows) == chats.admitted()
    assert sorted(r["status"] for r in rows) == sorted("length" if s == 200 else "error"
                                                       for s, _, admitted in chats.answers if admitted)
    assert all(r["completion_tokens"] == 4 for r in rows if r["status"] == "length")
    text = log.read_text()
    assert "python backend stub of electron_cpu" in text and "tritonserver restarted (restart 1)" in text
    assert f"(pid {stub}, SIGKILL)" in text and "extra buffer types not tried" not in text  # not a fault


async def test_without_a_supervisor_the_gateway_alone_answers_503_and_ends_the_live_stream(tmp_path):
    """Triton's own answer to a dead stub ("Stub process ... is not healthy") reaches the gateway."""
    port = 18740  # the gateway; Triton on 18741-18743, started here, not by electron-serve
    settings = Settings.from_env({"ELECTRON_RUN_DIR": str(tmp_path / "run"),
                                  "ELECTRON_TRITON_GRPC_PORT": str(port + 1),
                                  "ELECTRON_TRITON_METRICS_PORT": str(port + 2),
                                  "ELECTRON_TRITON_HTTP_PORT": str(port + 3), "ELECTRON_ADAPTIVE_THREADS": "false"})
    data = tmp_path / "data"
    triton = start_triton(settings)
    server = None
    try:
        server = ElectronServer(port, log_path=tmp_path / "gateway.log", triton_grpc_port=port + 1, log_level="INFO",
                                env={"ELECTRON_DATA_DIR": str(data)})
        chats = Chats(server.root_url)
        events = []
        async with httpx2.AsyncClient(base_url=server.root_url, timeout=60) as http:
            async with http.stream("POST", "/v1/chat/completions", json=LONG) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if len(events) == 5:
                        os.kill(_stub_pid(port + 1), signal.SIGKILL)
                        killed = time.monotonic()
                        refused = await chats.post({**SHORT, "stream": False})
                        chats.assert_refused(refused)
                        message = refused.json()["error"]["message"]
                        # Triton's own words while it lives on. A stub killed while it holds the python
                        # backend's shared-memory lock can take tritonserver down with it (Triton aborts
                        # on boost's lock_exception, seen once in CI): then nothing answers on its port
                        assert "is not healthy" in message or "is unreachable" in message, message
                        refused_after = time.monotonic() - killed
            stream_ended = time.monotonic() - killed
            assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "engine_unavailable"
            assert stream_ended < refused_after + 2  # ended with the refusal, not by the 30 s idle timeout
            assert (await http.get("/ready")).status_code == 503  # while Triton still calls the model READY

            with contextlib.suppress(ProcessLookupError):
                os.killpg(triton.pid, signal.SIGKILL)  # what an operator's restart does
            stop_triton(triton)
            triton = start_triton(settings)
            deadline = time.monotonic() + SERVES_AGAIN_WITHIN_S
            while (await http.get("/ready")).status_code != 200:  # the probe gets an answer again
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            assert (await chats.post({**SHORT, "stream": False})).status_code == 200
        print(f"\nno supervisor: 503 after {refused_after:.2f} s, stream ended after {stream_ended:.2f} s")
    finally:
        if server is not None:
            assert server.stop() == 0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(triton.pid, signal.SIGKILL)
        stop_triton(triton)
    rows = await _rows(data, 1 + chats.admitted())
    assert [r["status"] for r in rows] == ["error", "error", "length"]
    assert rows[0]["completion_tokens"] >= 4 and rows[1]["completion_tokens"] == 0
