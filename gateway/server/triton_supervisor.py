"""Keeps ``tritonserver`` running under ``electron-serve``.

``TritonSupervisor.start()`` starts Triton and waits for the model (as the
launcher does), then a thread watches it every ``triton_check_s``:

- the process exited (it is reaped, never left a zombie), or its model has not
  been ready for ``triton_unready_s``: Triton is stopped (its whole process
  group) and started again;
- the model's python backend stub died while Triton lives (``stub_watch``;
  Triton would keep the model READY and fail every request): Triton's process
  group is killed at once (a dead model has nothing to drain; a SIGTERM would
  wait out Triton's 10 s exit timeout) and started again; a death by a fault
  signal is recorded so that the engine's next starts run plain CPU buffers
  (``engine_state``).

Restarts that fail are retried with a backoff that doubles from 1 s up to
``triton_restart_backoff_max_s``. Meanwhile the gateway answers 503 with
``retry-after`` (its engine calls fail fast), streams that were running end
with an error event, and ``/ready`` says not ready; when the model is back the
gateway serves again on its own (its gRPC channel reconnects within ~1 s).
Triton is one process for all gateway workers, so a restart heals them all.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

from gateway.server.engine_state import record_crash
from gateway.server.stub_watch import StubWatch
from gateway.server.triton_launcher import start_triton, stop_triton
from gateway.settings import Settings

log = logging.getLogger(__name__)


class TritonSupervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._process = start_triton(self._settings)
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.triton_ready_timeout_s + 30)
        return stop_triton(self._process) if self._process is not None else None

    def _ready(self, client) -> bool:
        try:
            return bool(client.is_model_ready(self._settings.triton_model, client_timeout=2.0))
        except Exception:  # noqa: BLE001 - not listening, or the call timed out
            return False

    def _watch(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self._settings.triton_grpc_url)
        unready_since: float | None = None
        stubs = StubWatch(self._process.pid)
        try:
            while not self._stopping.wait(self._settings.triton_check_s):
                process = self._process
                if stubs.triton_pid != process.pid:  # restarted
                    stubs = StubWatch(process.pid)
                if process.poll() is not None:
                    log.error("tritonserver exited with code %s: restarting it", process.returncode)
                elif (dead_stub := stubs.check()) is not None:
                    how = signal.Signals(dead_stub.signal).name if dead_stub.signal else "exited"
                    log.error("python backend stub of %s (pid %d, %s) died while tritonserver (pid %d) lives: "
                              "killing and restarting tritonserver", self._settings.triton_model, dead_stub.pid,
                              how, process.pid)
                    if dead_stub.signal:
                        record_crash(self._settings, dead_stub.pid, dead_stub.signal)
                    os.killpg(process.pid, signal.SIGKILL)  # a dead model has nothing to drain
                elif self._ready(client):
                    unready_since = None
                    continue
                elif unready_since is None:
                    unready_since = time.monotonic()
                    continue
                elif time.monotonic() - unready_since < self._settings.triton_unready_s:
                    continue
                else:
                    log.error("model %s not ready for %.0f s: restarting tritonserver",
                              self._settings.triton_model, time.monotonic() - unready_since)
                unready_since = None
                self._restart()
        finally:
            client.close()

    def _restart(self) -> None:
        stop_triton(self._process, timeout=5.0)  # reaps it and kills what it left behind
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                self._process = start_triton(self._settings)
                self.restarts += 1
                log.warning("tritonserver restarted (restart %d)", self.restarts)
                return
            except Exception as exc:  # noqa: BLE001 - try again later
                log.error("restarting tritonserver failed (%s); next try in %.0f s", exc, backoff)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, self._settings.triton_restart_backoff_max_s)
