"""tools, tool_choice, parallel_tool_calls, response_format and filler: checked,
rendered into the prompt, and turned into the engine's guide."""

import json

import pytest

from gateway.chat.chat_request import ChatLimits, prepare_chat
from gateway.chat.wire_request import parse_body
from gateway.chat.chat_template import ChatTemplate
from gateway.errors import InvalidRequestError
from gateway.tools.filler import phrase_bank
from tests.support.guided import LIMITS, TIME, WEATHER, PromptCodec, run

def refused(**fields):
    with pytest.raises(InvalidRequestError) as info:
        run(**fields)
    return info.value


def test_tools_go_into_the_prompt_and_become_a_guide():
    chat, prompt = run(tools=[WEATHER, TIME])
    assert prompt.startswith("[system]You can call functions") and '"name": "get_weather"' in prompt
    request = chat.engine_request
    assert request.guide_type == "ebnf_grammar" and request.guide.startswith("%llguidance")
    assert "first_trigger[lazy]" in request.guide  # auto: text, or a call once the marker starts
    assert chat.tools is not None and not chat.tools.forced


@pytest.mark.parametrize("choice, forced, grammar_has", [
    ("required", True, 'start: "<tool_call>"'),
    ({"type": "function", "function": {"name": "get_time"}}, True, 'get_time'),
    ("none", False, "start: PLAIN"),
])
def test_tool_choice_shapes_the_guide(choice, forced, grammar_has):
    chat, _ = run(tools=[WEATHER, TIME], tool_choice=choice)
    assert grammar_has in chat.engine_request.guide
    if choice == "none":
        assert chat.tools is None  # no call can come, so no parser and no filler
    else:
        assert chat.tools.forced is forced
    if isinstance(choice, dict):
        assert "get_weather" not in chat.engine_request.guide


def test_tool_choice_none_keeps_a_json_response_format():
    chat, _ = run(tools=[WEATHER], tool_choice="none", response_format={"type": "json_object"})
    assert chat.engine_request.guide_type == "json_schema" and chat.tools is None


def test_parallel_tool_calls_false_allows_one_call():
    more_calls = 'body ("\\n<tool_call>" body)*'
    assert more_calls in run(tools=[WEATHER])[0].engine_request.guide
    assert more_calls not in run(tools=[WEATHER], parallel_tool_calls=False)[0].engine_request.guide


def test_history_with_calls_and_results_is_rendered():
    messages = [{"role": "user", "content": "Weather in Pune?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Pune", "unit": null}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "31 C"}]
    _, prompt = run(messages=messages, tools=[WEATHER])
    assert ('[assistant]<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune", "unit": null}}\n'
            '</tool_call>[user]<tool_response>\n31 C\n</tool_response>[assistant]') in prompt


@pytest.mark.parametrize("fields, param, words", [
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "Duplicate tool name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strang"}}}]},
     "tools[0].function.parameters", "Invalid schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools[0].function", None),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not in 'tools'"),
    ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
     "messages[1].tool_call_id", "call_9"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema",
     "needs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}}},
     "response_format.json_schema.schema", 'cannot be enforced while decoding: Unimplemented keys: ["uniqueItems"]'),
    ({"response_format": {"type": "json_object"}, "tools": [WEATHER]}, "response_format", "together with tools"),
    # found by the fuzz run: an integer past 64 bits in a schema made llguidance raise (a 500)
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "maximum": 304737243227069512941401981114369703936}}}}}]},
     "tools[0].function.parameters", "cannot be enforced while decoding"),
])
def test_bad_tools_and_formats_are_400_naming_the_field(fields, param, words):
    error = refused(**fields)
    assert error.param.startswith(param) if param.endswith("function") else error.param == param
    if words:
        assert words in error.message


def test_response_formats_become_json_guides():
    chat, _ = run(response_format={"type": "json_object"})
    assert (chat.engine_request.guide_type, json.loads(chat.engine_request.guide)) == ("json_schema", {"type": "object"})
    schema = {"type": "object", "properties": {"a": {"enum": ["नमस्ते", "வணக்கம்"]}}, "required": ["a"]}
    chat, _ = run(response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                                                          "schema": schema}})
    assert json.loads(chat.engine_request.guide) == schema and "नमस्ते" in chat.engine_request.guide


@pytest.mark.parametrize("text, language", [("What's the weather in Pune today?", "en"),
                                            ("¿Qué tiempo hará mañana en Madrid?", "es"),
                                            ("कल पुणे में मौसम कैसा रहेगा?", "hi"),
                                            ("நாளை சென்னையில் வானிலை எப்படி இருக்கும்?", "ta")])
def test_the_filler_is_in_the_callers_language(text, language):
    chat, _ = run(messages=[{"role": "user", "content": text}], tools=[WEATHER])
    assert chat.tools.filler in phrase_bank()[language]


def test_the_filler_does_not_repeat_the_previous_turns_and_can_be_set_per_request():
    english = phrase_bank()["en"]
    for said in english:
        history = [{"role": "user", "content": "Weather in Pune?"}, {"role": "assistant", "content": said},
                   {"role": "user", "content": "And in Delhi?"}]
        for _ in range(10):
            assert run(messages=history, tools=[WEATHER])[0].tools.filler not in (said, None)
    assert run(tools=[WEATHER], filler="off")[0].tools.filler is None
    assert run(tools=[WEATHER], filler=["Hang on!"])[0].tools.filler == "Hang on!"
    quiet = ChatLimits(**{**LIMITS.__dict__, "filler_phrases": False})
    assert run(limits=quiet, tools=[WEATHER])[0].tools.filler is None
    assert run(limits=quiet, tools=[WEATHER], filler="on")[0].tools.filler in english


def test_a_template_that_reads_tools_renders_them_itself():
    native = ChatTemplate("{% if tools %}[tools]{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
                          "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]")
    codec = PromptCodec()
    body = {"model": "electron", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER, TIME]}
    chat = prepare_chat(parse_body(json.dumps(body).encode()), LIMITS, native, codec)
    assert codec.text == "[tools]get_weather;get_time;[user]Weather?[assistant]"  # no dialect system block
    assert chat.engine_request.guide_type == "ebnf_grammar"  # calls are still guided (the dialect's form)


def test_a_tool_schema_nested_too_deeply_is_a_400_not_a_recursion_error():
    import json as _json

    from gateway.errors import InvalidRequestError
    from gateway.tools.guided_request import MAX_SCHEMA_DEPTH, _check_schema

    def nested(levels):
        return _json.loads('{"type": "object", "properties": {"a": ' * levels + '{"type": "string"}' + "}}" * levels)

    _check_schema(nested(10), "tools[0].function.parameters")  # 21 levels of containers: fine
    with pytest.raises(InvalidRequestError) as refused:
        _check_schema(nested(200), "tools[0].function.parameters")
    assert f"nested deeper than {MAX_SCHEMA_DEPTH}" in refused.value.message
    assert refused.value.param == "tools[0].function.parameters"
