"""``electron-serve``: the whole CPU stack in one command.

Starts ``tritonserver`` with the model (unless ``ELECTRON_START_TRITON=false``,
for a Triton that runs elsewhere), then the gateway on uvicorn at
``ELECTRON_GATEWAY_HOST:ELECTRON_GATEWAY_PORT``; on SIGINT/SIGTERM uvicorn
drains, then Triton stops.
"""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from gateway.api.app import build_app
from gateway.api.request_context import configure_logging
from gateway.settings import Settings
from gateway.server.triton_launcher import start_triton, stop_triton

log = logging.getLogger(__name__)


def main() -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    # While Triton starts, SIGTERM interrupts like Ctrl-C (start_triton cleans up).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        triton = start_triton(settings) if settings.start_triton else None
    except KeyboardInterrupt:
        return 0
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal once drained:
    # these handlers take it then, so that Triton is stopped and the exit is clean.
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        config = uvicorn.Config(build_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                                loop="uvloop", http="httptools", log_config=None, access_log=True,
                                timeout_graceful_shutdown=5)
        log.info("OpenAI API on http://%s:%d/v1", settings.gateway_host, settings.gateway_port)
        uvicorn.Server(config).run()
        log.info("gateway stopped (signal %s)", received[-1] if received else "none")
    finally:
        if triton is not None:
            stop_triton(triton)
    return 0


if __name__ == "__main__":
    sys.exit(main())
