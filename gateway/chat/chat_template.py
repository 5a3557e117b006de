"""The model's chat template, rendered the way Hugging Face's
``apply_chat_template`` renders it.

Same Jinja environment (sandboxed, ``trim_blocks``, ``lstrip_blocks``,
``loopcontrols``), same helpers (``raise_exception``, ``tojson`` without ASCII
escaping, ``strftime_now``) and the same variables (``messages``, ``tools``,
``add_generation_prompt``, the special tokens such as ``bos_token``). A template
that raises (for example "roles must alternate") is the client's error.
"""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.errors import InvalidRequestError


class TemplateError(Exception):
    pass


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str] | None = None) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(source)
        self._special_tokens = dict(special_tokens or {})
        # a template that reads ``tools`` renders them itself; otherwise a tool dialect does
        self.supports_tools = "tools" in source

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(messages=messages, tools=tools,
                                         add_generation_prompt=add_generation_prompt, **self._special_tokens)
        except TemplateError as exc:
            raise InvalidRequestError(f"messages: {exc}", param="messages") from exc
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"messages: the chat template cannot render them ({exc})",
                                      param="messages") from exc
