"""The Starlette application: routes, error rendering, request ids, lifespan.

``create_app(settings, engine, model)`` wires the pieces (``gateway.server.build_app``
does so for the real stack: Triton engine, artifacts on disk). Every error is an
``APIError`` (or is made one) and is rendered once, into OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.accounts.api_keys import bearer_token
from gateway.accounts.service import AccountService
from gateway.accounts.usage_report import costs_page, parse_query, usage_page
from gateway.api.chat_service import ChatService
from gateway.chat.served_model import ModelView, package_version
from gateway.engine.protocol import Engine
from gateway.errors import (
    APIError, AuthenticationError, EngineUnavailableError, InvalidRequestError, MethodNotAllowedError, NotFoundError,
    PermissionDeniedError, ShuttingDownError,
)
from gateway.api.openapi import openapi_document
from gateway.api.request_context import RequestIdMiddleware, current_request_id
from gateway.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.api.metrics import LIVE_REFRESH_S, GatewayMetrics
from gateway.api.request_log import RequestLogMiddleware, summary
from gateway.openai_schema import Model, ModelList
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


def create_app(settings: Settings, engine: Engine, model: ModelView,
               accounts: AccountService | None = None) -> Starlette:
    accounts = accounts or AccountService(settings)
    chat = ChatService(settings, engine, model, accounts)
    metrics = GatewayMetrics()
    metrics.live(metrics.in_flight, lambda: chat.in_flight)
    metrics.watch_ledger(lambda: accounts.ledger)
    created = int(model.artifacts.gguf_path.stat().st_mtime) if model.artifacts.gguf_path.exists() else 0
    served = Model(id=settings.served_model, object="model", created=created, owned_by=OWNER)
    document = openapi_document(package_version())

    async def chat_completions(request: Request) -> Response:
        try:
            return await chat.complete(request)
        except APIError:
            raise
        except Exception as exc:  # rendered here, inside the request-id middleware
            log.exception("unexpected error")
            raise APIError("The server had an error while processing your request.") from exc

    async def list_models(request: Request) -> Response:
        await accounts.authenticate(request.headers.get("authorization"))
        return JSONResponse(ModelList(object="list", data=[served]).model_dump())

    async def retrieve_model(request: Request) -> Response:
        await accounts.authenticate(request.headers.get("authorization"))
        if request.path_params["model"] != settings.served_model:
            raise NotFoundError(f"The model '{request.path_params['model']}' does not exist.",
                                param="model", code="model_not_found")
        return JSONResponse(served.model_dump())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if chat.draining:
            raise ShuttingDownError()
        if not await engine.ready():
            raise EngineUnavailableError(f"The model '{settings.triton_model}' is not ready on the model server.")
        return JSONResponse({"status": "ready"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def metrics_endpoint(request: Request) -> Response:
        if settings.metrics_token:
            sent = bearer_token(request.headers.get("authorization"))
            if sent is None or not hmac.compare_digest(sent.encode(), settings.metrics_token.encode()):
                raise AuthenticationError("The metrics endpoint needs ELECTRON_METRICS_TOKEN as a bearer token.")
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    def request_done(scope, line: dict) -> None:
        metrics.request_done(ROUTES.get(scope["path"], _route_of(scope["path"])), line, settings.served_model)

    async def admin_caller(request: Request):
        caller = await accounts.authenticate(request.headers.get("authorization"))
        if not caller.admin:
            raise PermissionDeniedError("The usage and costs endpoints need an admin key "
                                        "(electron-keys create --admin).")
        await accounts.ledger.flush()  # rows of this process's finished requests are in the answer
        return caller

    async def usage_completions(request: Request) -> Response:
        caller = await admin_caller(request)
        query = parse_query(request.query_params, ("api_key_id", "model"))
        return JSONResponse(await usage_page(accounts.store, caller.account_id, query))

    async def costs(request: Request) -> Response:
        caller = await admin_caller(request)
        query = parse_query(request.query_params, ("line_item", "api_key_id", "model", "project_id"))
        return JSONResponse(await costs_page(accounts.store, caller.account_id, query))

    async def refresh_live_metrics() -> None:
        while True:
            metrics.refresh()
            await asyncio.sleep(LIVE_REFRESH_S)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await accounts.start()
        refresher = asyncio.get_running_loop().create_task(refresh_live_metrics()) if metrics.shared else None
        try:
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
            await accounts.close()
            await engine.close()
            metrics.refresh()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
            Route("/v1/organization/usage/completions", usage_completions, methods=["GET"]),
            Route("/v1/organization/costs", costs, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.add_middleware(RequestLogMiddleware, on_done=request_done)
    app.add_middleware(RequestIdMiddleware)
    app.state.accounts = accounts
    app.state.metrics = metrics
    app.state.chat = chat
    return app
