"""``GET /openapi.json``: an OpenAPI 3.1 description built from the wire schemas."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from gateway.api.schemas import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorResponse, Model, ModelList

_REF = "#/components/schemas/{model}"


def _json(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}}}


def _errors(*statuses: int) -> dict:
    return {str(s): _json("ErrorResponse", "Error envelope") for s in statuses}


def openapi_document(version: str) -> dict:
    _, defs = models_json_schema(
        [(m, "validation" if m is ChatCompletionRequest else "serialization")
         for m in (ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ModelList, Model, ErrorResponse)],
        ref_template=_REF)
    chat_ok = _json("ChatCompletion", "A completion, or with stream=true Server-Sent Events of chunks")
    chat_ok["content"]["text/event-stream"] = {"schema": {"$ref": _REF.format(model="ChatCompletionChunk")}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "electron: OpenAI-compatible Chat Completions for voice agents", "version": version},
        "paths": {
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(model="ChatCompletionRequest")}}}},
                "responses": {"200": chat_ok, **_errors(400, 413, 499, 500, 503)},
            }},
            "/v1/models": {"get": {"operationId": "listModels", "responses": {"200": _json("ModelList", "Models")}}},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Model", "The model"), **_errors(404)},
            }},
            "/health": {"get": {"operationId": "health", "responses": {"200": {"description": "Process alive"}}}},
            "/ready": {"get": {"operationId": "ready", "responses": {
                "200": {"description": "The engine's model is ready"}, **_errors(503)}}},
        },
        "components": {"schemas": defs["$defs"]},
    }
