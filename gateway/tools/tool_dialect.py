"""How tools and tool calls are written in a model's prompt and output.

A dialect is data (``gateway/tools/data/tool_dialects.json``): the system-prompt block that
lists the tools, the markers around one call and around one tool result, and the
role tool results are given. The embedded model's chat template knows no tools, so
the gateway renders them with the ``hermes`` dialect:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Pune"}}
    </tool_call>

``grammar`` builds the guide (llguidance Lark, sent as ``ebnf_grammar``) that makes the
engine keep to the dialect: with ``auto`` free text until the call marker, then only a
valid call of one of the tools (trigger-then-constrain); with ``required`` or a named
tool a call from the first token; with ``none`` text that never starts a call. The
arguments of each call follow its tool's parameter schema.

``call_regex`` builds the guide for engines whose guides xgrammar compiles
(TensorRT-LLM's C++ backend), which accepts neither Lark nor lazy triggers: a
regular expression for forced calls (``required`` or a named tool), the
arguments' part generated from the parameter schema by outlines-core (a
maintained JSON-schema-to-regex compiler). ``auto`` and ``none`` have no such
guide: the text is free and calls are checked after decoding (docs/api.md, "Tools").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache

from outlines_core.json_schema import build_regex_from_schema

from gateway.settings import TOOL_DIALECTS_FILE

DIALECTS_FILE = TOOL_DIALECTS_FILE  # gateway/tools/data/tool_dialects.json
NO_PARAMETERS = {"type": "object", "properties": {}}
# JSON on one line, as the dialect's examples write it (no free whitespace to wander into); the
# same options as the engine's JSON guides (llama_engine.guides.JSON_OPTIONS)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# where the regex guides let JSON have whitespace (the dialect writes ", " and ": "): one space or none
REGEX_WHITESPACE = "[ ]?"


@dataclass(frozen=True)
class ToolDialect:
    name: str
    description: str
    system_prompt: str  # ``{tools}``: one JSON line per tool
    call_begin: str
    call_end: str
    call_separator: str
    response_begin: str
    response_end: str
    response_role: str

    @property
    def trigger(self) -> str:
        """The text that opens a call ("<tool_call>")."""
        return self.call_begin.strip()

    def call_text(self, name: str, arguments: str) -> str:
        """One call as the model writes it: ``arguments`` is JSON text."""
        return f'{{"name": {json.dumps(name)}, "arguments": {arguments}}}'

    def render_messages(self, messages: list[dict], tools: list[dict] | None) -> list[dict]:
        """Messages for a template without tool support: the tools go into the system
        message, assistant tool calls and tool results become text."""
        out: list[dict] = []
        for message in messages:
            role, content = message["role"], message.get("content") or ""
            if role == "assistant" and message.get("tool_calls"):
                calls = self.call_separator.join(
                    self.call_begin + self.call_text(call["function"]["name"], _arguments_json(call)) + self.call_end
                    for call in message["tool_calls"])
                out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
            elif role == "tool":
                block = self.response_begin + content + self.response_end
                previous = out[-1] if out else None
                if previous is not None and previous.get("_tool_results"):
                    previous["content"] += "\n" + block  # results of one turn's calls, together
                else:
                    out.append({"role": self.response_role, "content": block, "_tool_results": True})
            else:
                out.append({"role": role, "content": content})
        for message in out:
            message.pop("_tool_results", None)
        if tools:
            listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
            block = self.system_prompt.format(tools=listed)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
            else:
                out.insert(0, {"role": "system", "content": block})
        return out

    def grammar(self, tools: list[dict], choice: str, parallel: bool) -> str:
        """The guide for ``choice``: ``auto``, ``required``, ``none`` or a tool's name
        (then that tool, once). ``parallel``: more than one call allowed."""
        if choice == "none":
            return "%llguidance {}\nstart: PLAIN\n" + self._text_terminals()
        parallel = parallel and choice in ("auto", "required")  # a named tool is called once
        allowed = [t for t in tools if choice in ("auto", "required") or t["function"]["name"] == choice]
        trigger, after_trigger = self.trigger, self.call_begin[self.call_begin.index(self.trigger) + len(self.trigger):]
        lines = ["%llguidance {}"]
        more = f" ({_lit(self.call_separator + trigger)} body)*" if parallel else ""
        if choice == "auto":
            lines += [f"start: PLAIN | first_trigger body{more}",
                      f"first_trigger[lazy]: ANY {_lit(trigger)}"]
        else:
            lines += [f"start: {_lit(trigger)} body{more}"]
        lines.append(f"body: {_lit(after_trigger)} call {_lit(self.call_end)}" if after_trigger
                     else f"body: call {_lit(self.call_end)}")
        lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(allowed))))
        for i, tool in enumerate(allowed):
            function = tool["function"]
            head = f'{{"name": {json.dumps(function["name"])}, "arguments": '
            schema = {**(function.get("parameters") or NO_PARAMETERS), "x-guidance": JSON_STYLE}
            lines.append(f"call_{i}: {_lit(head)} args_{i} {_lit('}')}")
            lines.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
        return "\n".join(lines) + "\n" + self._text_terminals()

    def call_regex(self, tools: list[dict], choice: str, parallel: bool) -> str:
        """A regular expression for forced calls: ``required`` (one or more calls of any of
        ``tools``, more only if ``parallel``) or a tool's name (that tool, once)."""
        if choice in ("auto", "none"):
            raise ValueError(f"tool_choice {choice!r} has no regular-expression guide")
        parallel = parallel and choice == "required"
        allowed = [t for t in tools if choice == "required" or t["function"]["name"] == choice]
        calls = []
        for tool in allowed:
            function = tool["function"]
            head = f'{{"name": {json.dumps(function["name"])}, "arguments": '
            arguments = arguments_regex(json.dumps(function.get("parameters") or NO_PARAMETERS, sort_keys=True))
            calls.append(f"{_regex_literal(head)}{arguments}{_regex_literal('}')}")
        alternatives = "|".join(f"(?:{c})" for c in calls)
        body = f"{_regex_literal(self.call_begin)}(?:{alternatives}){_regex_literal(self.call_end)}"
        more = f"(?:{_regex_literal(self.call_separator)}{body})*" if parallel else ""
        return body + more

    def _text_terminals(self) -> str:
        """PLAIN: any text that does not contain the call marker; ANY: any text."""
        marker = _regex_escape(self.trigger)
        return ("ANY: /(.|\\n)*/\n"
                f"PLAIN: /(.|\\n)*/ & ~/(.|\\n)*{marker}(.|\\n)*/\n")


def _arguments_json(call: dict) -> str:
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        return arguments  # not JSON (a client's own history): written back as it was
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def _lit(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


@lru_cache(maxsize=256)
def arguments_regex(schema_json: str) -> str:
    """The regex of JSON that ``schema_json`` accepts, from outlines-core (cached: voice agents
    send the same tools on every turn). Raises ``ValueError`` for a schema it cannot compile."""
    try:
        return build_regex_from_schema(schema_json, whitespace_pattern=REGEX_WHITESPACE)
    except Exception as exc:  # outlines-core raises its own error types (a Rust panic text for some)
        raise ValueError(str(exc)) from exc


def _regex_literal(text: str) -> str:
    """``text`` matched literally, in the regex syntax xgrammar and Python both read."""
    out = []
    for c in text:
        if c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c in r"\.^$|?*+()[]{}":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}/" else c for c in text)


@cache
def dialects() -> dict[str, ToolDialect]:
    data = json.loads(DIALECTS_FILE.read_text())
    return {name: ToolDialect(name=name, **spec) for name, spec in data.items()}
