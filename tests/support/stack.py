"""The gateway as a process for the end-to-end tests: a stack in front of the session's
tritonserver, the installed CLIs, the official SDK."""

import os
import subprocess
import sys
from pathlib import Path

import openai

from gateway.accounts.store import AccountStore
from tests.services import free_port
from perf.voice_load.servers import ElectronServer

MODEL = "electron"
BIN = Path(sys.executable).parent
ASK = [{"role": "user", "content": "Tell me a long story about the sea."}]
LONG = {"model": MODEL, "messages": ASK, "max_tokens": 300, "min_tokens": 300, "temperature": 0}


def cli(env: dict, tool: str, *args: str) -> str:
    done = subprocess.run([str(BIN / tool), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def create_key(env: dict, account: str, name: str, admin: bool = False) -> str:
    out = cli(env, "electron-keys", "create", "--account", account, "--name", name, *(["--admin"] if admin else []))
    key = out.strip().splitlines()[-1]
    assert key.startswith("sk-el-") and len(key) >= 40
    return key


class Stack:
    """A gateway process with its own store in front of the session's tritonserver."""

    def __init__(self, triton, tmp_path, **env) -> None:
        self.env = {"ELECTRON_DATA_DIR": str(tmp_path / "data"), **env}
        self.triton = triton
        self.tmp_path = tmp_path
        self.servers = []

    def start(self, **more) -> str:
        port = free_port()
        log = self.tmp_path / f"gateway-{port}.log"
        server = ElectronServer(port, log_path=log, triton_grpc_port=self.triton.triton_grpc_port, log_level="INFO",
                                env={**self.env, **more})
        self.servers.append(server)
        return server.root_url

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                assert server.stop() == 0

    async def rows(self) -> list[dict]:
        url = self.env.get("ELECTRON_DATABASE_URL") or f"sqlite+aiosqlite:///{self.env['ELECTRON_DATA_DIR']}/electron.db"
        store = await AccountStore.open(url)
        try:
            return await store.usage_rows()
        finally:
            await store.close()


def sdk(root: str, key: str | None, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=root + "/v1", api_key=key or "none", timeout=120,
                         **{"max_retries": 0, **options})


def serve_once(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "electron-serve")], env={**os.environ, "ELECTRON_START_TRITON": "false",
                                                               "ELECTRON_GATEWAY_PORT": str(free_port()), **env},
                          capture_output=True, text=True, timeout=120)
