"""Graceful shutdown for ``electron-serve``: drain, then stop.

On the first SIGTERM or SIGINT, ``DrainingServer`` (uvicorn's server) does not
stop at once: readiness turns to 503 and new requests get 503 with
``retry-after`` (a load balancer moves callers elsewhere), while admitted
requests run on for up to ``ELECTRON_DRAIN_GRACE_S`` (30 s). Streams still
running then end with an error event (``server_shutting_down``) and
``[DONE]``, billed as ``cancelled`` for what was generated; then uvicorn stops,
the app's shutdown writes the remaining usage rows, and the process exits 0. A
second signal stops at once. A worker of a pool (``gateway.server.workers``)
ignores SIGINT: its parent decides and passes SIGTERM on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvicorn

log = logging.getLogger(__name__)


def uvicorn_config(app, settings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.gateway_host, port=settings.gateway_port, loop="uvloop",
                          http="httptools", log_config=None, access_log=False, timeout_graceful_shutdown=5)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, chat, grace_s: float, ignore_sigint: bool = False) -> None:
        super().__init__(config)
        self._ignore_sigint = ignore_sigint
        self._chat = chat
        self._grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGINT and self._ignore_sigint:
            return
        if self._drain is not None or self._loop is None:  # a second signal, or not serving yet
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and self.should_exit:
                self.force_exit = True
            return
        self._captured_signals.append(sig)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = self._loop.create_task(self.drain())

    async def drain(self) -> None:
        chat = self._chat
        chat.draining = True
        log.warning("shutting down: not ready, new requests get 503; %d in flight get up to %.0f s",
                    chat.in_flight, self._grace_s)
        deadline = time.monotonic() + self._grace_s
        while chat.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if chat.in_flight:
            log.warning("grace period over: cutting off %d running requests", chat.in_flight)
            chat.cut_off = True
            cut = time.monotonic() + 2.0  # their last event and [DONE] go out
            while chat.in_flight and time.monotonic() < cut:
                await asyncio.sleep(0.05)
        log.info("drained (%d still in flight); stopping", chat.in_flight)
        self.should_exit = True
