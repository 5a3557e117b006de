"""``electron-serve``: the whole CPU stack in one command.

Starts ``tritonserver`` with the model under a supervisor that restarts it
(unless ``ELECTRON_START_TRITON=false``, for a Triton that runs elsewhere), then
the gateway on uvicorn at ``ELECTRON_GATEWAY_HOST:ELECTRON_GATEWAY_PORT`` (one
process, or a pool of ``ELECTRON_GATEWAY_WORKERS``: ``gateway.server.workers``); on
SIGINT/SIGTERM the gateway drains (``gateway.server.drain``), then Triton stops.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.accounts.service import ProtectedModeError, StartupError, check_accounts_at_start
from gateway.server import llama_cpu_variant
from gateway.server.build_app import build_app
from gateway.api.request_context import configure_logging
from gateway.settings import Settings, env_name
from gateway.server.drain import DrainingServer, uvicorn_config
from gateway.server.workers import WorkerPool
from gateway.server.triton_supervisor import TritonSupervisor

log = logging.getLogger(__name__)


def claim_local_limits(settings: Settings):
    """Without Redis the caps live in this process: a second gateway on the same data
    directory would double them, so it is refused. Returns the lock (held until exit)."""
    path = Path(settings.data_dir) / "local-limits.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ProtectedModeError(
            f"Another gateway process keeps its limits in {settings.data_dir} already. Per-account caps would "
            "multiply with a second process: set ELECTRON_REDIS_URL on every gateway to share them, "
            "or give this one its own ELECTRON_DATA_DIR and database.") from None
    return lock


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """No options of its own: every setting is an ``ELECTRON_*`` environment variable.
    ``--help`` says so instead of starting the stack; anything else exits 2."""
    parser = argparse.ArgumentParser(
        prog="electron-serve",
        description="Serve the embedded CPU stack: tritonserver under a supervisor, then the OpenAI "
                    f"gateway (http://{Settings.gateway_host}:{Settings.gateway_port}/v1 by default). "
                    "Ctrl-C or SIGTERM drains, then stops.",
        epilog="Configured by ELECTRON_* environment variables only (docs/configuration.md), "
               "e.g. ELECTRON_GATEWAY_PORT=9000 ELECTRON_KV_LAYOUT=streams.")
    return parser.parse_args(argv)


def refuse_to_start(message: str, on_start_error: str) -> int:
    """A configuration error at start: logged once, as one record; then exit code 2, or with
    ``ELECTRON_ON_START_ERROR=wait`` (the image) wait for SIGTERM or SIGINT first, so that a
    container's restart policy shows the cause once instead of looping over it."""
    log.error("%s", message)
    if on_start_error == "wait":
        log.error("not serving: fix the above and restart (waiting for SIGTERM)")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 2


def main(argv: list[str] | None = None) -> int:
    parse_args(argv)
    try:
        settings = Settings.from_env()  # checks itself: a ValueError names the variable
    except ValueError as exc:
        logging.basicConfig()
        return refuse_to_start(str(exc), os.environ.get(env_name("on_start_error"), "exit"))
    configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.start_triton:  # the embedded engine runs here: before any process that loads llama.cpp starts
            llama_cpu_variant.activate()
    except (OSError, ValueError) as exc:
        return refuse_to_start(f"cannot choose llama.cpp's CPU backend from "
                               f"{os.environ.get(llama_cpu_variant.VARIANTS_ENV)}: {exc}", settings.on_start_error)
    try:
        limits_lock = None if settings.redis_url else claim_local_limits(settings)
        asyncio.run(check_accounts_at_start(settings))
    except StartupError as exc:
        return refuse_to_start(str(exc), settings.on_start_error)
    # While Triton starts, SIGTERM interrupts like Ctrl-C (start_triton cleans up).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        triton = TritonSupervisor(settings) if settings.start_triton else None
        if triton is not None:
            triton.start()
    except KeyboardInterrupt:
        return 0
    if settings.gateway_workers > 1:
        try:
            return WorkerPool(settings).run()
        finally:
            if triton is not None:
                triton.stop()
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal once drained:
    # these handlers take it then, so that Triton is stopped and the exit is clean.
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        app = build_app(settings)
        log.info("OpenAI API on http://%s:%d/v1", settings.gateway_host, settings.gateway_port)
        DrainingServer(uvicorn_config(app, settings), app.state.gateway.chat, settings.drain_grace_s).run()
        log.info("gateway stopped (signal %s)", received[-1] if received else "none")
    finally:
        if triton is not None:
            triton.stop()
        if limits_lock is not None:
            limits_lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
