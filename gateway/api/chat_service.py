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
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.accounts.bill import Bill
from gateway.accounts.ledger import UsageRow
from gateway.accounts.service import AccountService, Outcome
from gateway.api import sse
from gateway.api.client_io import ClientGone, read_body, until_disconnect
from gateway.api.sse_stream import SettlingStreamingResponse, sse_events
from gateway.chat.chat_request import ChatLimits, PreparedChat, prepare_chat
from gateway.chat.wire_request import parse_body
from gateway.chat.choice_stream import Delta
from gateway.chat.completion import CompletionRun
from gateway.chat.timeline import Timeline
from gateway.chat.served_model import ModelView
from gateway.engine.protocol import Engine
from gateway.errors import (EngineUnavailableError, ServerOverloadedError, ShuttingDownError)
from gateway.api.request_context import current_request_id
from gateway.api.request_log import summary
from gateway.api.responses import ResponseShaper
from gateway.settings import Settings
from gateway.tools.guided_request import GUIDE_BACKENDS

log = logging.getLogger(__name__)
CLIENT_GONE = 499  # nginx's code for "client closed the request"; nobody reads it


# Request bodies larger than this are parsed, rendered and tokenized on a worker thread
# (one at a time): tokenizing a long prompt takes hundreds of milliseconds, during which
# the event loop would relay no token of any other stream.
PREPARE_OFF_LOOP_BYTES = 32 * 1024


class ChatService:
    def __init__(self, settings: Settings, engine: Engine, model: ModelView, accounts: AccountService) -> None:
        self.in_flight = 0  # admitted, not yet settled
        self.draining = False  # SIGTERM: new requests get 503
        self.cut_off = False  # the drain's grace period is over: running streams end now
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

    async def _prepare(self, body: bytes, timeline: Timeline) -> PreparedChat:
        """Parse (400 before anything else), resolve the limits, render and tokenize;
        a large body off the event loop."""
        if len(body) <= PREPARE_OFF_LOOP_BYTES:
            chat = parse_body(body)
            timeline.mark("parse")
            return prepare_chat(chat, await self.limits(), self._model.template, self._model.codec, timeline)
        loop = asyncio.get_running_loop()
        log.debug("preparing a %d-byte request off the event loop", len(body))
        chat = await loop.run_in_executor(self._prepare_pool, contextvars.copy_context().run, parse_body, body)
        timeline.mark("parse")
        limits = await self.limits()
        return await loop.run_in_executor(self._prepare_pool, contextvars.copy_context().run, prepare_chat,
                                          chat, limits, self._model.template, self._model.codec, timeline)

    async def complete(self, request: Request) -> Response:
        """Key (401), body and prompt (4xx, no engine work), caps (429), then the engine."""
        if self.draining:
            raise ShuttingDownError()
        timeline = Timeline()
        caller = await self._accounts.authenticate(request.headers.get("authorization"))
        timeline.mark("auth")
        fields = summary(request)
        fields.update(account=caller.account_id, key_id=caller.key_id)
        try:
            body = await read_body(request, self._settings.max_body_bytes)
        except ClientGone:
            log.info("client disconnected while sending the request body")
            return Response(status_code=CLIENT_GONE)
        timeline.mark("read_body")
        prepared = await self._prepare(body, timeline)
        admission = await self._accounts.admit(caller)
        timeline.mark("admit")
        self.in_flight += 1
        request_id = current_request_id.get()
        bill = Bill(self._accounts, caller, admission, request_id, self._settings.served_model,
                    on_settle=lambda outcome, row: self._settled(fields, bill, outcome, row, request_id))
        bill.prepared(prepared.prompt_tokens)
        try:
            return await self._respond(request, prepared, bill, self._accounts.headers(admission), timeline)
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

    def _settled(self, fields: dict, bill: Bill, outcome: Outcome, row: UsageRow, request_id: str) -> None:
        """The request's slot is free and its row recorded: what its log line says of it."""
        self.in_flight -= 1
        run: CompletionRun | None = bill.run  # the run _respond started
        fields.update(status=outcome.status, cost_usd=row.cost_pico / 1e12, _gaps=run.gaps if run else None,
                      prompt_tokens=outcome.prompt_tokens,
                      cached_tokens=outcome.cached_tokens, completion_tokens=outcome.completion_tokens,
                      ttft_ms=None if outcome.ttft_ms is None else round(outcome.ttft_ms, 1),
                      first_text_ms=None if run is None or run.first_text_ms is None else round(run.first_text_ms, 1),
                      engine_ttft_ms=None if run is None or run.engine_ttft_ms is None
                      else round(run.engine_ttft_ms, 1))
        if bill.error_code:
            fields["error_code"] = bill.error_code
        if run is not None:
            run.timeline.log(request_id)

    async def _respond(self, request: Request, prepared, bill: Bill, headers: dict[str, str],
                       timeline: Timeline) -> Response:
        request_id = current_request_id.get()
        run = CompletionRun(self._engine, prepared, request_id, self._model.codec.token_bytes,
                            self._tokens_per_block, timeline)
        bill.running(run)
        shaper = ResponseShaper(self._settings.served_model, self._model.system_fingerprint,
                                include_usage=prepared.include_usage, want_logprobs=prepared.logprobs)
        deltas = run.deltas()
        if not prepared.stream:
            collected = await until_disconnect(request, _collect(deltas))
            body = shaper.completion(collected, run).model_dump(exclude_unset=True)
            bill.settle()
            return JSONResponse(body, headers=headers)
        first = await until_disconnect(request, deltas.__anext__())
        events = sse_events(shaper, run, first, deltas, bill, lambda: self.cut_off)
        return SettlingStreamingResponse(events, bill, deltas, slow_client_s=self._settings.slow_client_timeout_s,
                                         media_type=sse.MEDIA_TYPE, headers={**sse.HEADERS, **headers})


async def _collect(deltas: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in deltas]
