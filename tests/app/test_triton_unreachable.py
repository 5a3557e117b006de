"""The real Triton engine client pointed at a port where nothing listens: 503, fast."""

import socket
import time

import httpx2

from gateway.api.app import create_app
from gateway.settings import Settings
from gateway.engine.triton_engine import TritonEngine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_triton_is_503_not_a_hang(model, tmp_path):
    settings = Settings(triton_grpc_port=free_port(), data_dir=str(tmp_path / "data"))
    engine = TritonEngine(settings.triton_grpc_url, settings.triton_model, model.artifacts.vocab_size, timeout_s=2.0)
    app = create_app(settings, engine, model)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway") as client:
        started = time.monotonic()
        r = await client.post("/v1/chat/completions",
                              json={"model": "electron", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "1000"
        assert "cannot serve" in r.json()["error"]["message"]
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert time.monotonic() - started < 10
    await app.state.gateway.accounts.close()
    await engine.close()
