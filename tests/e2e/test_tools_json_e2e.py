"""Tools, filler phrases and JSON output through the whole stack (real tritonserver,
real gateway) with the official ``openai`` SDK. No mocks: the embedded model writes
every token, the engine's guides keep it to the form asked for."""

import json
import uuid

import jsonschema
import openai
import pytest

from gateway.tools.filler import phrase_bank

pytestmark = pytest.mark.e2e
MODEL = "electron"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name", "maxLength": 40},
        "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", None]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
BOOKING = {"type": "function", "function": {
    "name": "book_table", "description": "Book a restaurant table.",
    "parameters": {"type": "object", "properties": {"people": {"type": "integer", "minimum": 1, "maximum": 20},
                                                    "time": {"type": "string", "maxLength": 20}},
                   "required": ["people", "time"], "additionalProperties": False}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, BOOKING)}


@pytest.fixture(scope="module")
def sdk(gateway):
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-anything", max_retries=0, timeout=120)
    yield client
    client.close()


def user(text):
    return [{"role": "system", "content": "You are a phone assistant for a restaurant."},
            {"role": "user", "content": text}]


def valid_calls(message):
    calls = message.tool_calls or []
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return calls


def test_a_forced_call_has_valid_arguments_for_a_strict_schema_and_a_filler(sdk):
    r = sdk.chat.completions.create(model=MODEL, messages=user("What's the weather in Paris?"), tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                    temperature=0, max_tokens=60)
    calls = valid_calls(r.choices[0].message)
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.content in phrase_bank()["en"]


def test_auto_once_the_model_opens_a_call_the_rest_is_a_valid_call(sdk):
    # The 135M embedded model does not decide to call a tool by itself (tried with several
    # phrasings and system prompts), but it copies text: asked to write a call, it writes the
    # "<tool_call>" marker, and from there the guide holds it to a valid call of a given tool
    # (trigger-then-constrain): "unit", missing from the text it copies, is required.
    text = 'Write this line exactly: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    stream = sdk.chat.completions.create(model=MODEL, tools=[WEATHER, BOOKING], temperature=0, max_tokens=80,
                                         parallel_tool_calls=False, stream=True,
                                         messages=[{"role": "user", "content": text}])
    kinds, content, arguments, names, finish = [], "", "", [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            kinds.append("content")
            content += delta.content
        for call in delta.tool_calls or []:
            kinds.append("call")
            names += [call.function.name] if call.function.name else []
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), SCHEMAS["get_weather"])
    assert content in phrase_bank()["en"] and kinds[0] == "content"  # the filler, as the block started


def test_no_filler_and_no_call_when_no_tool_is_needed(sdk):
    r = sdk.chat.completions.create(model=MODEL, tools=[WEATHER], temperature=0, max_tokens=30,
                                    messages=user("Hello! How are you today?"))
    message = r.choices[0].message
    assert not message.tool_calls and r.choices[0].finish_reason in ("stop", "length")
    assert message.content and not any(p in message.content for ps in phrase_bank().values() for p in ps)


@pytest.mark.parametrize("parallel", [False, True])
def test_parallel_tool_calls(sdk, parallel):
    r = sdk.chat.completions.create(model=MODEL, tools=[WEATHER, BOOKING], tool_choice="required",
                                    parallel_tool_calls=parallel, temperature=0, max_tokens=200,
                                    messages=user("Weather in Paris and in Rome, and a table for two at 8pm."))
    calls = valid_calls(r.choices[0].message)
    assert len({c.id for c in calls}) == len(calls) >= 1
    assert r.choices[0].finish_reason == "tool_calls"  # also when max_tokens cut a later call
    assert len({(c.function.name, c.function.arguments) for c in calls}) == len(calls)  # a repeat ends the choice
    if not parallel:  # the guide ends the output after one call
        assert len(calls) == 1


