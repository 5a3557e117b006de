"""The HTTP endpoints, as module-level functions. Each reads what it needs from
``request.app.state`` (``AppState``, set by ``create_app``), as Starlette's own examples
and Triton's OpenAI frontend do."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.accounts.api_keys import bearer_token
from gateway.accounts.service import AccountService, Caller
from gateway.accounts.usage_report import costs_page, parse_query, usage_page
from gateway.api.chat_service import ChatService
from gateway.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.api.metrics import GatewayMetrics
from gateway.engine.protocol import Engine
from gateway.errors import (APIError, AuthenticationError, EngineUnavailableError, NotFoundError,
                            PermissionDeniedError, ShuttingDownError)
from gateway.openai_schema import Model, ModelList
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppState:
    """What the endpoints share, on ``app.state.gateway``."""
    settings: Settings
    engine: Engine
    accounts: AccountService
    chat: ChatService
    metrics: GatewayMetrics
    served: Model  # the /v1/models entry
    openapi: dict


def _state(request: Request) -> AppState:
    return request.app.state.gateway


async def chat_completions(request: Request) -> Response:
    try:
        return await _state(request).chat.complete(request)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - rendered here, inside the request-id middleware
        log.exception("unexpected error")
        raise APIError("The server had an error while processing your request.") from exc


async def list_models(request: Request) -> Response:
    state = _state(request)
    await state.accounts.authenticate(request.headers.get("authorization"))
    return JSONResponse(ModelList(object="list", data=[state.served]).model_dump())


async def retrieve_model(request: Request) -> Response:
    state = _state(request)
    await state.accounts.authenticate(request.headers.get("authorization"))
    if request.path_params["model"] != state.settings.served_model:
        raise NotFoundError(f"The model '{request.path_params['model']}' does not exist.",
                            param="model", code="model_not_found")
    return JSONResponse(state.served.model_dump())


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state = _state(request)
    if state.chat.draining:
        raise ShuttingDownError()
    if not await state.engine.ready():
        raise EngineUnavailableError(f"The model '{state.settings.triton_model}' is not ready on the model server.")
    return JSONResponse({"status": "ready"})


async def openapi(request: Request) -> Response:
    return JSONResponse(_state(request).openapi)


async def metrics(request: Request) -> Response:
    state = _state(request)
    if state.settings.metrics_token:
        sent = bearer_token(request.headers.get("authorization"))
        if sent is None or not hmac.compare_digest(sent.encode(), state.settings.metrics_token.encode()):
            raise AuthenticationError("The metrics endpoint needs ELECTRON_METRICS_TOKEN as a bearer token.")
    return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


async def _admin_caller(request: Request) -> Caller:
    accounts = _state(request).accounts
    caller = await accounts.authenticate(request.headers.get("authorization"))
    if not caller.admin:
        raise PermissionDeniedError("The usage and costs endpoints need an admin key "
                                    "(electron-keys create --admin).")
    await accounts.ledger.flush()  # rows of this process's finished requests are in the answer
    return caller


async def usage_completions(request: Request) -> Response:
    caller = await _admin_caller(request)
    query = parse_query(request.query_params, ("api_key_id", "model"))
    return JSONResponse(await usage_page(_state(request).accounts.store, caller.account_id, query))


async def costs(request: Request) -> Response:
    caller = await _admin_caller(request)
    query = parse_query(request.query_params, ("line_item", "api_key_id", "model", "project_id"))
    return JSONResponse(await costs_page(_state(request).accounts.store, caller.account_id, query))
