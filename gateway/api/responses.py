"""Response bodies in OpenAI's shape: ``chat.completion`` and ``chat.completion.chunk``.

``ResponseShaper`` holds what every chunk of one response repeats (``id``,
``created``, ``model``, ``system_fingerprint``) and builds the schema objects of
``gateway.openai_schema``; it knows nothing of SSE framing (``gateway.api.sse``) or of the
engine.
"""

from __future__ import annotations

import json
import time
import uuid

from gateway.chat.choice_stream import Delta
from gateway.chat.completion import CompletionRun
from gateway.openai_schema import (
    ChatCompletion, ChatCompletionChunk, Choice, ChoiceDelta, ChoiceLogprobs, ChunkChoice,
    CompletionTokensDetails, FunctionCall, PromptTokensDetails, ResponseMessage, TokenLogprob, ToolCall, Usage,
)


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage_of(run: CompletionRun) -> Usage:
    return Usage(
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        total_tokens=run.prompt_tokens + run.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=run.cached_tokens, audio_tokens=0),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=0, audio_tokens=0, accepted_prediction_tokens=0, rejected_prediction_tokens=0),
    )


def whole_tool_calls(pieces: list[dict]) -> list[ToolCall]:
    """The streamed tool-call deltas as the message's calls (each delta is a whole call)."""
    return [ToolCall(id=p["id"], type="function",
                     function=FunctionCall(name=p["function"]["name"], arguments=p["function"]["arguments"]))
            for p in pieces]


def _logprobs(entries: list[dict] | None) -> ChoiceLogprobs | None:
    if entries is None:
        return None
    return ChoiceLogprobs(content=[TokenLogprob(**entry) for entry in entries], refusal=None)


class ResponseShaper:
    def __init__(self, model: str, system_fingerprint: str, include_usage: bool = False,
                 want_logprobs: bool = False) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self._model = model
        self._fingerprint = system_fingerprint
        self.include_usage = include_usage
        self._want_logprobs = want_logprobs
        # the per-token fast path: a content chunk serialized once around a marker, split there
        marker = "\u0000"
        whole = self.content_chunk(Delta(content=marker)).model_dump_json(exclude_unset=True).encode()
        self._content_prefix, self._content_suffix = whole.split(json.dumps(marker).encode())

    def completion(self, deltas: list[Delta], run: CompletionRun) -> ChatCompletion:
        """The non-streaming body: the deltas a stream would have sent, joined."""
        content = "".join(d.content for d in deltas)
        logprobs = [entry for d in deltas for entry in d.logprobs] if self._want_logprobs else None
        calls = whole_tool_calls([c for d in deltas for c in d.tool_calls])
        message = ResponseMessage(role="assistant", content=content if content or not calls else None,
                                  refusal=None)
        if calls:
            message.tool_calls = calls
        choice = Choice(index=0, message=message, logprobs=_logprobs(logprobs), finish_reason=run.finish_reason)
        return ChatCompletion(id=self.id, object="chat.completion", created=self.created, model=self._model,
                              choices=[choice], usage=usage_of(run), system_fingerprint=self._fingerprint,
                              service_tier="default")

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        chunk = ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                    model=self._model, system_fingerprint=self._fingerprint, choices=choices)
        if self.include_usage:
            chunk.usage = usage  # OpenAI sends "usage": null on every chunk but the last
        return chunk

    def role_chunk(self) -> ChatCompletionChunk:
        delta = ChoiceDelta(role="assistant", content="", refusal=None)
        return self._chunk([ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=None)])

    def content_chunk(self, delta: Delta) -> ChatCompletionChunk:
        logprobs = _logprobs(delta.logprobs) if self._want_logprobs else None
        choice = ChunkChoice(index=0, delta=ChoiceDelta(content=delta.content), logprobs=logprobs,
                             finish_reason=None)
        return self._chunk([choice])

    def finish_chunk(self, finish_reason: str) -> ChatCompletionChunk:
        return self._chunk([ChunkChoice(index=0, delta=ChoiceDelta(), logprobs=None,
                                        finish_reason=finish_reason)])

    def usage_chunk(self, run: CompletionRun) -> ChatCompletionChunk:
        return self._chunk([], usage_of(run))

    def plain_content_json(self, delta: Delta) -> bytes | None:
        """The JSON of ``delta``'s one content chunk, built without schema objects, if
        it is nothing but text (the per-token case); None otherwise. Byte for byte
        what ``stream_chunks`` would serialize."""
        if not delta.content or delta.tool_calls or delta.finish_reason is not None or self._want_logprobs:
            return None
        return self._content_prefix + json.dumps(delta.content, ensure_ascii=False).encode() + self._content_suffix

    def stream_chunks(self, delta: Delta) -> list[ChatCompletionChunk]:
        """Chunks for one delta: its content (if any), then the finish chunk if it
        is the last (OpenAI's finish chunk has an empty delta)."""
        chunks = []
        if delta.content or (self._want_logprobs and delta.logprobs):
            chunks.append(self.content_chunk(delta))
        for call in delta.tool_calls:  # never in the same chunk as content; one call entry per chunk
            chunks.append(self._chunk([ChunkChoice(index=0, delta=ChoiceDelta(tool_calls=[call]),
                                                   logprobs=None, finish_reason=None)]))
        if delta.finish_reason is not None:
            chunks.append(self.finish_chunk(delta.finish_reason))
        return chunks
