"""A long reply never shuts out a new caller (issue 21): with one stream decoding at a
~6k-token context and no max_tokens (so it may run to the context's end), new short
requests without max_tokens are admitted at once and get their first token within their
own prefill plus a step or two, counted in the long stream's steps: no 503, no wait for
KV cells the running replies have not used yet."""

import asyncio
import uuid

import pytest

from tests.e2e.triton_client import Result, generate, request_inputs, wait_until_engine_idle

pytestmark = pytest.mark.e2e
MODEL = "electron_cpu"
LONG_PROMPT_TOKENS = 5800
CALLERS = 3
CONTEXT = 8192  # the embedded model's context: what the gateway leaves a request without max_tokens


def chatml(tokenizer, user_ids: list[int]) -> list[int]:
    head = tokenizer.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                            add_special_tokens=False).ids
    tail = tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids
    return head + user_ids + tail


async def scenario(settings, tokenizer):
    url = settings.triton_grpc_url
    salt = uuid.uuid4().hex
    words = " ".join(f"{salt[i % 32]}{w}" for i, w in enumerate(("story of the sea and the ships " * 2000).split()))
    long_prompt = chatml(tokenizer, tokenizer.encode(words, add_special_tokens=False).ids[:LONG_PROMPT_TOKENS])
    budget = CONTEXT - len(long_prompt)
    long = Result()
    long_task = asyncio.create_task(generate(
        url, MODEL, request_inputs(long_prompt, budget, min_tokens=budget), result=long))
    try:
        while len(long.tokens) < 200:  # decoding, at a context past 6k
            assert not long_task.done(), f"the long reply ended early: {long.error}"
            await asyncio.sleep(0.1)
        prompts = [chatml(tokenizer, tokenizer.encode(f"Hi {salt[:6]} number {i}, can you hear me?",
                                                      add_special_tokens=False).ids) for i in range(CALLERS)]
        steps_before = len(long.arrivals)
        shorts = await asyncio.gather(*(
            generate(url, MODEL, request_inputs(p, CONTEXT - len(p)), stop_after=2) for p in prompts))
        waits = [sum(1 for at, _ in long.arrivals[steps_before:] if s.arrivals and at < s.arrivals[0][0])
                 for s in shorts]
        return len(long_prompt) + len(long.tokens), shorts, waits
    finally:
        long_task.cancel()
        try:
            await long_task
        except asyncio.CancelledError:
            pass


def test_new_callers_are_served_beside_a_long_reply_without_max_tokens(triton, tokenizer):
    """Each request without max_tokens may run to the end of the 8k context; the 16k-cell pool
    holds two such reservations, so reserving whole contexts kept the second caller waiting
    (until refused). Admission reserves a voice reply's worth of each instead."""
    wait_until_engine_idle(triton.triton_metrics_port)
    context, shorts, waits = asyncio.run(scenario(triton, tokenizer))
    print(f"long reply at {context} tokens of context; {CALLERS} new callers waited {waits} of its steps, "
          f"engine TTFT {[round(s.ttft_engine_ms) for s in shorts]} ms")
    assert context > 6000
    for short in shorts:
        assert short.error is None, short.error  # admitted: no server_overloaded, no wait for KV
        assert short.tokens, "a new caller got no token"
    # their own prefills plus a few steps (the later two wait for the first to compute the system
    # prompt they share with it); the long stream decodes a token in every step
    assert max(waits) <= 8, f"new callers waited {waits} steps of the long reply"
