"""The whole stack (real tritonserver + real gateway process) through the official
``openai`` SDK and raw HTTP. No mocks."""

import asyncio
import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest

from tests.e2e.triton_client import prefill_seconds_per_token, read_metrics, wait_until_engine_idle

pytestmark = pytest.mark.e2e
MODEL = "electron"


@pytest.fixture(scope="module")
def sdk(gateway):
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-anything", max_retries=0, timeout=120)
    yield client
    client.close()


def ask(text, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


@pytest.fixture
def warm(sdk, triton):
    """Wait until the engine is idle, then send one short request, so that the requests
    a test compares all read the same cached prefix and decode alone: at temperature 0,
    a prompt prefilled cold and one read from the cache, or one decoded in a batch of
    other sequences, can differ in the last bits and flip a near-tie (see docs/engine.md, "Sampling")."""

    def run(messages):
        wait_until_engine_idle(triton.triton_metrics_port)
        sdk.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=1)

    return run


def collect_stream(stream):
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


MAX_TIE_GAP = 0.5  # log probability; batch-shape noise is far smaller, a real bug far larger


def assert_same_or_near_tie(whole, chunks) -> bool:
    """The streamed reply equals the whole one, or (both asked with ``logprobs``) the two greedy
    paths part at a near-tie: the same context up to there, and the two chosen tokens about as
    likely (llama.cpp's logits differ in the last bits with the batch shape and what the prefix
    cache held, which can flip a near-tie of this small model; docs/engine.md, "Sampling"). Returns
    whether the texts are equal."""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    content = whole.choices[0].message.content
    if text == content:
        return True
    a = whole.choices[0].logprobs.content
    b = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert len(a) == whole.usage.completion_tokens  # one entry per token
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x.token != y.token), None)
    assert at is not None, f"one reply is a cut copy of the other: {content!r} vs {text!r}"
    gap = abs(a[at].logprob - b[at].logprob)
    assert gap < MAX_TIE_GAP, f"replies part at token {at} ({a[at].token!r} vs {b[at].token!r}), gap {gap:.3f}"
    return False


def test_streaming_and_non_streaming_give_the_same_text_at_temperature_0(sdk, warm):
    for question in ("What is the capital of France?", "Give me two tips for a phone interview."):
        warm(ask(question))
        whole = sdk.chat.completions.create(model=MODEL, messages=ask(question), temperature=0, max_tokens=40,
                                            logprobs=True)
        chunks, text = collect_stream(sdk.chat.completions.create(
            model=MODEL, messages=ask(question), temperature=0, max_tokens=40, stream=True, logprobs=True))
        assert whole.choices[0].message.content
        if not assert_same_or_near_tie(whole, chunks):
            continue  # a near-tie: the finish reasons may differ too
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == [whole.choices[0].finish_reason]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert len({c.id for c in chunks}) == 1


def test_include_usage_chunk_is_present_and_exact(sdk, warm, tokenizer):
    system = "You are a concise assistant."
    question = "Name three colours."
    warm(ask(question, system))
    chunks, text = collect_stream(sdk.chat.completions.create(
        model=MODEL, messages=ask(question, system), temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    rendered = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert last.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False).ids)
    whole = sdk.chat.completions.create(model=MODEL, messages=ask(question, system), temperature=0, max_tokens=30)
    assert whole.usage.completion_tokens > 0 and last.usage.completion_tokens > 0
    if whole.choices[0].message.content == text:  # else a near-tie flipped (the streaming test checks that)
        assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_cached_tokens_on_the_second_turn_of_a_call_with_a_long_system_prompt(sdk, settings):
    salt = uuid.uuid4().hex[:8]
    system = (f"[{salt}] You are the phone agent of a dental clinic. " +
              "Answer briefly, be polite, confirm names and times, never give medical advice. " * 12)
    first = sdk.chat.completions.create(model=MODEL, messages=ask("Hi, I need an appointment.", system),
                                        temperature=0, max_tokens=24)
    assert first.usage.prompt_tokens > 200
    assert first.usage.prompt_tokens_details.cached_tokens < 16  # "<|im_start|>system\n[" at most
    history = ask("Hi, I need an appointment.", system) + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tomorrow at ten, please."}]
    second = sdk.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=24)
    cached = second.usage.prompt_tokens_details.cached_tokens
    block = settings.tokens_per_block
    assert cached >= first.usage.prompt_tokens - block and cached % block == 0
    assert cached < second.usage.prompt_tokens


def test_an_immediate_end_of_turn_still_reports_cached_tokens(sdk, settings):
    system = f"[{uuid.uuid4().hex[:8]}] You answer questions about train times. " * 20
    eos_first = {"2": 100}  # <|im_end|>, the end id: the reply ends before its first token
    for turn in range(2):
        r = sdk.chat.completions.create(model=MODEL, messages=ask("When is the next train?", system),
                                        max_tokens=10, logit_bias=eos_first)
        assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == 0
        cached = r.usage.prompt_tokens_details.cached_tokens
        if turn == 0:  # a new system prompt: at most the template's first tokens are shared
            assert cached < 16
        else:
            assert cached >= r.usage.prompt_tokens - settings.tokens_per_block


