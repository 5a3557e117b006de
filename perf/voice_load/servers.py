"""The two servers a voice benchmark compares, started on this machine on their own ports.

``ElectronServer``: ``electron-serve`` (Triton + the gateway) with a private run
directory. ``LlamaServer``: llama.cpp's ``llama-server`` on the same GGUF with the
same thread count, one slot per concurrent call, prompt caching on (its default).
Both are stopped with SIGTERM; both are reached at ``base_url``. The end-to-end
tests and the gateway benchmark start their gateway with ``ElectronServer`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from perf import ROOT
from perf.llamacpp_tools import build_tools


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode} while starting")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    process.kill()
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


class _Server:
    name = ""
    process: subprocess.Popen
    base_url: str

    def _start(self, command: list[str], log_path: Path | None, mode: str = "w", **popen) -> None:
        """Output goes to ``log_path`` (``mode`` "a": after an earlier start's), or to this
        process's own output when None."""
        self._log = open(log_path, mode) if log_path else None
        self.process = subprocess.Popen(command, stdout=self._log, stderr=self._log, **popen)

    def stop(self) -> int:
        """SIGTERM, then the exit code (0: a clean shutdown)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return self.process.returncode


class ElectronServer(_Server):
    """``electron-serve`` on ``port`` (Triton on the next three ports), or with
    ``triton_grpc_port`` the gateway alone in front of a Triton already running there."""
    name = "electron"

    def __init__(self, port: int = 18200, log_path: Path | None = None, triton_grpc_port: int | None = None,
                 log_level: str = "WARNING", env: dict[str, str] | None = None) -> None:
        """``env``: more ``ELECTRON_*`` settings; without ``ELECTRON_DATA_DIR`` the gateway gets
        an empty data directory of its own (no keys: it serves on loopback without them)."""
        env = dict(os.environ, ELECTRON_GATEWAY_PORT=str(port), ELECTRON_LOG_LEVEL=log_level, **(env or {}))
        env.setdefault("ELECTRON_DATA_DIR", tempfile.mkdtemp(prefix="electron-data-"))
        if triton_grpc_port is None:
            env.update(ELECTRON_TRITON_GRPC_PORT=str(port + 1), ELECTRON_TRITON_METRICS_PORT=str(port + 2),
                       ELECTRON_TRITON_HTTP_PORT=str(port + 3),
                       ELECTRON_RUN_DIR=tempfile.mkdtemp(prefix="electron-bench-"))
        else:
            env.update(ELECTRON_START_TRITON="false", ELECTRON_TRITON_GRPC_PORT=str(triton_grpc_port))
        self._start([sys.executable, "-m", "gateway.server.serve"], log_path, cwd=ROOT, env=env)
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = self.root_url + "/v1"
        _wait_for(self.root_url + "/ready", self.process, 300)


class LlamaServer(_Server):
    name = "llama-server"

    def __init__(self, binary: Path, gguf: Path, slots: int, threads: int, ctx_per_slot: int = 2048,
                 port: int = 18300, log_path: Path | None = None) -> None:
        command = [str(binary), "-m", str(gguf), "-t", str(threads), "-np", str(slots),
                   "-c", str(ctx_per_slot * slots), "--host", "127.0.0.1", "--port", str(port)]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.repack = True  # llama.cpp's default: extra buffer types (AMX, weight repacking) where built
        self._start(command, log_path)
        try:
            _wait_for(f"http://127.0.0.1:{port}/health", self.process, 120)
        except RuntimeError:
            if self.process.returncode is None or self.process.returncode >= 0:
                raise
            # killed by a signal while loading or warming up: the native build's extra buffer
            # types crash on some CPUs (AMX on Intel Xeon VMs); fall back as the engine's probe does
            sys.stderr.write(f"[servers] llama-server killed by signal {-self.process.returncode} while "
                             "starting; again with --no-repack\n")
            if self._log is not None:
                self._log.close()
            self.repack = False
            self._start(command + ["--no-repack"], log_path, mode="a")
            _wait_for(f"http://127.0.0.1:{port}/health", self.process, 120)


def served_gguf() -> Path:
    """The GGUF the electron engine serves with the environment's settings: the weight format
    the gate chose on this machine (``ELECTRON_WEIGHT_FORMAT``), so that llama-server beside it
    runs the same file. Measures the gate first when no decision is cached yet."""
    from gateway.server.triton_launcher import prepare_artifacts
    from gateway.server.weight_choice import engine_weights
    from gateway.settings import Settings

    settings = Settings.from_env()
    return engine_weights(settings, prepare_artifacts(settings)).path


def build_llama_server() -> Path:
    """The cached llama-server binary, built first if needed (several minutes; with
    llama.cpp's other tools, by ``perf/build_llama_tools.sh``)."""
    return build_tools() / "llama-server"
