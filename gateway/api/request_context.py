"""The request id of the request being served, carried into every log line.

The id lives in a context variable set by the request-id middleware; the
logging filter installed by ``configure_logging`` copies it into each record, so
``%(request_id)s`` works in any format and every module just uses ``logging``.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
current_request_id: ContextVar[str] = ContextVar("request_id", default="-")


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def accept_request_id(sent: str | None) -> str:
    """The client's id when well-formed (letters, digits, ``._:-``, at most 128
    characters), otherwise a new one."""
    if sent and _WELL_FORMED.match(sent):
        return sent
    return new_request_id()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Root logging with the request id in every line (handlers' filters apply
    to records of every logger, so uvicorn's lines carry it too); ``json``: one
    JSON object per line (``gateway.api.request_log.JsonFormatter``)."""
    from gateway.api.request_log import JsonFormatter

    if log_format not in ("text", "json"):
        raise ValueError(f"ELECTRON_LOG_FORMAT={log_format!r} is not text or json")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RequestIdMiddleware:
    """Pure ASGI middleware (streaming-safe): picks the request id, sets it for
    logging, and adds ``X-Request-Id`` to the response headers."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope.get("headers", []):
            if name == REQUEST_ID_HEADER.encode():
                sent = value.decode("latin-1")
                break
        request_id = accept_request_id(sent)
        scope.setdefault("state", {})["request_id"] = request_id
        token = current_request_id.set(request_id)

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
