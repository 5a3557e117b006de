"""The client's side of a request: its body, read within a limit, and its hang-up."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from starlette.requests import ClientDisconnect, Request

from gateway.errors import RequestTooLargeError

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response started."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and task.cancelled():
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


async def read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestTooLargeError(f"The request body is larger than {limit} bytes.")
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(body)
