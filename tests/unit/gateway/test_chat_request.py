"""Request parsing and preparation: schema errors name the field, limits, engine parameters."""

import dataclasses
import json

import pytest

from gateway.chat.chat_request import ChatLimits, prepare_chat, template_messages
from gateway.chat.wire_request import parse_body
from gateway.chat.chat_template import ChatTemplate
from gateway.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError

LIMITS = ChatLimits(served_model="electron", context_window=100, vocab_size=1000, max_messages=3,
                    end_id=2, pad_id=2)
TEMPLATE = ChatTemplate("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                        "{% if add_generation_prompt %}[assistant]{% endif %}")


class CharCodec:
    """One token per character: prompt lengths are easy to reason about."""
    vocab_size = 1000

    def encode(self, text):
        return [ord(c) % 1000 for c in text]


def body(**fields):
    data = {"model": "electron", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(data).encode()


def prepared(**fields):
    return prepare_chat(parse_body(body(**fields)), LIMITS, TEMPLATE, CharCodec())


def refusal(raw: bytes, kind=InvalidRequestError):
    with pytest.raises(kind) as info:
        prepare_chat(parse_body(raw), LIMITS, TEMPLATE, CharCodec())
    return info.value


@pytest.mark.parametrize("raw, param, words", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    (body(temperature=float("nan")), "temperature", None),
    (b'{"messages": []}', "model", "Missing required parameter"),
    (body(messages=[{"role": "robot", "content": "x"}]), "messages[0]", "robot"),
    (body(messages=[{"role": "user"}]), "messages[0].content", "Missing"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0]", "image_url"),
    (body(messages=[{"role": "assistant"}]), "messages[0]", "content' or 'tool_calls"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id", "Missing"),
    (body(temperature=2.5), "temperature", "less than or equal to 2"),
    (body(top_p=1.5), "top_p", "less than or equal to 1"),
    (body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (body(presence_penalty=-3), "presence_penalty", "greater than or equal to -2"),
    (body(stop=7), "stop", None),
    (body(n=2), "n", "Use multiple requests"),
    (body(prompt_logprobs=1), "prompt_logprobs", "not supported"),
    (body(logprobs=True, top_logprobs=3), "top_logprobs", "not supported"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (body(logit_bias={"abc": 1}), "logit_bias", "not a token id"),
    (body(logit_bias={"5000": 1}), "logit_bias", "not a token id"),
    (body(logit_bias={"5": 101}), "logit_bias", "outside"),
    (body(messages=[]), "messages", "at least one"),
    (body(messages=[{"role": "user", "content": "x"}] * 4), "messages", "at most 3"),
])
def test_bad_requests_are_400_naming_the_field(raw, param, words):
    error = refusal(raw)
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.param == param
    if words:
        assert words in error.message, error.message


def test_unknown_model_is_model_not_found():
    error = refusal(body(model="gpt-4o"), ModelNotFoundError)
    assert error.status == 400 and error.code == "model_not_found" and "gpt-4o" in error.message


def test_prompt_plus_output_over_the_context_window_names_the_counts():
    error = refusal(body(max_tokens=90), ContextLengthExceededError)
    prompt = len("[user]hi[assistant]")
    assert error.code == "context_length_exceeded"
    assert f"{prompt + 90} tokens" in error.message and "100 tokens" in error.message


def test_a_prompt_that_fills_the_window_is_refused_even_without_max_tokens():
    error = refusal(body(messages=[{"role": "user", "content": "x" * 90}]), ContextLengthExceededError)
    assert "leaves no room" in error.message


def test_without_max_tokens_the_output_is_capped_by_the_remaining_context():
    p = prepared()
    assert p.engine_request.max_tokens == 100 - p.prompt_tokens


def test_max_completion_tokens_wins_over_max_tokens():
    assert prepared(max_tokens=5, max_completion_tokens=7).engine_request.max_tokens == 7


def test_parameters_reach_the_engine_request():
    p = prepared(temperature=0.3, top_p=0.9, seed=-1, presence_penalty=0.5, frequency_penalty=-0.5,
                 logit_bias={"42": -100}, logprobs=True, top_k=5, min_tokens=2, repetition_penalty=1.1,
                 stop="###", stream=True, stream_options={"include_usage": True}, max_tokens=10)
    r = p.engine_request
    assert (r.temperature, r.top_p, r.top_k, r.min_tokens) == (0.3, 0.9, 5, 2)
    assert r.seed == 2**64 - 1  # OpenAI's signed seed as the engine's UINT64
    assert (r.presence_penalty, r.frequency_penalty, r.repetition_penalty) == (0.5, -0.5, 1.1)
    assert r.logit_bias == {42: -100.0} and r.logprobs and r.end_id == 2 and r.max_tokens == 10
    assert p.stops == ["###"] and p.stream and p.include_usage and p.logprobs


def test_defaults_are_openai_defaults():
    r = prepared().engine_request
    assert (r.temperature, r.top_p, r.top_k, r.seed, r.logprobs) == (1.0, 1.0, 0, None, False)
    p = prepared(stream_options={"include_usage": True})  # without stream: no usage chunk
    assert not p.stream and not p.include_usage


def test_unknown_fields_are_accepted_and_ignored():
    p = prepared(metadata={"a": "b"}, service_tier="auto", prompt_cache_key="k", call={"id": "c"},
                 customer={"number": "+1"}, store=False, parallel_tool_calls=True, user="u1")
    assert p.prompt_tokens > 0


def test_developer_and_mid_conversation_system_messages_render_as_system():
    request = parse_body(body(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "system", "content": "Now in Hindi."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]))
    messages = template_messages(request)
    assert [m["role"] for m in messages] == ["system", "user", "system", "assistant", "tool"]
    assert messages[1]["content"] == "a\nb"
    assert messages[3]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert messages[4]["tool_call_id"] == "call_1"


def test_template_errors_are_the_clients():
    strict = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}")
    with pytest.raises(InvalidRequestError, match="first must be user"):
        prepare_chat(parse_body(body(messages=[{"role": "assistant", "content": "x"}])), LIMITS, strict, CharCodec())


def test_a_text_response_format_needs_no_guide():
    assert prepared(response_format={"type": "text"}).engine_request.guide_type is None


@pytest.mark.parametrize("raw, param", [
    (b'{"model": "electron", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}', "messages[0].content"),
    (b'{"model": "electron", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     "messages[0].content[0].text"),
    (b'{"model": "electron", "messages": [{"role": "user", "content": "ok"}], "stop": ["\\udc00x"]}', "stop[0]"),
    (b'{"model": "electron", "messages": [{"role": "user", "content": "ok"}], "metadata": {"\\ud83d": 1}}',
     "metadata.\ud83d"),
])
def test_a_lone_surrogate_in_any_string_is_a_400(raw, param):
    with pytest.raises(InvalidRequestError) as refused:
        parse_body(raw)
    assert "lone UTF-16 surrogate" in refused.value.message
    if "metadata" not in param:
        assert refused.value.param == param


def test_a_surrogate_pair_is_text_and_passes():
    request = parse_body('{"model": "electron", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \u0928\u092e"}]}'
                         .encode())
    assert request.messages[0].content == "\U0001F600 \u0928\u092e"


def test_top_p_zero_is_accepted_as_greedy_and_tiny_penalties_are_refused():
    assert prepared(top_p=0).engine_request.top_p == pytest.approx(1e-6)
    assert prepared(top_p=1e-300).engine_request.top_p > 0  # never 0 once made a float32
    with pytest.raises(InvalidRequestError) as refused:
        parse_body(body(repetition_penalty=1e-300))
    assert refused.value.param == "repetition_penalty"


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def pace(**fields) -> float:
    limits = dataclasses.replace(LIMITS, context_window=4000)
    return prepare_chat(parse_body(body(max_tokens=10, **fields)), limits, TEMPLATE, CharCodec()) \
        .engine_request.playback_chars_per_s


def test_only_streamed_spoken_replies_are_paced_by_default():
    assert pace(stream=True) == 15.0
    assert pace() == 0.0  # read at once, not played
    assert pace(stream=True, tools=[WEATHER_TOOL]) == 0.0  # a call is not spoken and must come fast
    assert pace(stream=True, response_format={"type": "json_object"}) == 0.0
    assert pace(stream=True, tools=[WEATHER_TOOL], tool_choice="none") == 15.0


def test_a_client_sets_its_own_playback_pace_or_opts_out():
    assert pace(stream=True, playback_chars_per_s=20) == 20.0
    assert pace(stream=True, playback_chars_per_s=0) == 0.0
    assert refusal(body(playback_chars_per_s=-1)).param == "playback_chars_per_s"