def test_stop_string_cuts_the_real_output(sdk, warm):
    warm(ask("Count from one to ten in words."))
    whole = sdk.chat.completions.create(model=MODEL, messages=ask("Count from one to ten in words."),
                                        temperature=0, max_tokens=60).choices[0].message.content
    words = whole.split()
    assert len(words) > 4, whole
    stop = words[3]
    cut = sdk.chat.completions.create(model=MODEL, messages=ask("Count from one to ten in words."),
                                      temperature=0, max_tokens=60, stop=[stop])
    assert cut.choices[0].message.content == whole[:whole.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    _, streamed = collect_stream(sdk.chat.completions.create(
        model=MODEL, messages=ask("Count from one to ten in words."), temperature=0, max_tokens=60,
        stop=[stop], stream=True))
    assert streamed == cut.choices[0].message.content


def test_length_finish_and_exact_completion_tokens(sdk):
    r = sdk.chat.completions.create(model=MODEL, messages=ask("Tell me a long story about a dragon."),
                                    temperature=0, max_completion_tokens=7, extra_body={"min_tokens": 7})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7


def test_indic_prompt_streams_without_broken_characters(sdk, warm):
    question = "नमस्ते! कृपया मुझे बताइए कि कल मौसम कैसा रहेगा? மழை பெய்யுமா?"
    warm(ask(question))
    whole = sdk.chat.completions.create(model=MODEL, messages=ask(question), temperature=0, max_tokens=40,
                                        logprobs=True)
    chunks, text = collect_stream(sdk.chat.completions.create(
        model=MODEL, messages=ask(question), temperature=0, max_tokens=40, stream=True, logprobs=True))
    assert_same_or_near_tie(whole, chunks)
    assert "\ufffd" not in whole.choices[0].message.content
    assert all("\ufffd" not in (c.choices[0].delta.content or "") for c in chunks if c.choices)


@pytest.mark.parametrize("kwargs, param, words", [
    ({"n": 2}, "n", "Use multiple requests"),
    ({"extra_body": {"prompt_logprobs": 1}}, "prompt_logprobs", "not supported"),
    ({"logprobs": True, "top_logprobs": 2}, "top_logprobs", "not supported"),
    ({"messages": [{"role": "user", "content": "hi"}] * 201}, "messages", "at most 200"),
    ({"messages": [{"role": "narrator", "content": "hi"}]}, "messages[0]", "narrator"),
    ({"messages": []}, "messages", "at least one"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"top_p": -0.1}, "top_p", "greater than or equal to 0"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"model": "gpt-4o-mini"}, "model", "does not exist"),
    ({"max_tokens": 9000}, "messages", "maximum context length is 8192 tokens"),
])
def test_bad_requests_are_400_through_the_sdk(sdk, kwargs, param, words):
    request = {"model": MODEL, "messages": ask("hi"), **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(**request)
    error = info.value
    assert error.status_code == 400 and error.param == param and words in error.message
    if kwargs.get("max_tokens"):
        assert error.code == "context_length_exceeded"
    assert error.body["request_id"] == error.response.headers["x-request-id"]


def test_raw_http_framing_and_a_body_that_is_not_json(gateway):
    with httpx2.Client(base_url=gateway, timeout=60) as http:
        r = http.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        body = {"model": MODEL, "messages": ask("Say hi."), "stream": True, "max_tokens": 8,
                "stream_options": {"include_usage": True}}
        r = http.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "e2e-raw-1"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "e2e-raw-1" and r.headers["cache-control"] == "no-cache"
        events = r.text.split("\n\n")
        assert events[-1] == "" and events[-2] == "data: [DONE]"
        payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
        assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] >= 1


def test_models_ready_and_openapi(sdk, gateway):
    assert [m.id for m in sdk.models.list().data] == [MODEL]
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4o")
    with httpx2.Client(base_url=gateway) as http:
        assert http.get("/ready").json() == {"status": "ready"}
        assert http.get("/health").status_code == 200
        assert "/v1/chat/completions" in http.get("/openapi.json").json()["paths"]


