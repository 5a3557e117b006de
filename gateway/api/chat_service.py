"""``POST /v1/chat/completions``: key, parse, prepare, admit, run on the engine, respond.

The key is checked first (401), then the body and prompt (4xx, no engine work),
then the account's caps (429). An admitted request has a ``Bill`` that settles
exactly once however it ends (slot released, usage row recorded): a finished
response, an error, a client gone before or during the stream, a shutdown.

Errors before the engine's first token (bad input, engine unreachable, a
failed engine request) become an HTTP error with the envelope: a stream sends
its headers with its first chunk, at the first token, which costs no time to
first token. An error after that is one error event, then ``[DONE]``. When the
client goes away, the engine request is cancelled: while waiting for the first
delta or a non-streaming body by watching for ``http.disconnect``, mid-stream by
Starlette cancelling the response.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Awaitable, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.accounts.limits import Admission
from gateway.accounts.service import AccountService, Caller, Outcome
from gateway.api import sse
from gateway.chat.chat_request import ChatLimits, PreparedChat, parse_body, prepare_chat
from gateway.chat.choice_stream import Delta
from gateway.chat.completion import CompletionRun
from gateway.chat.served_model import ModelView
from gateway.engine.protocol import Engine
from gateway.errors import (APIError, EngineError, EngineUnavailableError, RequestTooLargeError,
                               ServerOverloadedError, ShuttingDownError)
from gateway.api.request_context import current_request_id
from gateway.api.request_log import summary
from gateway.api.responses import ResponseShaper
from gateway.openai_schema import ErrorResponse
from gateway.settings import Settings
from gateway.tools.guided_request import GUIDE_BACKENDS
from gateway.tools.tool_dialect import dialects

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENT_GONE = 499  # nginx's code for "client closed the request"; nobody reads it


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


class Bill:
    """Settles one admitted request exactly once: releases its concurrency slot and
    records its usage row, whichever way it ends. ``settle`` does no I/O, so it
    also completes inside a cancelled task. The row's prompt and cached tokens are
    what the engine took in for the request (``CompletionRun.engine_prompt_tokens``):
    the whole prompt once it produced an output, as far as its prefill got before."""

    def __init__(self, accounts: AccountService, caller: Caller, admission: Admission, request_id: str,
                 model: str, summary: dict, on_settle=None) -> None:
        self._accounts = accounts
        self._summary = summary
        self._on_settle = on_settle
        self._caller = caller
        self._admission = admission
        self._request_id = request_id
        self._model = model
        self._started_at = time.time()
        self.run: CompletionRun | None = None
        self.prompt_tokens = 0
        self.failed = False
        self.error_code: str | None = None  # of an error event sent mid-stream
        self.cut_off = False  # ended by the shutdown's grace period

    def settle(self, status: str | None = None) -> None:
        run = self.run
        if status is None:
            status = "error" if self.failed else (run.finish_reason if run is not None and run.completed
                                                  else "cancelled")
        outcome = Outcome(
            status=status,
            prompt_tokens=run.engine_prompt_tokens if run else self.prompt_tokens,
            cached_tokens=run.cached_tokens if run else 0,
            completion_tokens=run.completion_tokens if run else 0,
            engine_produced=bool(run and run.engine_outputs),
            ttft_ms=run.first_token_ms if run else None,
        )
        if self._admission.released:
            return
        row = self._accounts.settle(self._caller, self._admission, self._request_id, self._model, outcome,
                                    self._started_at)
        if self._on_settle is not None:
            self._on_settle()
        self._summary.update(status=outcome.status, cost_usd=row.cost_pico / 1e12, _gaps=run.gaps if run else None,
                             prompt_tokens=outcome.prompt_tokens,
                             cached_tokens=outcome.cached_tokens, completion_tokens=outcome.completion_tokens,
                             ttft_ms=None if outcome.ttft_ms is None else round(outcome.ttft_ms, 1),
                             first_text_ms=None if run is None or run.first_text_ms is None
                             else round(run.first_text_ms, 1))
        if self.error_code:
            self._summary["error_code"] = self.error_code


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


# Request bodies larger than this are parsed, rendered and tokenized on a worker thread
# (one at a time): tokenizing a long prompt takes hundreds of milliseconds, during which
# the event loop would relay no token of any other stream.
PREPARE_OFF_LOOP_BYTES = 32 * 1024


class ChatService:
    def __init__(self, settings: Settings, engine: Engine, model: ModelView, accounts: AccountService) -> None:
        self.in_flight = 0  # admitted, not yet settled
        self.draining = False  # SIGTERM: new requests get 503
        self.cut_off = False  # the drain's grace period is over: running streams end now
        if settings.tool_dialect not in dialects():
            raise ValueError(f"ELECTRON_TOOL_DIALECT={settings.tool_dialect!r} is not one of {', '.join(dialects())}")
        self._settings = settings
        self._engine = engine
        self._model = model
        self._accounts = accounts
        self._limits: ChatLimits | None = None
        self._tokens_per_block = 0
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-large")

    async def limits(self) -> ChatLimits:
        """Resolved on first use (Triton may start after the gateway): the context
        window is the setting, else the engine's ``max_sequence_length``, else the
        model's training context."""
        if self._limits is None:
            info = await self._engine.info()
            if info.guide_backend not in GUIDE_BACKENDS:
                raise EngineUnavailableError(
                    f"The model '{self._settings.triton_model}' declares guided_decoding_backend "
                    f"'{info.guide_backend}', which this gateway cannot write guides for "
                    f"({', '.join(GUIDE_BACKENDS)}).")
            artifacts = self._model.artifacts
            self._tokens_per_block = info.tokens_per_block
            self._limits = ChatLimits(
                served_model=self._settings.served_model,
                context_window=(self._settings.context_window or info.max_sequence_length
                                or artifacts.context_length),
                vocab_size=artifacts.vocab_size,
                max_messages=self._settings.max_messages,
                end_id=artifacts.eos_token_id,
                pad_id=artifacts.pad_token_id,
                filler_phrases=self._settings.filler_phrases,
                tool_dialect=self._settings.tool_dialect,
                playback_chars_per_s=self._settings.playback_chars_per_s,
                guide_backend=info.guide_backend,
            )
            log.info("model limits: %s, tokens_per_block=%d", self._limits, self._tokens_per_block)
        return self._limits

    async def _prepare(self, body: bytes) -> PreparedChat:
        """Parse (400 before anything else), resolve the limits, render and tokenize;
        a large body off the event loop."""
        if len(body) <= PREPARE_OFF_LOOP_BYTES:
            chat = parse_body(body)
            return prepare_chat(chat, await self.limits(), self._model.template, self._model.codec)
        loop = asyncio.get_running_loop()
        log.debug("preparing a %d-byte request off the event loop", len(body))
        chat = await loop.run_in_executor(self._prepare_pool, contextvars.copy_context().run, parse_body, body)
        limits = await self.limits()
        return await loop.run_in_executor(self._prepare_pool, contextvars.copy_context().run, prepare_chat,
                                          chat, limits, self._model.template, self._model.codec)

    async def complete(self, request: Request) -> Response:
        """Key (401), body and prompt (4xx, no engine work), caps (429), then the engine."""
        if self.draining:
            raise ShuttingDownError()
        caller = await self._accounts.authenticate(request.headers.get("authorization"))
        fields = summary(request)
        fields.update(account=caller.account_id, key_id=caller.key_id)
        try:
            body = await read_body(request, self._settings.max_body_bytes)
        except ClientGone:
            log.info("client disconnected while sending the request body")
            return Response(status_code=CLIENT_GONE)
        prepared = await self._prepare(body)
        admission = await self._accounts.admit(caller)
        self.in_flight += 1
        bill = Bill(self._accounts, caller, admission, current_request_id.get(), self._settings.served_model, fields,
                    on_settle=self._settled)
        bill.prompt_tokens = prepared.prompt_tokens
        try:
            return await self._respond(request, prepared, bill, self._accounts.headers(admission))
        except ClientGone:
            log.info("client disconnected before the response started")
            bill.settle("cancelled")
            return Response(status_code=CLIENT_GONE)
        except ServerOverloadedError:  # refused by the engine before any work: billed nothing
            bill.settle("overloaded")
            raise
        except Exception:
            bill.settle("error")
            raise
        except BaseException:  # cancelled: server shutdown
            bill.settle("cancelled")
            raise

    def _settled(self) -> None:
        self.in_flight -= 1

    async def _respond(self, request: Request, prepared, bill: Bill, headers: dict[str, str]) -> Response:
        request_id = current_request_id.get()
        run = CompletionRun(self._engine, prepared, request_id, self._model.codec.token_bytes,
                            self._tokens_per_block)
        bill.run = run
        shaper = ResponseShaper(self._settings.served_model, self._model.system_fingerprint,
                                include_usage=prepared.include_usage, want_logprobs=prepared.logprobs)
        deltas = run.deltas()
        if not prepared.stream:
            collected = await until_disconnect(request, _collect(deltas))
            body = shaper.completion(collected, run).model_dump(exclude_unset=True)
            bill.settle()
            return JSONResponse(body, headers=headers)
        first = await until_disconnect(request, deltas.__anext__())
        events = _events(shaper, run, first, deltas, bill, lambda: self.cut_off)
        return SettlingStreamingResponse(events, bill, deltas, slow_client_s=self._settings.slow_client_timeout_s,
                                         media_type=sse.MEDIA_TYPE, headers={**sse.HEADERS, **headers})


