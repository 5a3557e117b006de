"""The per-choice state machine: engine tokens in, text deltas out.

``feed(tokens)`` runs token bytes through UTF-8 decoding, ``stop`` matching and
the grapheme gate, and returns what may be sent now (possibly nothing).
``finish(reason)`` releases what was held. Streaming sends each delta as a
chunk; non-streaming joins the very same deltas, so both give the same text.
When a stop string appears, ``stopped`` turns true: the caller cancels the
engine request and calls ``finish``. Tokens that arrive after it still count
for usage (the engine generated them) but add no text.

With tools (``ToolMode``), the text also goes through a ``ToolCallParser``: text
outside calls is content, calls become ``tool_calls`` deltas in OpenAI's streaming
shape (first ``index``, ``id``, ``type``, ``name``, ``arguments: ""``, then argument
pieces as they are generated). A filler phrase is said before the first call when
nothing else was said: at once (``opening``) when the call is forced, else the
moment the call starts. A call left unfinished ends the choice as ``length``.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Callable

from gateway.detokenizer import GraphemeGate, IncrementalDetokenizer
from gateway.stop_strings import StopMatcher
from gateway.tool_calls import Arguments, CallEnd, CallOpen, CallStart, Text, ToolCallParser
from gateway.tool_dialect import ToolDialect

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
        self._said_something = False  # content other than whitespace went out
        self._filler_said = False
        self.complete_calls = 0  # calls whose block was closed

    def opening(self) -> Delta | None:
        """The filler phrase of a forced call, to send before the engine's first token."""
        if self._tools is None or not self._tools.forced or not self._tools.filler:
            return None
        self._filler_said = self._said_something = True
        return Delta(self._tools.filler)

    @property
    def stopped(self) -> bool:
        """A stop string was found: no more text will come."""
        return self._stops.matched is not None

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
            if isinstance(event, Text):
                content += self._gate.push(event.content)
            elif isinstance(event, CallOpen):  # the call marker: the filler goes now, if it is due
                content += self._gate.flush()
                if not self._filler_said and not (self._said_something or content.strip()) and self._tools.filler:
                    content = self._tools.filler + content
                self._filler_said = True
            elif isinstance(event, CallStart):
                calls.append({"index": event.index, "id": tool_call_id(), "type": "function",
                              "function": {"name": event.name, "arguments": ""}})
            elif isinstance(event, Arguments):
                last = calls[-1] if calls else None
                if last is not None and last["index"] == event.index and "id" not in last:
                    last["function"]["arguments"] += event.piece  # one piece per call per delta
                else:
                    calls.append({"index": event.index, "function": {"arguments": event.piece}})
            elif isinstance(event, CallEnd):
                self.complete_calls = event.index + 1
        return content, calls

    def finish(self) -> Delta:
        """The last delta, with ``finish_reason``: ``stop`` for a stop string or the
        end token, ``length`` when ``max_tokens`` ran out."""
        if self.finish_reason is not None:
            raise RuntimeError("finish() called twice")
        self._detokenizer.finish()
        rest = self._stops.flush()
        if self._parser is not None:
            content, calls = self._split(self._parser.push(rest) + self._parser.finish())
        else:
            content, calls = self._gate.push(rest), []
        content += self._gate.flush()
        if self._parser is not None and self._parser.in_call:
            self.finish_reason = "length"  # the model left a call unfinished
        elif self.complete_calls:
            self.finish_reason = "tool_calls"
        elif self.stopped:
            self.finish_reason = "stop"
        else:
            self.finish_reason = "length" if self.completion_tokens >= self._max_tokens else "stop"
        delta = Delta(content, self._pending_logprobs, self.finish_reason, calls)
        self._pending_logprobs = []
        return delta
