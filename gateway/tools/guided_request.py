"""What a request asks of the output's form: ``tools`` / ``tool_choice`` /
``parallel_tool_calls`` and ``response_format``, checked and turned into an engine
guide (TensorRT-LLM's ``guided_decoding_guide_type`` / ``guided_decoding_guide``).

Every schema is checked twice before the request goes out: as JSON Schema
(``jsonschema``), and by the guide compiler the engine uses, so that a schema
feature it cannot enforce is a 400 naming the schema, not a failed request.

Engines declare their guide compiler in their config (``guided_decoding_backend``):
``llguidance`` (the CPU engine, TensorRT-LLM's LLM API model) takes every guide:
Lark grammars with lazy triggers for tools, JSON schemas for response formats.
``xgrammar`` (TensorRT-LLM's C++ backend) takes JSON schemas and regular
expressions but not Lark: forced tool calls go as a regex (``ToolDialect.call_regex``),
``auto`` and ``none`` without a guide (calls are checked after decoding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import jsonschema
import llguidance

from gateway.errors import InvalidRequestError
from gateway.openai_schema import ChatCompletionRequest
from gateway.tools.tool_dialect import JSON_STYLE, ToolDialect  # the engine's JSON options too



GUIDE_BACKENDS = ("llguidance", "xgrammar")


@dataclass(frozen=True)
class Guide:
    type: str  # json, json_schema, regex, ebnf_grammar
    text: str


@dataclass(frozen=True)
class ToolPlan:
    tools: list[dict]  # as the prompt lists them
    choice: str  # auto, required, none, or the forced tool's name
    parallel: bool

    @property
    def forced(self) -> bool:
        return self.choice not in ("auto", "none")


@lru_cache(maxsize=256)
def _compile_error(grammar: str) -> str:
    """llguidance's complaint about ``grammar``, or "" (cached: voice agents send the
    same tools on every turn)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error else ""


MAX_SCHEMA_DEPTH = 32  # nesting of objects and arrays in a tool's or response format's JSON schema


def _depth(value, limit: int) -> int:
    """Nesting depth of JSON containers, counted no further than ``limit + 1``."""
    if limit < 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _check_schema(schema, param: str) -> None:
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"Invalid schema for '{param}': a JSON schema must be an object.", param=param)
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise InvalidRequestError(f"Invalid schema for '{param}': nested deeper than {MAX_SCHEMA_DEPTH} levels.",
                                  param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidRequestError(f"Invalid schema for '{param}': {exc.message}" + (f" (at {where})" if where else "")
                                  + ".", param=param) from exc
    try:
        error = _compile_error(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE))
    except (ValueError, TypeError) as exc:  # e.g. an integer past 64 bits, which llguidance cannot hold
        error = str(exc)
    if error:
        raise InvalidRequestError(f"The schema for '{param}' uses a feature that cannot be enforced while "
                                  f"decoding: {error}", param=param)


def tool_plan(request: ChatCompletionRequest) -> ToolPlan | None:
    """The checked tools and choice, or None when no tools were given."""
    choice = request.tool_choice
    if not request.tools:
        if choice is not None and choice != "none":
            raise InvalidRequestError("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
        return None
    names = set()
    for i, tool in enumerate(request.tools):
        name = tool.function.name
        if name in names:
            raise InvalidRequestError(f"Duplicate tool name '{name}' in 'tools'.", param=f"tools[{i}].function.name")
        names.add(name)
        if tool.function.parameters is not None:
            _check_schema(tool.function.parameters, f"tools[{i}].function.parameters")
    if choice is None:
        choice_name = "auto"
    elif isinstance(choice, str):
        choice_name = choice
    else:
        choice_name = choice.function.name
        if choice_name not in names:
            raise InvalidRequestError(f"'tool_choice' names the function '{choice_name}', which is not in 'tools'.",
                                      param="tool_choice")
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools]
    return ToolPlan(tools, choice_name, request.parallel_tool_calls is not False)


def check_tool_messages(request: ChatCompletionRequest) -> None:
    """Every ``tool`` message answers a call of an earlier assistant message."""
    call_ids: set[str] = set()
    for i, message in enumerate(request.messages):
        if message.role == "assistant" and message.tool_calls:
            call_ids.update(call.id for call in message.tool_calls)
        elif message.role == "tool" and message.tool_call_id not in call_ids:
            raise InvalidRequestError(
                f"Invalid parameter: messages with role 'tool' must be a response to a preceding message with "
                f"'tool_calls'; no call has the id '{message.tool_call_id}'.", param=f"messages[{i}].tool_call_id")


def tools_guide(plan: ToolPlan, dialect: ToolDialect, backend: str = "llguidance") -> Guide | None:
    """The guide of ``plan`` for the engine's guide compiler; None: the text stays free."""
    if backend == "xgrammar":
        if not plan.forced and plan.choice != "required":
            return None  # auto / none: xgrammar cannot express a call after free text (docs/gpu.md)
        try:
            return Guide("regex", dialect.call_regex(plan.tools, plan.choice, plan.parallel))
        except ValueError as exc:
            raise InvalidRequestError(f"The tools cannot be enforced while decoding: {exc}", param="tools") from exc
    grammar = dialect.grammar(plan.tools, plan.choice, plan.parallel)
    error = _compile_error(grammar)
    if error:
        raise InvalidRequestError(f"The tools cannot be enforced while decoding: {error}", param="tools")
    return Guide("ebnf_grammar", grammar)


def response_format_guide(request: ChatCompletionRequest) -> Guide | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Guide("json_schema", json.dumps({"type": "object"}))
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise InvalidRequestError("'response_format' of type 'json_schema' needs 'json_schema.schema'.",
                                  param="response_format.json_schema")
    schema = fmt.json_schema.schema_
    _check_schema(schema, "response_format.json_schema.schema")
    return Guide("json_schema", json.dumps(schema, ensure_ascii=False))