async def _collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]


async def _events(shaper: ResponseShaper, run: CompletionRun, first: Delta,
                  deltas: AsyncIterator[Delta], bill: Bill, cut_off) -> AsyncIterator[bytes]:
    try:
        yield sse.event(shaper.role_chunk()) + b"".join(sse.event(c) for c in shaper.stream_chunks(first))
        async for delta in deltas:
            if cut_off():
                bill.cut_off = True
                raise ShuttingDownError("The server is shutting down: the response was cut off.")
            fast = shaper.plain_content_json(delta)
            if fast is not None:
                yield sse.frame(fast)
                continue
            chunks = shaper.stream_chunks(delta)
            if chunks:
                yield b"".join(sse.event(c) for c in chunks)
        if shaper.include_usage:
            yield sse.event(shaper.usage_chunk(run))
    except APIError as exc:
        log.warning("error after the stream started: %s", exc.message)
        bill.failed = not bill.cut_off  # cut off by a shutdown: cancelled, not an engine error
        bill.error_code = exc.code
        yield _error_event(exc)
    except Exception:  # noqa: BLE001 - the stream must still end with an error event
        log.exception("unexpected error in the stream")
        bill.failed = True
        bill.error_code = EngineError.code
        yield _error_event(EngineError("The server failed while streaming the response."))
    finally:
        await deltas.aclose()
    yield sse.DONE


def _error_event(exc: APIError) -> bytes:
    return sse.event(ErrorResponse.model_validate(exc.envelope(current_request_id.get())))
