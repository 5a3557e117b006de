"""The Starlette application: routes, error rendering, request ids, lifespan
(the endpoints themselves are in ``endpoints``).

``create_app(settings, engine, model)`` wires the pieces (``gateway.server.build_app``
does so for the real stack: Triton engine, artifacts on disk). Every error is an
``APIError`` (or is made one) and is rendered once, into OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.accounts.service import AccountService
from gateway.api import endpoints
from gateway.api.chat_service import ChatService
from gateway.api.endpoints import AppState
from gateway.api.metrics import LIVE_REFRESH_S, GatewayMetrics
from gateway.api.openapi import openapi_document
from gateway.api.request_context import RequestIdMiddleware, current_request_id
from gateway.api.request_log import RequestLogMiddleware, summary
from gateway.chat.served_model import ModelView, package_version
from gateway.engine.protocol import Engine
from gateway.errors import APIError, InvalidRequestError, MethodNotAllowedError, NotFoundError
from gateway.openai_schema import Model
from gateway.settings import Settings

log = logging.getLogger(__name__)
OWNER = "electron"


ROUTES = {path: path for path in ("/v1/chat/completions", "/v1/models", "/v1/organization/usage/completions",
                                   "/v1/organization/costs", "/health", "/ready", "/metrics", "/openapi.json")}


def _route_of(path: str) -> str:
    """A bounded label for metrics: the route's template, or ``other``."""
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


def _error_response(exc: APIError, request: Request | None = None) -> JSONResponse:
    """The envelope; the request id from the scope when the error is rendered outside the
    request-id middleware (Starlette renders unexpected errors in its outermost layer)."""
    request_id = current_request_id.get()
    if request_id == "-" and request is not None:
        request_id = request.scope.get("state", {}).get("request_id", "-")
    return JSONResponse(exc.envelope(request_id), status_code=exc.status, headers=exc.headers)


async def _api_error(request: Request, exc: APIError) -> Response:
    log.info("%d %s: %s", exc.status, exc.type, exc.message)
    fields = summary(request)
    fields["error_code"] = exc.code or exc.type
    if getattr(exc, "cap", None):
        fields["cap"] = exc.cap
    return _error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return _error_response(NotFoundError(f"No route for {request.method} {request.url.path}."))
    if exc.status_code == 405:
        return _error_response(MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}."))
    return _error_response(InvalidRequestError(str(exc.detail)))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error")
    return _error_response(APIError("The server had an error while processing your request."), request)


async def _refresh_live_metrics(metrics: GatewayMetrics) -> None:
    while True:
        metrics.refresh()
        await asyncio.sleep(LIVE_REFRESH_S)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    state: AppState = app.state.gateway
    await state.accounts.start()
    loop = asyncio.get_running_loop()
    refresher = loop.create_task(_refresh_live_metrics(state.metrics)) if state.metrics.shared else None
    try:
        yield
    finally:
        if refresher is not None:
            refresher.cancel()
        await state.accounts.close()
        await state.engine.close()
        state.metrics.refresh()


def _request_done(metrics: GatewayMetrics, served_model: str, scope, line: dict) -> None:
    metrics.request_done(ROUTES.get(scope["path"], _route_of(scope["path"])), line, served_model)


def create_app(settings: Settings, engine: Engine, model: ModelView,
               accounts: AccountService | None = None) -> Starlette:
    accounts = accounts or AccountService(settings)
    chat = ChatService(settings, engine, model, accounts)
    metrics = GatewayMetrics()
    metrics.live(metrics.in_flight, lambda: chat.in_flight)
    metrics.watch_ledger(lambda: accounts.ledger)
    created = int(model.artifacts.gguf_path.stat().st_mtime) if model.artifacts.gguf_path.exists() else 0
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
            Route("/v1/models", endpoints.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", endpoints.retrieve_model, methods=["GET"]),
            Route("/v1/organization/usage/completions", endpoints.usage_completions, methods=["GET"]),
            Route("/v1/organization/costs", endpoints.costs, methods=["GET"]),
            Route("/health", endpoints.health, methods=["GET"]),
            Route("/ready", endpoints.ready, methods=["GET"]),
            Route("/openapi.json", endpoints.openapi, methods=["GET"]),
            Route("/metrics", endpoints.metrics, methods=["GET"]),
        ],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=_lifespan,
    )
    app.add_middleware(RequestLogMiddleware, on_done=functools.partial(_request_done, metrics, settings.served_model))
    app.add_middleware(RequestIdMiddleware)
    app.state.gateway = AppState(
        settings=settings, engine=engine, accounts=accounts, chat=chat, metrics=metrics,
        served=Model(id=settings.served_model, object="model", created=created, owned_by=OWNER),
        openapi=openapi_document(package_version()))
    return app