def test_streamed_tool_calls_rebuild_to_the_non_streamed_message(sdk):
    kwargs = dict(model=MODEL, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=60,
                  parallel_tool_calls=False,
                  messages=user("What's the weather in Madrid?"), extra_body={"filler": "off"})
    sdk.chat.completions.create(**kwargs)  # the same cached prefix for both (see test_gateway_openai.warm)
    whole = sdk.chat.completions.create(**kwargs).choices[0].message
    chunks = list(sdk.chat.completions.create(stream=True, **kwargs))
    pieces, finish = {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        assert not (delta.content and delta.tool_calls)
        for call in delta.tool_calls or []:
            assert call.index not in pieces and call.id and json.loads(call.function.arguments) is not None
            pieces[call.index] = {"name": call.function.name, "arguments": call.function.arguments}
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and whole.content is None
    assert [(p["name"], p["arguments"]) for p in pieces.values()] == [
        (c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) == 1  # the call, whole, once


def test_multi_turn_with_a_tool_result(sdk):
    messages = user("What's the weather in Paris?") + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc123", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature": 18, "sky": "sunny"}'}]
    r = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=40)
    assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls
    assert "18" in r.choices[0].message.content or "sunny" in r.choices[0].message.content.lower()
    with pytest.raises(openai.BadRequestError) as bad:  # a result for a call that was never made
        sdk.chat.completions.create(model=MODEL, messages=messages[:2] + [messages[3]], tools=[WEATHER])
    assert bad.value.body["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize("language, text", [
    ("en", "Can you check the weather in London for me?"),
    ("es", "¿Puedes decirme qué tiempo hace en Madrid hoy?"),
    ("hi", "क्या आप मुझे दिल्ली का आज का मौसम बता सकते हैं?"),
    ("ta", "சென்னையில் இன்று வானிலை எப்படி இருக்கிறது என்று சொல்ல முடியுமா?"),
])
def test_the_filler_is_in_the_callers_language_and_goes_out_first(sdk, language, text):
    stream = sdk.chat.completions.create(model=MODEL, messages=user(text), tools=[WEATHER], tool_choice="required",
                                         temperature=0, max_tokens=60, stream=True)
    content, first_kind = "", None
    for chunk in stream:
        if chunk.choices and first_kind is None:
            delta = chunk.choices[0].delta
            first_kind = "content" if delta.content else "tool_calls" if delta.tool_calls else None
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
    assert first_kind == "content" and content in phrase_bank()[language]


def test_json_object_and_json_schema_replies_parse_and_validate(sdk):
    # greedy replies of this 135M model sometimes loop inside a JSON string until max_tokens (which
    # near-tie wins depends on the batch around it): a reply cut by the length is allowed, as in
    # OpenAI's API, but it is still JSON from its first character; every reply that closes parses
    # (of these ten, 1-2 closed here); a reply that copies a given document closes
    stopped = 0
    for ask in ("Reply in JSON with the keys open and close.", "Give today's opening hours as JSON.",
                "Reply in JSON: is the kitchen open now?", "Reply with the table's number as JSON.",
                "Answer in JSON: do you take card payments?"):
        for temperature in (0.0, 0.7):
            r = sdk.chat.completions.create(model=MODEL, messages=user(ask), response_format={"type": "json_object"},
                                            temperature=temperature, seed=3, max_tokens=150)
            content, reason = r.choices[0].message.content, r.choices[0].finish_reason
            assert content.startswith("{") and reason in ("stop", "length"), (content, reason)
            if reason == "stop":
                assert isinstance(json.loads(content), dict)
                stopped += 1
    print(f"json_object: {stopped} of 10 replies closed")
    # one it can copy closes: the grammar lets the document end
    r = sdk.chat.completions.create(model=MODEL, messages=user('Reply with exactly this JSON: {"open": 9, "close": 17}'),
                                    response_format={"type": "json_object"}, temperature=0, max_tokens=150)
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert set(json.loads(r.choices[0].message.content)) == {"open", "close"}
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                               "party_size": {"type": "integer", "minimum": 1, "maximum": 12},
                                               "vegetarian": {"type": "boolean"}},
              "required": ["name", "party_size", "vegetarian"], "additionalProperties": False}
    r = sdk.chat.completions.create(
        model=MODEL, messages=user("Book for Priya, four people, vegetarian. Reply with the booking as JSON."),
        response_format={"type": "json_schema", "json_schema": {"name": "booking", "strict": True, "schema": schema}},
        temperature=0.7, seed=7, max_tokens=80)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=user("x"), response_format={
            "type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "array", "uniqueItems": True}}})
    assert "uniqueItems" in bad.value.body["message"] and bad.value.body["param"] == "response_format.json_schema.schema"


def test_indic_enum_values_stream_back_byte_exact(sdk):
    sentences = ["आज मौसम बहुत सुहावना है।", "இன்று வானிலை மிகவும் இனிமையாக உள்ளது.", "আজ আবহাওয়া খুব মনোরম।"]
    schema = {"type": "object", "properties": {"greeting": {"enum": sentences}}, "required": ["greeting"],
              "additionalProperties": False}
    for seed in range(3):
        chunks = list(sdk.chat.completions.create(
            model=MODEL, messages=user(f"Pick a greeting ({uuid.uuid4().hex[:6]})."), stream=True, seed=seed,
            temperature=1.0, max_tokens=120,
            response_format={"type": "json_schema", "json_schema": {"name": "g", "schema": schema}}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "\ufffd" not in text
        value = json.loads(text)["greeting"]
        assert value in sentences and value.encode() == sentences[sentences.index(value)].encode()
