"""Drives an ASGI app by hand, to play a client that hangs up mid-response."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class Exchange:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body_messages: list[bytes] = field(default_factory=list)


async def post_and_hang_up(app, path: str, body: dict, hang_up_after_body_messages: int,
                           timeout_s: float = 5.0, headers: dict[str, str] | None = None,
                           hang_up_after_s: float = 0.0) -> Exchange:
    """POST ``body``; after that many response body messages (0: before the
    response starts; then ``hang_up_after_s`` after the request), every further
    ``receive`` answers ``http.disconnect``."""
    exchange = Exchange()
    gone = asyncio.Event()
    if hang_up_after_body_messages == 0 and hang_up_after_s > 0:
        asyncio.get_running_loop().call_later(hang_up_after_s, gone.set)
    elif hang_up_after_body_messages == 0:
        gone.set()
    sent_request = False

    async def receive():
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            if gone.is_set():
                raise OSError("client gone")  # what a server's send does on a closed socket
            exchange.body_messages.append(message.get("body", b""))
            if len(exchange.body_messages) >= hang_up_after_body_messages:
                gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
                                          *[(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]],
             "client": ("127.0.0.1", 1), "server": ("gateway", 80)}
    try:
        await asyncio.wait_for(app(scope, receive, send), timeout_s)
    except OSError:
        pass
    return exchange
