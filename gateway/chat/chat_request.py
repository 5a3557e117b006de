"""A Chat Completions request, from its parsed body (``wire_request.parse_body``) to the
engine request it becomes.

``prepare_chat`` checks
what needs the served model (its id, context window, vocabulary, message
limit), renders the chat template, tokenizes, and returns a ``PreparedChat``:
the ``EngineRequest`` plus what the gateway itself does with the output (stop
strings, streaming, usage chunk, logprobs).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass


from gateway.chat.chat_template import ChatTemplate
from gateway.chat.choice_stream import ToolMode
from gateway.chat.timeline import Timeline
from gateway.engine.protocol import EngineRequest
from gateway.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from gateway.tools.filler import choose_filler
from gateway.tools.guided_request import (
    check_tool_messages, response_format_guide, tool_plan, tools_guide,
)
from gateway.openai_schema import ChatCompletionRequest, Content
from gateway.chat.token_codec import TokenCodec
from gateway.tools.tool_dialect import dialects

log = logging.getLogger(__name__)

MAX_STOP_STRINGS = 4
_UINT64 = 2**64


@dataclass(frozen=True)
class ChatLimits:
    """What a request is checked against: the served model and the server's limits."""
    served_model: str
    context_window: int  # prompt + output tokens
    vocab_size: int
    max_messages: int
    end_id: int | None
    pad_id: int | None
    filler_phrases: bool = True  # a filler phrase before tool calls unless the request says "off"
    tool_dialect: str = "hermes"  # how tools and calls are written (gateway/tools/data/tool_dialects.json)
    playback_chars_per_s: float = 15.0  # default pace of streamed spoken replies (0: no pacing)
    guide_backend: str = "llguidance"  # the engine's guide compiler (gateway/tools/guided_request.py)


@dataclass(frozen=True)
class PreparedChat:
    engine_request: EngineRequest
    stops: list[str]
    stream: bool
    include_usage: bool
    logprobs: bool
    tools: ToolMode | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.engine_request.prompt)


MIN_TOP_P = 1e-6


def _check_unsupported(request: ChatCompletionRequest) -> None:
    if request.n is not None and request.n > 1:
        raise InvalidRequestError(
            f"n={request.n} is not supported: only one choice per request. Use multiple requests.", param="n")
    if request.prompt_logprobs is not None:
        raise InvalidRequestError("prompt_logprobs is not supported.", param="prompt_logprobs")
    if request.top_logprobs:
        raise InvalidRequestError(
            "top_logprobs > 0 is not supported: logprobs gives the sampled tokens' log probabilities only.",
            param="top_logprobs")


def _check_model(request: ChatCompletionRequest, limits: ChatLimits) -> None:
    if request.model != limits.served_model:
        raise ModelNotFoundError(
            f"The model '{request.model}' does not exist; this server serves '{limits.served_model}'.",
            param="model")
    if not request.messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    if len(request.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(request.messages)} messages; at most {limits.max_messages} are allowed.",
            param="messages")


def _stops(request: ChatCompletionRequest) -> list[str]:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}.",
                                  param="stop")
    return [s for s in stops if s]


def _logit_bias(request: ChatCompletionRequest, vocab_size: int) -> dict[int, float]:
    bias = {}
    for key, value in (request.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id (0 to {vocab_size - 1}).",
                param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise InvalidRequestError(
                f"Invalid value in 'logit_bias' for token {key}: {value} is outside [-100, 100].",
                param="logit_bias")
        bias[int(key)] = float(value)
    return bias


def _text(content: Content | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


def template_messages(request: ChatCompletionRequest) -> list[dict]:
    """Messages as chat templates expect them (Hugging Face's format): ``developer``
    becomes ``system``, content parts are joined, tool-call arguments are parsed."""
    messages = []
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        item: dict = {"role": role, "content": _text(message.content)}
        if message.role == "assistant" and message.tool_calls:
            item["tool_calls"] = [
                {"id": call.id, "type": call.type,
                 "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)}}
                for call in message.tool_calls]
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id
        messages.append(item)
    return messages


def _arguments(arguments: str):
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def _playback_pace(request: ChatCompletionRequest, limits: ChatLimits, spoken: bool) -> float:
    """The pace the reply is played at, for the engine's playback-aware scheduling.
    By default only streamed plain-text replies are paced: a tool call or JSON is
    not spoken and must come whole, fast; a non-streamed reply is read at once."""
    if request.playback_chars_per_s is not None:
        return request.playback_chars_per_s
    return limits.playback_chars_per_s if request.stream and spoken else 0.0


def _max_tokens(request: ChatCompletionRequest, prompt_tokens: int, context_window: int) -> int:
    asked = request.max_completion_tokens or request.max_tokens
    room = context_window - prompt_tokens
    if asked is None:
        if room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context_window} tokens. However, your messages "
                f"resulted in {prompt_tokens} tokens, which leaves no room for the completion. "
                "Please reduce the length of the messages.", param="messages")
        return room
    if prompt_tokens + asked > context_window:
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context_window} tokens. However, you requested "
            f"{prompt_tokens + asked} tokens ({prompt_tokens} in the messages, {asked} in the completion). "
            f"Please reduce the length of the messages or {field}.", param="messages")
    return asked


