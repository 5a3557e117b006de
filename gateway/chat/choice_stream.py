"""The per-choice state machine: engine tokens in, text deltas out.

``feed(tokens)`` runs token bytes through UTF-8 decoding, ``stop`` matching and
the grapheme gate, and returns what may be sent now (possibly nothing).
``finish(reason)`` releases what was held. Streaming sends each delta as a
chunk; non-streaming joins the very same deltas, so both give the same text.
When a stop string appears, ``stopped`` turns true: the caller cancels the
engine request and calls ``finish``. Tokens that arrive after it still count
for usage (the engine generated them) but add no text.

With tools (``ToolMode``), the text also goes through a ``ToolCallParser``: text
outside calls is content; each call goes out whole, in one ``tool_calls`` delta
(``index``, ``id``, ``type``, ``name`` and the full ``arguments``), as soon as it
closes and passes ``CallCheck`` (arguments parse and match the schema). A call
that repeats an earlier one ends the choice like a stop string (``stopped``).
A filler phrase is said before the first call when nothing else was said: at
once (``opening``) when the call is forced, else the moment the call marker is
written. A call left unfinished (cut by ``max_tokens``) is never sent: the choice
ends as ``tool_calls`` when a complete call went out before it, else ``length``.
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass, field
from typing import Callable

from gateway.chat.detokenizer import GraphemeGate, IncrementalDetokenizer
from gateway.chat.stop_strings import StopMatcher
from gateway.tools.tool_call_check import CallCheck, Verdict
from gateway.tools.tool_calls import Call, CallOpen, Text, ToolCallParser
from gateway.tools.tool_dialect import ToolDialect

log = logging.getLogger(__name__)
_ID_CHARS = string.ascii_letters + string.digits


def tool_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


@dataclass
class Delta:
    content: str = ""
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # OpenAI's streamed tool-call deltas


@dataclass(frozen=True)
class ToolMode:
    dialect: ToolDialect
    forced: bool  # tool_choice "required" or a named tool: a call from the first token
    filler: str | None = None  # said before the first call, unless something was said
    schemas: dict[str, dict | None] = field(default_factory=dict)  # each tool's parameters schema


def token_logprob(token_bytes: bytes, logprob: float) -> dict:
    """One entry of ``logprobs.content`` in OpenAI's shape (no alternatives)."""
    try:
        token = token_bytes.decode("utf-8")
    except UnicodeDecodeError:
        token = "bytes:" + "".join(f"\\x{b:02x}" for b in token_bytes)
    return {"token": token, "logprob": logprob, "bytes": list(token_bytes), "top_logprobs": []}


class ChoiceStream:
    def __init__(self, token_bytes: Callable[[int], bytes], stops: list[str], max_tokens: int,
                 logprobs: bool = False, tools: ToolMode | None = None) -> None:
        self._token_bytes = token_bytes
        self._detokenizer = IncrementalDetokenizer(token_bytes)
        self._stops = StopMatcher(stops)
        self._gate = GraphemeGate()
        self._max_tokens = max_tokens
        self._want_logprobs = logprobs
        self._pending_logprobs: list[dict] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._tools = tools
        self._parser = ToolCallParser(tools.dialect) if tools else None
        self._check = CallCheck(tools.schemas) if tools else None
        self._said_something = False  # content other than whitespace went out
        self._filler_said = False
        self._repeated = False  # a call repeated an earlier one: the choice ended there
        self.complete_calls = 0  # calls sent

    def opening(self) -> Delta | None:
        """The filler phrase of a forced call, to send before the engine's first token."""
        if self._tools is None or not self._tools.forced or not self._tools.filler:
            return None
        self._filler_said = self._said_something = True
        return Delta(self._tools.filler)

    @property
    def stopped(self) -> bool:
        """A stop string was found, or a call repeated an earlier one: no more
        output will be used (the caller cancels the engine request)."""
        return self._stops.matched is not None or self._repeated

    def feed(self, token_ids: list[int], logprobs: list[float] | None = None) -> Delta | None:
        """A delta to send now, or None when everything is held back."""
        self.completion_tokens += len(token_ids)
        if self.stopped or self.finish_reason is not None:
            return None
        if self._want_logprobs and logprobs is not None:
            self._pending_logprobs.extend(
                token_logprob(self._token_bytes(t), float(lp)) for t, lp in zip(token_ids, logprobs))
        text = self._stops.push(self._detokenizer.push(token_ids))
        if self._parser is None:
            content, calls = self._gate.push(text), []
        else:
            content, calls = self._split(self._parser.push(text))
        if self.stopped:
            content += self._gate.flush()
        if not content and not calls:
            return None
        if self._tools is not None and not self._said_something:
            self._said_something = bool(content.strip())
        delta = Delta(content, self._pending_logprobs, tool_calls=calls)
        self._pending_logprobs = []
        return delta

    def _split(self, events: list) -> tuple[str, list[dict]]:
        """Content text and tool-call deltas of parser events."""
        content, calls = "", []
        for event in events:
            if self._repeated:
                break
            if isinstance(event, Text):
                content += self._gate.push(event.content)
            elif isinstance(event, CallOpen):  # the call marker: the filler goes now, if it is due
                content += self._gate.flush()
                if not self._filler_said and not (self._said_something or content.strip()) and self._tools.filler:
                    content = self._tools.filler + content
                self._filler_said = True
            elif isinstance(event, Call):
                verdict = self._check.judge(event)
                if verdict is Verdict.SEND:
                    calls.append({"index": self.complete_calls, "id": tool_call_id(), "type": "function",
                                  "function": {"name": event.name, "arguments": event.arguments}})
                    self.complete_calls += 1
                self._repeated = verdict is Verdict.REPEAT
        return content, calls

    def finish(self) -> Delta:
        """The last delta, with ``finish_reason``: ``tool_calls`` once a call went
        out, ``stop`` for a stop string or the end token, ``length`` when
        ``max_tokens`` ran out (or cut the only call)."""
        if self.finish_reason is not None:
            raise RuntimeError("finish() called twice")
        self._detokenizer.finish()
        rest = self._stops.flush()
        if self._parser is not None:
            content, calls = self._split(self._parser.push(rest) + self._parser.finish())
        else:
            content, calls = self._gate.push(rest), []
        content += self._gate.flush()
        self.finish_reason = self._finish_reason()
        delta = Delta(content, self._pending_logprobs, self.finish_reason, calls)
        self._pending_logprobs = []
        return delta

    def _finish_reason(self) -> str:
        cut_call = self._parser is not None and self._parser.in_call
        if self.complete_calls:
            if cut_call:
                log.info("a tool call cut by max_tokens after %d complete call(s) was dropped", self.complete_calls)
            return "tool_calls"
        if cut_call:
            return "length"
        if self.stopped:
            return "stop"
        return "length" if self.completion_tokens >= self._max_tokens else "stop"
