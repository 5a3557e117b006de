"""The streamed response: Server-Sent Events of one completion, and the response that
settles its bill when it ends."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from starlette.responses import StreamingResponse

from gateway.api import sse
from gateway.accounts.bill import Bill
from gateway.api.request_context import current_request_id
from gateway.api.responses import ResponseShaper
from gateway.chat.choice_stream import Delta
from gateway.chat.completion import CompletionRun
from gateway.errors import APIError, EngineError, ShuttingDownError
from gateway.openai_schema import ErrorResponse

log = logging.getLogger(__name__)


class SettlingStreamingResponse(StreamingResponse):
    """A stream that settles its bill when the response ends, however it ends
    (finished, failed, client gone before or during the body, server shutdown),
    then closes its generators in a task of their own.

    A client that stops reading: once its socket buffers are full, the server's
    ``send`` waits; the stream then stops pulling from the engine, so nothing
    piles up in the gateway. If one ``send`` has waited ``slow_client_s``, the
    client is treated as gone: the response task is cancelled (the engine request
    with it) and billed as ``cancelled`` for what was generated. Checked by a
    timer once a second, nothing per chunk but two clock reads."""

    def __init__(self, content, bill: Bill, deltas: AsyncIterator[Delta], slow_client_s: float = 0.0,
                 **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._bill = bill
        self._generators = (content, deltas)
        self._slow_client_s = slow_client_s
        self._sending_since: float | None = None
        self._too_slow = False

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        timer = None

        async def timed_send(message) -> None:
            self._sending_since = loop.time()
            await send(message)
            self._sending_since = None

        def check() -> None:
            nonlocal timer
            since = self._sending_since
            if since is not None and loop.time() - since >= self._slow_client_s:
                log.warning("client has not read its stream for %.0f s: treated as gone", loop.time() - since)
                self._too_slow = True
                task.cancel()
                return
            timer = loop.call_later(min(1.0, self._slow_client_s / 2), check)

        if self._slow_client_s > 0:
            timer = loop.call_later(min(1.0, self._slow_client_s / 2), check)
        try:
            await super().__call__(scope, receive, timed_send if self._slow_client_s > 0 else send)
        except asyncio.CancelledError:
            if not self._too_slow:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
        finally:
            if timer is not None:
                timer.cancel()
            self._bill.settle()
            _close_later(*self._generators)


_closing: set[asyncio.Task] = set()


def _close_later(*generators) -> None:
    async def close() -> None:
        for generator in generators:
            try:
                await generator.aclose()
            except Exception:  # noqa: BLE001 - already closed or running: nothing left to release
                pass

    task = asyncio.get_running_loop().create_task(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def sse_events(shaper: ResponseShaper, run: CompletionRun, first: Delta,
                  deltas: AsyncIterator[Delta], bill: Bill, cut_off) -> AsyncIterator[bytes]:
    timeline = run.timeline
    try:
        yield sse.event(shaper.role_chunk()) + b"".join(sse.event(c) for c in shaper.stream_chunks(first))
        timeline.written()  # resumed once the chunk was sent: the first content's, if it had text
        async for delta in deltas:
            if cut_off():
                bill.cut_off_by_shutdown()
                raise ShuttingDownError("The server is shutting down: the response was cut off.")
            fast = shaper.plain_content_json(delta)
            if fast is not None:
                yield sse.frame(fast)
                timeline.written()
                continue
            chunks = shaper.stream_chunks(delta)
            if chunks:
                yield b"".join(sse.event(c) for c in chunks)
                timeline.written()
        if shaper.include_usage:
            yield sse.event(shaper.usage_chunk(run))
    except APIError as exc:
        log.warning("error after the stream started: %s", exc.message)
        bill.failed_midstream(exc.code)
        yield _error_event(exc)
    except Exception:  # noqa: BLE001 - the stream must still end with an error event
        log.exception("unexpected error in the stream")
        bill.crashed_midstream(EngineError.code)
        yield _error_event(EngineError("The server failed while streaming the response."))
    finally:
        await deltas.aclose()
    yield sse.DONE


def _error_event(exc: APIError) -> bytes:
    return sse.event(ErrorResponse.model_validate(exc.envelope(current_request_id.get())))
