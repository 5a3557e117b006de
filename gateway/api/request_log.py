"""One log line per request, at its end: what an operator greps for.

``RequestLogMiddleware`` (pure ASGI, streaming-safe) logs, when the response is
done (sent, failed or abandoned by the client): method, path, status, duration,
and what the request's handlers put in ``scope["state"]["summary"]``: account,
key id, status of the bill, finish reason, tokens, cached tokens, time to first
token. Never prompt or completion text. With ``ELECTRON_LOG_FORMAT=json`` each
line is one JSON object and these fields are keys of it.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("gateway.request")
SUMMARY = "summary"
QUIET_PATHS = ("/health", "/ready", "/metrics")  # probes and scrapes: logged at DEBUG when they succeed


def summary(scope_or_request) -> dict:
    """The request's summary dict, for handlers to fill (a ``Request`` or an ASGI scope)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    return scope.setdefault("state", {}).setdefault(SUMMARY, {})


class RequestLogMiddleware:
    """``on_done(scope, line)``: called with the line's fields when a request ends (metrics).
    Fields whose name starts with ``_`` are for ``on_done`` only, never logged."""

    def __init__(self, app, on_done=None) -> None:
        self.app = app
        self.on_done = on_done

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        fields = summary(scope)
        status = {"code": None}

        async def send_recording(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_recording)
        except Exception:
            failed = True  # rendered as a 500 by Starlette's outermost layer
            raise
        finally:
            code = status["code"] or (500 if failed else 499)  # no response started: the client went away
            line = {"request_id": scope["state"].get("request_id"), "method": scope["method"], "path": scope["path"],
                    "http_status": code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1), **fields}
            logged = {k: v for k, v in line.items() if not k.startswith("_")}
            level = logging.DEBUG if scope["path"] in QUIET_PATHS and code < 400 else logging.INFO
            log.log(level, " ".join(f"{k}={v}" for k, v in logged.items() if v is not None and k != "request_id"),
                     extra={"fields": logged})
            if self.on_done is not None:
                try:
                    self.on_done(scope, line)
                except Exception:  # noqa: BLE001 - metrics never break a response
                    log.exception("recording metrics failed")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, and the
    record's ``fields`` (the request line's) as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name,
                 "request_id": getattr(record, "request_id", None), "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
