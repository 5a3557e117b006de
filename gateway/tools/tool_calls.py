"""Tool calls out of a model's text, incrementally, as the text streams in.

``ToolCallParser.push(text)`` returns events in order:

- ``Text(content)``: text outside any call (content for the caller); a possible
  beginning of the call marker at the end is held back until it is decided;
- ``CallOpen(index)``: the call marker was written (a call is coming);
- ``Call(index, name, arguments)``: the call's block is closed; ``arguments`` is
  the arguments JSON exactly as generated.

A call is reported only once it is whole: voice clients run a tool only after
the whole call anyway, and a client must never receive a broken one (LiveKit
drops every collected call when a stream ends in ``length``; Pipecat fails to
parse a cut one). The text comes from a guided decode (``ToolDialect.grammar``),
so a call always has the dialect's form; ``in_call`` tells of a call the model
left unfinished (cut by ``max_tokens``). Fed one character or one token at a
time, or whole, the parser gives the same calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from gateway.tools.tool_dialect import ToolDialect

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


@dataclass(frozen=True)
class Text:
    content: str


@dataclass(frozen=True)
class CallOpen:
    index: int


@dataclass(frozen=True)
class Call:
    index: int
    name: str
    arguments: str


@dataclass
class _JsonScanner:
    """Finds where one JSON value ends, character by character."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False

    def feed(self, char: str) -> bool:
        """True once ``char`` completed the value."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
                return self.depth == 0
            return False
        if char.isspace() and not self.started:
            return False
        self.started = True
        if char == '"':
            self.in_string = True
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1
            return self.depth == 0
        return False  # a bare number or literal at depth 0 is never complete on its own


@dataclass
class ToolCallParser:
    dialect: ToolDialect
    calls: int = 0  # calls closed
    _state: str = "text"  # text, head, args, tail, between
    _buffer: str = ""
    _scanner: _JsonScanner = field(default_factory=_JsonScanner)
    _name: str = ""  # of the open call
    _arguments: str = ""  # of the open call, so far

    @property
    def in_call(self) -> bool:
        """A call was started and is not closed yet."""
        return self._state in ("head", "args", "tail")

    def push(self, text: str) -> list:
        self._buffer += text
        events: list = []
        while True:
            before = (self._state, len(self._buffer))
            getattr(self, "_" + self._state)(events)
            if (self._state, len(self._buffer)) == before:
                return events

    def finish(self) -> list:
        """Events for what is left at the end: held text, if no call was open."""
        events = []
        if self._state == "text" and self._buffer:
            events.append(Text(self._buffer))
        self._buffer = ""
        return events

    # ---- states -------------------------------------------------------------------
    def _text(self, events: list) -> None:
        marker = self.dialect.call_begin
        at = self._buffer.find(marker)
        if at >= 0:
            if at:
                events.append(Text(self._buffer[:at]))
            events.append(CallOpen(self.calls))
            self._buffer = self._buffer[at + len(marker):]
            self._state = "head"
            return
        keep = _partial_suffix(self._buffer, marker)
        cut = len(self._buffer) - keep
        if cut > 0:
            events.append(Text(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]

    def _head(self, events: list) -> None:
        match = _HEAD.match(self._buffer)
        if match is None:
            return
        self._name = json.loads(f'"{match.group(1)}"')
        self._arguments = ""
        self._buffer = self._buffer[match.end():]
        self._scanner = _JsonScanner()
        self._state = "args"

    def _args(self, events: list) -> None:
        for i, char in enumerate(self._buffer):
            if self._scanner.feed(char):
                self._arguments += self._buffer[: i + 1]
                self._buffer = self._buffer[i + 1:]
                self._state = "tail"
                return
        self._arguments += self._buffer
        self._buffer = ""

    def _tail(self, events: list) -> None:
        end = "}" + self.dialect.call_end
        stripped = self._buffer.lstrip()
        if stripped.startswith(end):
            self._buffer = stripped[len(end):]
            events.append(Call(self.calls, self._name, self._arguments))
            self.calls += 1
            self._state = "between"

    def _between(self, events: list) -> None:
        next_call = self.dialect.call_separator + self.dialect.call_begin
        if self._buffer.startswith(next_call):
            self._buffer = self._buffer[len(next_call):]
            events.append(CallOpen(self.calls))
            self._state = "head"
        elif self._buffer.strip() and not next_call.startswith(self._buffer):
            self._buffer = ""  # anything else after the calls is not part of any call


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
