"""``GET /openapi.json``: an OpenAPI 3.1 description of every endpoint, built from the wire schemas.

The whole chat completion request is described (the request schema is the one
the gateway validates with), with every status the gateway answers: fuzzers
(schemathesis, in the test suite) generate requests from it and check the answers.
"""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from gateway.openai_schema import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorResponse, Model, ModelList

_REF = "#/components/schemas/{model}"
_BEARER = [{"bearer": []}]
_RETRY_HEADERS = {name: {"schema": {"type": "string"}} for name in ("retry-after", "retry-after-ms")}
_RATE_HEADERS = {f"x-ratelimit-{what}-{unit}": {"schema": {"type": "string"}}
                 for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")}

_TIME_BUCKETS = {
    "type": "object",
    "required": ["object", "data", "has_more", "next_page"],
    "properties": {
        "object": {"const": "page"},
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "start_time", "end_time", "results"],
                                            "properties": {"object": {"const": "bucket"},
                                                           "start_time": {"type": "integer"},
                                                           "end_time": {"type": "integer"},
                                                           "results": {"type": "array", "items": {"type": "object"}}}}},
        "has_more": {"type": "boolean"},
        "next_page": {"type": ["string", "null"]},
    },
}


def _json(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}}}


def _errors(*statuses: int) -> dict:
    out = {}
    for status in statuses:
        response = _json("ErrorResponse", "Error envelope")
        if status in (429, 503):
            response["headers"] = {**_RETRY_HEADERS, **(_RATE_HEADERS if status == 429 else {})}
        out[str(status)] = response
    return out


def _report(operation: str, summary: str, groups: list[str]) -> dict:
    def query(name: str, schema: dict, required: bool = False) -> dict:
        return {"name": name, "in": "query", "required": required, "schema": schema}

    return {"get": {
        "operationId": operation, "summary": summary, "security": _BEARER,
        "parameters": [
            query("start_time", {"type": "integer"}, required=True),
            query("end_time", {"type": "integer"}),
            query("bucket_width", {"enum": ["1m", "1h", "1d"]}),
            query("group_by", {"type": "array", "items": {"enum": groups}}),
            query("limit", {"type": "integer"}),
            query("page", {"type": "string"}),
            query("api_key_ids", {"type": "array", "items": {"type": "string"}}),
            query("models", {"type": "array", "items": {"type": "string"}}),
        ],
        "responses": {"200": {"description": "Pages of time buckets",
                              "content": {"application/json": {"schema": _TIME_BUCKETS}}},
                      **_errors(400, 401, 403)},
    }}


def openapi_document(version: str) -> dict:
    _, defs = models_json_schema(
        [(m, "validation" if m is ChatCompletionRequest else "serialization")
         for m in (ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ModelList, Model, ErrorResponse)],
        ref_template=_REF)
    chat_ok = _json("ChatCompletion", "A completion, or with stream=true Server-Sent Events of chunks")
    chat_ok["content"]["text/event-stream"] = {"schema": {"$ref": _REF.format(model="ChatCompletionChunk")}}
    chat_ok["headers"] = _RATE_HEADERS
    return {
        "openapi": "3.1.0",
        "info": {"title": "electron: OpenAI-compatible Chat Completions for voice agents", "version": version},
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from electron-keys (none needed on a "
                                                          "loopback gateway while no key exists)"}},
        },
        "paths": {
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion", "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": _REF.format(model="ChatCompletionRequest")}}}},
                "responses": {"200": chat_ok, **_errors(400, 401, 413, 429, 499, 500, 503, 504)},
            }},
            "/v1/models": {"get": {"operationId": "listModels", "security": _BEARER,
                                   "responses": {"200": _json("ModelList", "Models"), **_errors(401)}}},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel", "security": _BEARER,
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Model", "The model"), **_errors(401, 404)},
            }},
            "/v1/organization/usage/completions": _report(
                "usageCompletions", "Token usage of the key's account (admin keys)", ["api_key_id", "model"]),
            "/v1/organization/costs": _report(
                "costs", "Costs of the key's account (admin keys)", ["line_item", "api_key_id", "model", "project_id"]),
            "/health": {"get": {"operationId": "health", "responses": {"200": {"description": "Process alive"}}}},
            "/ready": {"get": {"operationId": "ready", "responses": {
                "200": {"description": "The engine's model is ready and the gateway not draining"}, **_errors(503)}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {
                "200": {"description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)}}},
            "/openapi.json": {"get": {"operationId": "openapi", "responses": {
                "200": {"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
    }