def prepare_chat(request: ChatCompletionRequest, limits: ChatLimits, template: ChatTemplate,
            codec: TokenCodec, timeline: Timeline | None = None) -> PreparedChat:
    """Checks, renders and tokenizes; raises ``InvalidRequestError`` for anything refused.
    ``timeline``: marked at the end of the template, tokenize and guide stages."""
    mark = timeline.mark if timeline is not None else _no_mark
    _check_unsupported(request)
    _check_model(request, limits)
    stops = _stops(request)
    bias = _logit_bias(request, limits.vocab_size)
    check_tool_messages(request)
    plan = tool_plan(request)
    calling = plan is not None and plan.choice != "none"
    guide = response_format_guide(request)
    spoken = guide is None and not calling  # plain text a caller hears (no JSON, no tool call)
    if calling and guide is not None:
        raise InvalidRequestError("'response_format' json_object or json_schema together with tools that may be "
                                  "called is not supported; use tool_choice 'none', or a tool whose parameters "
                                  "are the schema.", param="response_format")
    dialect = dialects()[limits.tool_dialect]
    messages = template_messages(request)
    tools = plan.tools if plan else None
    text = template.render(messages, tools=tools) if template.supports_tools \
        else template.render(dialect.render_messages(messages, tools))
    mark("template")
    prompt = codec.encode(text)
    mark("tokenize")
    if calling or (plan is not None and guide is None):  # tool_choice none: text that never opens a call
        guide = tools_guide(plan, dialect, limits.guide_backend)
    tool_mode = ToolMode(dialect, plan.forced, _filler(request, limits),
                         {t["function"]["name"]: t["function"].get("parameters") for t in plan.tools}) if calling else None
    engine_request = EngineRequest(
        prompt=prompt,
        max_tokens=_max_tokens(request, len(prompt), limits.context_window),
        end_id=limits.end_id,
        pad_id=limits.pad_id,
        temperature=1.0 if request.temperature is None else request.temperature,
        # OpenAI accepts top_p 0 (only the likeliest token); the engine wants (0, 1] in float32
        top_p=1.0 if request.top_p is None else max(request.top_p, MIN_TOP_P),
        top_k=request.top_k or 0,
        seed=None if request.seed is None else request.seed % _UINT64,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=request.repetition_penalty or 1.0,
        min_tokens=request.min_tokens or 0,
        logit_bias=bias,
        logprobs=bool(request.logprobs),
        guide_type=guide.type if guide else None,
        guide=guide.text if guide else None,
        playback_chars_per_s=_playback_pace(request, limits, spoken),
    )
    mark("guide")
    return PreparedChat(
        engine_request=engine_request,
        stops=stops,
        stream=bool(request.stream),
        include_usage=bool(request.stream and request.stream_options and request.stream_options.include_usage),
        logprobs=bool(request.logprobs),
        tools=tool_mode,
    )


def _no_mark(stage: str) -> None:
    pass


def _filler(request: ChatCompletionRequest, limits: ChatLimits) -> str | None:
    """The filler phrase this request would say before a tool call, or None."""
    setting = request.filler
    if setting == "off" or (setting is None and not limits.filler_phrases):
        return None
    user = next((_text(m.content) for m in reversed(request.messages) if m.role == "user"), "")
    previous = next((_text(m.content) for m in reversed(request.messages) if m.role == "assistant"), "")
    choice = choose_filler(user, previous, custom=setting if isinstance(setting, list) else None)
    log.debug("filler phrase (%s): %s", choice.language or "custom", choice.phrase)
    return choice.phrase
