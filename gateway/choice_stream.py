"""The per-choice state machine: engine tokens in, text deltas out.

``feed(tokens)`` runs token bytes through UTF-8 decoding, ``stop`` matching and
the grapheme gate, and returns what may be sent now (possibly nothing).
``finish(reason)`` releases what was held. Streaming sends each delta as a
chunk; non-streaming joins the very same deltas, so both give the same text.
When a stop string appears, ``stopped`` turns true: the caller cancels the
engine request and calls ``finish``. Tokens that arrive after it still count
for usage (the engine generated them) but add no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from gateway.detokenizer import GraphemeGate, IncrementalDetokenizer
from gateway.stop_strings import StopMatcher


@dataclass
class Delta:
    content: str = ""
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None


def token_logprob(token_bytes: bytes, logprob: float) -> dict:
    """One entry of ``logprobs.content`` in OpenAI's shape (no alternatives)."""
    try:
        token = token_bytes.decode("utf-8")
    except UnicodeDecodeError:
        token = "bytes:" + "".join(f"\\x{b:02x}" for b in token_bytes)
    return {"token": token, "logprob": logprob, "bytes": list(token_bytes), "top_logprobs": []}


class ChoiceStream:
    def __init__(self, token_bytes: Callable[[int], bytes], stops: list[str], max_tokens: int,
                 logprobs: bool = False) -> None:
        self._token_bytes = token_bytes
        self._detokenizer = IncrementalDetokenizer(token_bytes)
        self._stops = StopMatcher(stops)
        self._gate = GraphemeGate()
        self._max_tokens = max_tokens
        self._want_logprobs = logprobs
        self._pending_logprobs: list[dict] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None

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
        content = self._gate.push(text)
        if self.stopped:
            content += self._gate.flush()
        if not content:
            return None
        delta = Delta(content, self._pending_logprobs)
        self._pending_logprobs = []
        return delta

    def finish(self) -> Delta:
        """The last delta, with ``finish_reason``: ``stop`` for a stop string or the
        end token, ``length`` when ``max_tokens`` ran out."""
        if self.finish_reason is not None:
            raise RuntimeError("finish() called twice")
        if self.stopped:
            self.finish_reason = "stop"
        else:
            self.finish_reason = "length" if self.completion_tokens >= self._max_tokens else "stop"
        self._detokenizer.finish()
        content = self._gate.push(self._stops.flush()) + self._gate.flush()
        delta = Delta(content, self._pending_logprobs, self.finish_reason)
        self._pending_logprobs = []
        return delta