def test_pipecat_livekit_and_vapi_request_bodies_are_accepted(gateway):
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                       "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}}}}}
    conversation = [
        {"role": "system", "content": "You are a voice assistant. Keep answers short."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "developer", "content": "The caller is in Pune."},
        {"role": "user", "content": [{"type": "text", "text": "What should I wear today?"}]},
    ]
    pipecat = {"model": MODEL, "messages": conversation, "stream": True, "stream_options": {"include_usage": True},
               "max_tokens": 24, "temperature": 0.7, "tools": [weather], "tool_choice": "auto"}
    livekit = {"model": MODEL, "messages": conversation, "stream": True, "stream_options": {"include_usage": True},
               "max_completion_tokens": 24, "tools": [weather], "parallel_tool_calls": True,
               "tool_choice": "auto", "prompt_cache_key": "call-123", "user": "caller-9", "store": False}
    vapi = {"model": MODEL, "messages": conversation, "stream": True, "max_tokens": 24, "temperature": 0,
            "call": {"id": "c1"}, "customer": {"number": "+15550100"}, "metadata": {"k": "v"},
            "phoneNumber": {"id": "p1"}}
    with httpx2.Client(base_url=gateway, timeout=60) as http:
        for body in (pipecat, livekit, vapi):
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.text.endswith("data: [DONE]\n\n") and '"finish_reason":"' in r.text


CANCEL_WITHIN_S = 0.5  # from the hang-up to the engine's last step for it


async def test_hanging_up_mid_stream_stops_the_engine(gateway, triton):
    """A client that hangs up mid-stream: the engine stops within half a second, far short of the
    400 tokens asked for. Counted in tokens at the pace this engine decoded the stream (from the
    tokens the client got, each with its logprob, and when), so the bound is the same on a CPU of
    any speed: a fixed count of tokens is less time where the engine is faster."""
    port = triton.triton_metrics_port
    await asyncio.sleep(0.6)  # metrics are exported every 0.25 s: let earlier requests settle
    before = read_metrics(port)
    body = {"model": MODEL, "messages": ask("Tell me a very long story about the sea."), "stream": True,
            "max_tokens": 400, "min_tokens": 400, "temperature": 0, "logprobs": True}
    arrivals = []  # (monotonic time, tokens) per chunk with tokens
    async with httpx2.AsyncClient(base_url=gateway, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:])["choices"]
                tokens = len((choices[0].get("logprobs") or {}).get("content") or []) if choices else 0
                if tokens:
                    arrivals.append((time.monotonic(), tokens))
                if sum(n for _, n in arrivals) >= 24:
                    break
    hung_up = time.monotonic()
    while True:
        after = read_metrics(port)
        if after["electron_engine_cancellations_total"] > before["electron_engine_cancellations_total"] \
                and after["electron_engine_running"] == 0:
            break
        assert time.monotonic() - hung_up < 5, f"engine still running: {after}"
        await asyncio.sleep(0.05)
    assert after["electron_engine_completed_total"] == before["electron_engine_completed_total"]
    received = sum(n for _, n in arrivals)
    per_s = (received - arrivals[0][1]) / (arrivals[-1][0] - arrivals[0][0])  # this stream's decoding pace
    decoded = ((after["electron_engine_step_tokens_total"] - before["electron_engine_step_tokens_total"])
               - (after["electron_engine_prefill_tokens_total"] - before["electron_engine_prefill_tokens_total"]))
    print(f"hung up after {received} tokens received at {per_s:.0f} tokens/s; the engine decoded {decoded}")
    assert decoded <= received + per_s * CANCEL_WITHIN_S + 2, (decoded, received, per_s)
    assert decoded < 400


def test_requests_the_engine_cannot_start_in_time_get_503_server_overloaded(sdk, triton, tokenizer):
    """Never-seen long prompts at once, each taking 2.5 times the overload bound to prefill on
    this engine (measured first, so on a CPU of any speed): what the engine cannot start within
    its bound is refused at once with 503 and retry-after, through the official SDK."""
    tokens = 2.5 * triton.overload_ttft_s / prefill_seconds_per_token(triton, tokenizer)
    n_words = 50
    while words_tokens(tokenizer, n_words) < tokens:
        n_words += 50
    assert words_tokens(tokenizer, n_words) < 8000, f"{tokens:.0f} prompt tokens wanted: raise the bound"
    wait_until_engine_idle(triton.triton_metrics_port)

    salt = random.randrange(10**9)

    def one(i):
        words = [f"word{j}" for j in range(n_words)]  # tokenized word by word: every order has the same length
        random.Random(salt + i).shuffle(words)
        text = "Words: " + " ".join(words)
        try:
            r = sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=ask(text), max_tokens=2, stream=True)
            return r.http_response.status_code, None, list(r.parse())
        except openai.APIStatusError as exc:
            return exc.status_code, exc, None

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    statuses = sorted(status for status, _, _ in results)
    assert 200 in statuses and 503 in statuses, statuses
    for status, exc, chunks in results:
        if status == 503:
            assert exc.body["code"] == "server_overloaded" and exc.response.headers["retry-after"] == "1"
        else:
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def words_tokens(tokenizer, n_words: int) -> int:
    return len(tokenizer.encode(" ".join(f"word{j}" for j in range(n_words)), add_special_tokens=False).ids)
