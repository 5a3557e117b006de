"""Wire schemas of the Chat Completions API, mirroring OpenAI's spec field for field.

Requests accept unknown top-level fields (Vapi's ``call``, ``customer``,
``metadata``, OpenAI's ``service_tier``, ``prompt_cache_key`` ...): they land in
``model_extra`` and are ignored. Fields beyond OpenAI's spec sit in the block
marked "Extensions". Value ranges are OpenAI's; rules that need the model or
the server's settings (context window, message count, model id) live in
``chat_request.py``. Nothing here imports engine code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --- request -------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextContentPart(_Part):
    type: Literal["text"]
    text: str


# Only text parts: an image or audio part fails validation naming its ``type``.
Content = Union[str, list[Annotated[TextContentPart, Field(discriminator="type")]]]


class FunctionCall(_Part):
    name: str
    arguments: str


class ToolCall(_Part):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Part):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Part):
    """OpenAI's newer name for a system message; rendered as ``system``."""
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Part):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Part):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> "AssistantMessage":
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self


class ToolMessage(_Part):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage],
    Field(discriminator="role"),
]


class FunctionDefinition(_Part):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Part):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(_Part):
    name: str


class NamedToolChoice(_Part):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class JSONSchemaFormat(_Part):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Part):
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message]
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

    # --- Extensions (not in OpenAI's spec) ----------------------------------------
    top_k: int | None = Field(default=None, ge=0)
    min_tokens: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=2.0)
    # spoken filler before a tool call: "on", "off", or the phrases to choose from
    filler: Literal["on", "off"] | Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                                             Field(min_length=1, max_length=20)] | None = None
    # the pace (characters/s) at which the client's text-to-speech plays the reply: the engine
    # keeps the stream just ahead of it under load; 0: not played, as fast as possible
    # (default: the server's ELECTRON_PLAYBACK_CHARS_PER_S for streamed replies without tools or JSON)
    playback_chars_per_s: float | None = Field(default=None, ge=0, le=1000)
    # vLLM's prompt logprobs: declared so that asking for them is refused clearly.
    prompt_logprobs: int | None = None


# --- response --------------------------------------------------------------------


class _Out(BaseModel):
    """Response models are dumped with ``exclude_unset``: a field given explicitly
    (even as None, like ``finish_reason: null``) is sent, one left out is not."""


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Out):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ResponseMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Out):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(_Out):
    cached_tokens: int
    audio_tokens: int = 0


class CompletionTokensDetails(_Out):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    service_tier: str | None = None


class ChoiceDelta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Out):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(_Out):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(_Out):
    message: str
    type: str
    param: str | None
    code: str | None
    request_id: str


class ErrorResponse(_Out):
    error: ErrorBody
