"""Tool calls, filler phrases and response_format through the gateway in process
(real tokenizer, template and dialect; a scripted engine plays the model's text)."""

import json

import openai
import pytest

from gateway.tools.filler import phrase_bank

from tests.support.chat import CALL, TIME, WEATHER, post, sse_events

TWO_CALLS = CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
ENGLISH = phrase_bank()["en"]


def streamed_message(events):
    """Rebuild the assistant message from chunks as the OpenAI SDK does, checking
    that no chunk carries both content and tool calls and that each call comes whole."""
    content, calls, finish = "", {}, None
    for event in events:
        if event == "[DONE]" or not event["choices"]:
            continue
        choice = event["choices"][0]
        delta = choice["delta"]
        assert not (delta.get("content") and delta.get("tool_calls")), "content and tool_calls in one chunk"
        content += delta.get("content") or ""
        assert len(delta.get("tool_calls") or []) <= 1, "one tool-call entry per chunk"
        for piece in delta.get("tool_calls") or []:  # each call whole, in one delta, once
            assert piece["index"] == len(calls) and set(piece) == {"index", "id", "type", "function"}
            assert piece["id"].startswith("call_") and piece["type"] == "function"
            json.loads(piece["function"]["arguments"])
            calls[piece["index"]] = {"id": piece["id"], "name": piece["function"]["name"],
                                     "arguments": piece["function"]["arguments"]}
        finish = choice.get("finish_reason") or finish
    return content, [calls[i] for i in sorted(calls)], finish


