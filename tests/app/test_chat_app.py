"""The gateway in process: real app, real tokenizer and template, a scripted engine."""

import json

import openai
import pytest
import httpx2

from gateway.errors import EngineError, EngineUnavailableError, ServerOverloadedError

from tests.app.asgi_driver import post_and_hang_up
from tests.support.chat import USER, post, sse_events

async def test_non_streaming_completion_has_openai_shape_and_exact_usage(client, say, engine):
    ids = say("Hello there! 👋", reused_blocks=1)
    r = await post(client, max_tokens=50)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "electron" and body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": "Hello there! 👋", "refusal": None},
                      "logprobs": None, "finish_reason": "stop"}
    prompt = len(engine.calls[0].request.prompt)
    assert body["usage"] == {
        "prompt_tokens": prompt, "completion_tokens": len(ids), "total_tokens": prompt + len(ids),
        "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    assert r.headers["x-request-id"].startswith("req_")


async def test_cached_tokens_never_exceed_the_prompt(client, say, engine):
    say("ok", reused_blocks=1000)
    body = (await post(client)).json()
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == body["usage"]["prompt_tokens"]


async def test_stream_framing_role_first_one_id_finish_usage_done(client, say, engine):
    ids = say("नमस्ते! How are you?")
    r = await post(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text_chunks = [c for c in chunks[1:-2]]
    assert all(c["choices"][0]["finish_reason"] is None and c["usage"] is None for c in text_chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in text_chunks) == "नमस्ते! How are you?"
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == len(ids)
    assert usage["prompt_tokens"] == len(engine.calls[0].request.prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_without_include_usage_has_no_usage_field(client, say):
    say("Hi.")
    events = sse_events((await post(client, stream=True)).text)
    assert all("usage" not in c for c in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("options", [{}, {"stop": ["lazy"]}, {"max_tokens": 5}, {"logprobs": True}])
async def test_streaming_equals_non_streaming(client, say, options):
    say("The quick brown fox jumps over the lazy dog. ক্ষমা করবেন।")
    whole = (await post(client, **options)).json()
    events = sse_events((await post(client, stream=True, stream_options={"include_usage": True}, **options)).text)
    chunks = [e for e in events[:-1] if e["choices"]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-2]["usage"] == whole["usage"]
    if options.get("logprobs"):
        streamed = [e for c in chunks if c["choices"][0].get("logprobs") for e in c["choices"][0]["logprobs"]["content"]]
        assert streamed == whole["choices"][0]["logprobs"]["content"]
        assert len(streamed) == whole["usage"]["completion_tokens"]


async def test_length_finish_when_max_tokens_runs_out(client, say, engine):
    say("one two three four five six seven eight")
    body = (await post(client, max_completion_tokens=3)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3 and engine.calls[0].request.max_tokens == 3


async def test_stop_string_cuts_the_text_and_cancels_the_engine_request(client, say, engine):
    ids = say("Sure. Here it is: STOP and the rest that should never be sent")
    body = (await post(client, stop="STOP")).json()
    assert body["choices"][0]["message"]["content"] == "Sure. Here it is: "
    assert body["choices"][0]["finish_reason"] == "stop"
    call = engine.calls[0]
    assert call.abandoned and call.responses_sent < len(ids)
    assert body["usage"]["completion_tokens"] == call.responses_sent


async def test_logprobs_in_openai_shape(client, say):
    ids = say("Yes", logprob=-0.125)
    body = (await post(client, logprobs=True, top_logprobs=0)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == len(ids)
    assert content[0]["logprob"] == -0.125 and content[0]["top_logprobs"] == []
    assert "".join(e["token"] for e in content) == "Yes"


async def test_client_request_id_is_honoured_and_a_bad_one_replaced(client, say):
    say("ok")
    r = await client.post("/v1/chat/completions", json={"model": "electron", "messages": USER},
                          headers={"X-Request-Id": "call-42.turn-3"})
    assert r.headers["x-request-id"] == "call-42.turn-3"
    r = await client.post("/v1/chat/completions", json={"model": "electron", "messages": USER},
                          headers={"X-Request-Id": "bad id with spaces"})
    assert r.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("body, status, code, param", [
    ({"model": "electron", "messages": USER, "n": 3}, 400, None, "n"),
    ({"model": "nope", "messages": USER}, 400, "model_not_found", "model"),
    ({"model": "electron", "messages": USER, "max_tokens": 10_000}, 400, "context_length_exceeded", "messages"),
    ({"model": "electron", "messages": [{"role": "wizard", "content": "x"}]}, 400, None, "messages[0]"),
])
async def test_errors_use_the_envelope(client, body, status, code, param):
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] == param
    assert error["request_id"] == r.headers["x-request-id"]


async def test_a_body_that_is_not_json_is_400(client):
    r = await client.post("/v1/chat/completions", content=b"model=electron",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


async def test_a_body_over_the_limit_is_413(client, settings):
    big = "x" * (settings.max_body_bytes + 1)
    r = await client.post("/v1/chat/completions", json={"model": "electron", "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_unknown_route_and_method_are_enveloped(client):
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_engine_unavailable_is_503(client, engine):
    engine.info_error = EngineUnavailableError("The model server at x is unreachable")
    r = await post(client)
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable_error"


async def test_a_request_the_engine_refuses_for_overload_is_503_with_retry_after(client, say):
    say("hello", error_after=0, error=ServerOverloadedError("The server is at capacity."))
    for stream in (False, True):
        r = await post(client, stream=stream)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "server_overloaded"
        assert r.json()["error"]["type"] == "service_unavailable_error"


async def test_engine_failure_before_the_first_token_is_an_http_error(client, say, engine):
    say("hello", error_after=0, error=EngineError("boom"))
    for stream in (False, True):
        r = await post(client, stream=stream)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"


async def test_engine_failure_mid_stream_is_one_error_event_then_done(client, say):
    say("one two three four", error_after=2, error=EngineUnavailableError("Triton went away"))
    r = await post(client, stream=True)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "engine_unavailable" and "Triton went away" in events[-2]["error"]["message"]
    assert sum(1 for e in events if isinstance(e, dict) and "error" in e) == 1


async def test_hang_up_mid_stream_cancels_the_engine_request(app, say, engine):
    ids = say("a b c d e f g h i j k l m n o p q r s t u v w x y z", delay_s=0.01)
    exchange = await post_and_hang_up(app, "/v1/chat/completions",
                                      {"model": "electron", "messages": USER, "stream": True}, 2)
    assert exchange.status == 200
    call = engine.calls[0]
    assert call.abandoned and 1 <= call.responses_sent < len(ids)


async def test_hang_up_before_a_non_streaming_response_cancels_the_engine_request(app, say, engine):
    ids = say("a b c d e f g h i j k l m n o p", delay_s=0.01)
    exchange = await post_and_hang_up(app, "/v1/chat/completions", {"model": "electron", "messages": USER}, 0)
    call = engine.calls[0]
    assert call.abandoned and call.responses_sent < len(ids)
    assert exchange.body_messages == [] or exchange.status == 499


async def test_models_health_ready_openapi(client, engine):
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["electron"]
    assert set(models["data"][0]) == {"id", "object", "created", "owned_by"}
    assert (await client.get("/v1/models/electron")).json()["id"] == "electron"
    missing = await client.get("/v1/models/gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).status_code == 200
    engine.is_ready = False
    assert (await client.get("/ready")).status_code == 503
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/v1/chat/completions" in doc["paths"]
    assert "ChatCompletionRequest" in doc["components"]["schemas"]


async def test_the_official_sdk_reads_both_shapes(app, say):
    say("Bonjour! Comment ça va?")
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway/v1")
    sdk = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="sk-test", http_client=http)
    whole = await sdk.chat.completions.create(model="electron", messages=USER)
    assert whole.choices[0].message.content == "Bonjour! Comment ça va?"
    stream = await sdk.chat.completions.create(model="electron", messages=USER, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour! Comment ça va?"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="electron", messages=USER, n=2)
    assert info.value.code is None and "Use multiple requests" in info.value.message
    await sdk.close()


async def test_large_bodies_are_prepared_off_the_event_loop_with_the_same_answers(client, say, engine):
    from gateway.api.chat_service import PREPARE_OFF_LOOP_BYTES
    say("Hello")
    small = json.dumps({"model": "electron", "messages": USER, "max_tokens": 5})
    large = small + " " * (PREPARE_OFF_LOOP_BYTES + 1)  # JSON whitespace: the same request in a large body
    answers = []
    for body in (small, large):
        r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0]["message"]["content"])
    assert answers == ["Hello", "Hello"]
    assert engine.calls[0].request.prompt == engine.calls[1].request.prompt
    # a broken body and an over-long prompt in large bodies: the same 400s as small ones
    r = await client.post("/v1/chat/completions", content=b"{" + b" " * (PREPARE_OFF_LOOP_BYTES + 1),
                          headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    huge = " ".join(f"word{i % 97}" for i in range(20000))
    r = await post(client, messages=[{"role": "user", "content": huge}], max_tokens=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert len(engine.calls) == 2
