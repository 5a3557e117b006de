"""Several gateway worker processes on one port: ``ELECTRON_GATEWAY_WORKERS``.

One gateway process relays a few thousand tokens per second per core; a fast
engine (a GPU) produces more. With ``ELECTRON_GATEWAY_WORKERS=N`` (N > 1)
``electron-serve`` spawns N worker processes, each the whole gateway (its own
gRPC channel to Triton, usage-ledger writer and limiter client) listening on
the port with ``SO_REUSEPORT``: the kernel spreads new connections evenly over
them by their addresses' hash. (One socket shared by all would not: an idle
worker's event loop accepts every waiting connection at once, and measured
with 8 connections opened together one worker took all 8.) What must be shared
is shared outside the processes:

- per-account caps through Redis (``ELECTRON_REDIS_URL`` is required: caps
  kept in each process would multiply by N);
- usage rows in the one store (SQLite in WAL mode or PostgreSQL);
- metrics through ``prometheus_client``'s multiprocess mode: every worker
  writes its values to a directory of the pool's own and any worker's
  ``/metrics`` answers with the sum (gauges: the live workers' sum).

The parent supervises: a worker that dies is started again (what it had in
flight is lost with it, as with a single gateway process that dies). SIGTERM or
SIGINT to the parent is passed to every worker as SIGTERM, each drains
(``gateway.server.drain``); a second one stops them at once. Workers ignore a
terminal's SIGINT (the parent decides) and get SIGTERM if the parent dies.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass

from gateway.settings import Settings

log = logging.getLogger(__name__)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PR_SET_PDEATHSIG = 1
RESTART_MIN_INTERVAL_S = 1.0


def bind_socket(host: str, port: int, listen: bool = True, backlog: int = 2048) -> socket.socket:
    """A ``SO_REUSEPORT`` socket on the port; ``listen=False``: bound only, which keeps other
    programs off the port without taking any of its connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(backlog)
    return sock


def _die_with_parent() -> None:
    """SIGTERM when the parent dies (Linux), so a killed ``electron-serve`` leaves no worker on its port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's stop still ends them
        return


def worker_main(settings: Settings, index: int, parent_pid: int) -> None:
    """One worker: the whole gateway app on its own socket on the port (runs in a spawned process)."""
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        return
    from gateway.server.build_app import build_app
    from gateway.api.request_context import configure_logging
    from gateway.server.drain import DrainingServer, uvicorn_config

    configure_logging(settings.log_level, settings.log_format)
    # uvicorn raises the signal it drained for again once it is done: taken here, the exit is clean (0)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: None)
    app = build_app(settings)
    sock = bind_socket(settings.gateway_host, settings.gateway_port)
    log.info("gateway worker %d (pid %d) serving", index, os.getpid())
    DrainingServer(uvicorn_config(app, settings), app.state.gateway.chat, settings.drain_grace_s,
                   ignore_sigint=True).run(sockets=[sock])


@dataclass
class _Slot:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    started_at: float = 0.0
    restarts: int = 0


class WorkerPool:
    """``run()`` serves until SIGTERM/SIGINT, then drains the workers; returns the exit code."""

    def __init__(self, settings: Settings, check_s: float = 0.2) -> None:
        if settings.gateway_workers < 2:
            raise ValueError("a worker pool is for ELECTRON_GATEWAY_WORKERS >= 2")
        self.settings = settings
        self.check_s = check_s
        self.slots = [_Slot(i) for i in range(settings.gateway_workers)]
        self._context = multiprocessing.get_context("spawn")
        self._signals: list[int] = []
        self._socket: socket.socket | None = None
        self._metrics_dir: str | None = None

    # --- life cycle ---------------------------------------------------------------

    def run(self) -> int:
        from gateway.server.triton_launcher import prepare_artifacts
        prepare_artifacts(self.settings)  # once here: the workers find them ready and do not race to write them
        self._metrics_dir = tempfile.mkdtemp(prefix="electron-metrics-")
        os.environ[METRICS_DIR_ENV] = self._metrics_dir  # the spawned workers read it when they import
        # bound, not listening: the port is this pool's (a busy port fails here, clearly), while
        # connections go only to the workers' listening sockets
        self._socket = bind_socket(self.settings.gateway_host, self.settings.gateway_port, listen=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: self._signals.append(signum))
        try:
            for slot in self.slots:
                self._start(slot)
            log.info("OpenAI API on http://%s:%d/v1 (%d gateway workers)", self.settings.gateway_host,
                     self.settings.gateway_port, len(self.slots))
            while not self._signals:
                self._restart_dead()
                time.sleep(self.check_s)
            return self._stop()
        finally:
            self._kill_all()
            self._socket.close()
            os.environ.pop(METRICS_DIR_ENV, None)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _start(self, slot: _Slot) -> None:
        slot.process = self._context.Process(
            target=worker_main, name=f"electron-gateway-{slot.index}",
            args=(self.settings, slot.index, os.getpid()))
        slot.process.start()
        slot.started_at = time.monotonic()

    def _restart_dead(self) -> None:
        for slot in self.slots:
            process = slot.process
            if process is not None:
                if process.is_alive():
                    continue
                process.join()
                self._forget_metrics(process.pid)
                log.error("gateway worker %d (pid %d) exited with %s", slot.index, process.pid, process.exitcode)
                slot.process = None
            # a worker that cannot start is started again at most once a RESTART_MIN_INTERVAL_S, not in a spin
            if time.monotonic() - slot.started_at >= RESTART_MIN_INTERVAL_S:
                slot.restarts += 1
                log.warning("starting gateway worker %d again (restart %d)", slot.index, slot.restarts)
                self._start(slot)

    def _forget_metrics(self, pid: int) -> None:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid, self._metrics_dir)  # its live gauges leave the sums

    def _stop(self) -> int:
        """Every signal to the parent goes to the workers as SIGTERM: the first drains, a second stops."""
        forwarded = 0
        deadline = time.monotonic() + self.settings.drain_grace_s + 15
        log.info("stopping %d gateway workers (signal %d)", len(self.slots), self._signals[0])
        while time.monotonic() < deadline:
            while forwarded < len(self._signals):
                forwarded += 1
                for slot in self.slots:
                    if slot.process is not None and slot.process.is_alive():
                        os.kill(slot.process.pid, signal.SIGTERM)
            alive = [s for s in self.slots if s.process is not None and s.process.is_alive()]
            if not alive:
                break
            time.sleep(0.05)
        codes = []
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(timeout=0.1)
                codes.append(slot.process.exitcode)
        log.info("gateway workers stopped (exit codes %s)", codes)
        return 0 if all(code == 0 for code in codes) else 1

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join(5)