def whole_message(body):
    message = body["choices"][0]["message"]
    calls = [{"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
             for c in message.get("tool_calls") or []]
    return message["content"] or "", calls, body["choices"][0]["finish_reason"]


async def both(client, **fields):
    whole = await post(client, **fields)
    assert whole.status_code == 200, whole.text
    stream = await post(client, stream=True, **fields)
    assert stream.status_code == 200, stream.text
    return whole_message(whole.json()), sse_events(stream.text)


def without_ids(message):
    content, calls, finish = message
    return content, [(c["name"], c["arguments"]) for c in calls], finish


async def test_a_call_after_some_words_goes_out_whole_and_matches_the_non_streamed_message(client, say, engine):
    say("Sure, checking. " + CALL)
    whole, events = await both(client, tools=[WEATHER])
    streamed = streamed_message(events)
    assert without_ids(whole) == without_ids(streamed) == (
        "Sure, checking. ", [("get_weather", '{"city": "Pune"}')], "tool_calls")
    call_chunks = [e for e in events if e != "[DONE]" and e["choices"] and e["choices"][0]["delta"].get("tool_calls")]
    assert len(call_chunks) == 1  # the call goes out whole, once it is complete
    assert json.loads(whole[1][0]["arguments"]) == {"city": "Pune"}
    assert engine.calls[0].request.guide_type == "ebnf_grammar"


async def test_a_call_with_nothing_said_first_gets_a_filler_phrase_before_it(client, say):
    say(TWO_CALLS)
    whole, events = await both(client, tools=[WEATHER, TIME])
    content, calls, finish = streamed_message(events)
    assert content in ENGLISH and whole[0] in ENGLISH and finish == "tool_calls"
    assert [c["name"] for c in calls] == ["get_weather", "get_time"] and [c["arguments"] for c in calls] == [
        '{"city": "Pune"}', "{}"]
    assert len({c["id"] for c in calls}) == 2
    first_content = next(i for i, e in enumerate(events) if e["choices"] and e["choices"][0]["delta"].get("content"))
    first_call = next(i for i, e in enumerate(events) if e["choices"] and e["choices"][0]["delta"].get("tool_calls"))
    assert first_content < first_call


async def test_no_filler_without_a_tool_call(client, say):
    say("It is sunny in Pune today.")
    whole, events = await both(client, tools=[WEATHER])
    assert whole == ("It is sunny in Pune today.", [], "stop") and streamed_message(events)[0] == whole[0]


async def test_filler_in_the_callers_language_and_off_on_request(client, say):
    say(CALL)
    r = await client.post("/v1/chat/completions", json={
        "model": "electron", "tools": [WEATHER], "messages": [{"role": "user", "content": "कल पुणे में मौसम कैसा रहेगा?"}]})
    assert r.json()["choices"][0]["message"]["content"] in phrase_bank()["hi"]
    r = await post(client, tools=[WEATHER], filler="off")
    assert r.json()["choices"][0]["message"]["content"] is None


async def test_a_call_cut_by_max_tokens_is_length_and_no_broken_call(client, say, model):
    say(CALL)
    cut = len(model.codec.encode(CALL)) - 3
    whole = (await post(client, tools=[WEATHER], max_tokens=cut)).json()["choices"][0]
    assert whole["finish_reason"] == "length" and "tool_calls" not in whole["message"]


async def test_a_complete_call_then_one_cut_by_max_tokens_ends_as_tool_calls(client, say, model):
    # LiveKit runs collected calls only on finish_reason tool_calls/stop; Pipecat fails on cut arguments.
    ids = say(CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    cut = len(model.codec.encode(CALL)) + 6  # inside the second call
    whole, events = await both(client, tools=[WEATHER, TIME], max_tokens=cut, stream_options={"include_usage": True})
    streamed = streamed_message(events)
    assert without_ids(whole)[1:] == without_ids(streamed)[1:] == ([("get_weather", '{"city": "Pune"}')], "tool_calls")
    usage = [e for e in events if e != "[DONE]" and e.get("usage")][-1]["usage"]
    assert usage["completion_tokens"] == cut < len(ids)  # every generated token is billed


async def test_a_call_that_repeats_an_earlier_one_ends_the_choice(client, say, engine):
    say(CALL + "\n" + CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    whole, events = await both(client, tools=[WEATHER, TIME], stream_options={"include_usage": True})
    assert without_ids(whole)[1:] == without_ids(streamed_message(events))[1:] == (
        [("get_weather", '{"city": "Pune"}')], "tool_calls")
    assert engine.calls[-1].abandoned  # the engine request is cancelled at the repeat
    usage = [e for e in events if e != "[DONE]" and e.get("usage")][-1]["usage"]
    assert usage["completion_tokens"] == engine.calls[-1].responses_sent  # one token per response


async def test_a_call_whose_arguments_break_its_schema_is_never_sent(client, say):
    say('<tool_call>\n{"name": "get_weather", "arguments": {"town": "Pune"}}\n</tool_call>\n' + CALL)
    whole, events = await both(client, tools=[WEATHER])
    assert without_ids(whole)[1:] == without_ids(streamed_message(events))[1:] == (
        [("get_weather", '{"city": "Pune"}')], "tool_calls")


async def test_forced_call_sends_its_filler_before_the_engines_first_token(model):
    from gateway.chat.chat_request import ChatLimits, prepare_chat
    from gateway.chat.wire_request import parse_body
    from gateway.chat.completion import CompletionRun

    from tests.app.scripted_engine import Script, ScriptedEngine

    engine = ScriptedEngine(script=Script(tokens=model.codec.encode(CALL)))
    limits = ChatLimits("electron", 8192, model.artifacts.vocab_size, 50, 2, 2)
    body = {"model": "electron", "tools": [WEATHER], "tool_choice": "required", "stream": True,
            "messages": [{"role": "user", "content": "Weather in Pune?"}]}
    prepared = prepare_chat(parse_body(json.dumps(body).encode()), limits, model.template, model.codec)
    deltas = CompletionRun(engine, prepared, "req_t", model.codec.token_bytes, 16).deltas()
    first = await deltas.__anext__()
    assert first.content in ENGLISH and all(c.responses_sent == 0 for c in engine.calls)  # no token yet
    rest = [d async for d in deltas]
    assert not any(d.content for d in rest) and rest[-1].finish_reason == "tool_calls"


async def test_the_sdk_reads_streamed_tool_calls(app, say):
    import httpx2

    say("Let me see. " + CALL)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway")
    sdk = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="k", http_client=http)
    stream = await sdk.chat.completions.create(model="electron", messages=[{"role": "user", "content": "Pune?"}],
                                               tools=[WEATHER], stream=True)
    names, args = [], ""
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function.name:
                names.append(call.function.name)
            args += call.function.arguments or ""
    assert names == ["get_weather"] and json.loads(args) == {"city": "Pune"}
    whole = await sdk.chat.completions.create(model="electron", messages=[{"role": "user", "content": "Pune?"}],
                                              tools=[WEATHER])
    assert whole.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert whole.choices[0].finish_reason == "tool_calls"
    await http.aclose()


@pytest.mark.parametrize("fmt", [{"type": "json_object"},
                                 {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}])
async def test_response_format_is_sent_to_the_engine_as_a_guide(client, say, engine, fmt):
    say('{"a": 1}')
    r = await post(client, response_format=fmt)
    assert r.status_code == 200 and json.loads(r.json()["choices"][0]["message"]["content"]) == {"a": 1}
    assert engine.calls[0].request.guide_type == "json_schema"


def test_with_auto_the_filler_goes_out_as_soon_as_the_call_marker_is_written(model):
    from gateway.chat.choice_stream import ChoiceStream, ToolMode
    from gateway.tools.tool_dialect import dialects

    choice = ChoiceStream(model.codec.token_bytes, [], 100, tools=ToolMode(dialects()["hermes"], False, "One moment."))
    marker = len(model.codec.encode("<tool_call>\n"))
    for fed, token in enumerate(model.codec.encode(CALL), start=1):  # noqa: B007 - read after the loop
        delta = choice.feed([token])
        if delta is not None and delta.content:
            assert delta.content == "One moment." and not delta.tool_calls
            break
    assert fed <= marker + 1  # before the call's name is known
