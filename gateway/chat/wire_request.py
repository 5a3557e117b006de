"""The raw body of a Chat Completions request -> a ``ChatCompletionRequest``.

A body that is not JSON, is not an object, holds a lone UTF-16 surrogate or breaks the
OpenAI schema is a 400 whose ``param`` names the field, worded as OpenAI words it.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from gateway.errors import InvalidRequestError
from gateway.openai_schema import ChatCompletionRequest

log = logging.getLogger(__name__)

# Names pydantic puts into an error location for union members and discriminator
# tags: not fields, so they are left out of the ``param`` shown to the client.
_ROLE_TAGS = {"system", "developer", "user", "assistant", "tool", "text"}


def _param(loc: tuple) -> str:
    """``('messages', 0, 'user', 'content')`` -> ``messages[0].content``."""
    out = ""
    previous = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in _ROLE_TAGS:
            pass  # the discriminator tag of a message or content part
        elif "[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none"):
            pass  # a union member's type
        else:
            out += f".{part}" if out else part
        previous = part
    return out


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """The most specific schema error, as OpenAI words it, with ``param`` naming the
    field. For a union (content as a string or parts) the deepest error says what
    is wrong (an ``image_url`` part), not "Input should be a valid string"."""
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(e["loc"]))
    param = _param(tuple(first["loc"]))
    if first["type"] == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    where = f"'{param}'" if param else "the request body"
    return InvalidRequestError(f"Invalid value for {where}: {first['msg']}.", param=param or None)


def _lone_surrogate_path(value, path: tuple = ()) -> tuple | None:
    """Where a string holds a lone UTF-16 surrogate (JSON's ``"\\ud800"`` escape decodes to
    one): no tokenizer can encode it, so it is refused as bad input, not a 500."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _lone_surrogate_path(key) is not None:
            return path + (key,)
        found = _lone_surrogate_path(item, path + (key,))
        if found is not None:
            return found
    return None


def parse_body(body: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise InvalidRequestError("The request body is nested too deeply.") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        where = _lone_surrogate_path(data)
    except RecursionError as exc:
        raise InvalidRequestError("The request body is nested too deeply.") from exc
    if where is not None:
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where).lstrip(".")
        raise InvalidRequestError(f"Invalid value for '{param or 'the request body'}': a string holds a lone "
                                  "UTF-16 surrogate (not valid Unicode text).", param=param or None)
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    if request.model_extra:
        log.debug("ignoring unknown fields: %s", ", ".join(sorted(request.model_extra)))
    return request
