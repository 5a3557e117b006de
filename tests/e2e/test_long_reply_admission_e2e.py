"""A long reply never shuts out a new caller (issue 21): with one stream decoding at a
~6k-token context and no max_tokens (so it may run to the context's end), new callers without
max_tokens are admitted beside it and beside one another, and each gets its first token while
all of them run: no 503, no wait for KV cells the running replies have not used yet.

Every reply here is paced, as the gateway asks for a voice call's streamed reply, and runs on
until the test ends; each caller comes once the one before it talks ahead of its playhead. So
no caller's prompt waits for another's, and no stream has to keep a rate beside it: what a
caller waits for is its own prefill, on a CPU of any speed. And a caller shut out of the KV
pool by the others' reservations waits until the engine refuses it for overload (a wait in
seconds, past the bound on any CPU), not merely until a caller ahead of it is cancelled.
(Before: callers sent together, cancelled after two tokens, beside an unpaced long reply, with
at most 8 of its steps waited. How many steps their prefills took and whether a stream could
join followed the CPU's speed: 10 steps under load, and refusals on a CPU several times slower.)"""

import asyncio
import time
import uuid

import pytest

from tests.e2e.triton_client import Result, generate, request_inputs, wait_until_engine_idle

pytestmark = pytest.mark.e2e
MODEL = "electron_cpu"
LONG_PROMPT_TOKENS = 5800
CALLERS = 3
CONTEXT = 8192  # the embedded model's context: what the gateway leaves a request without max_tokens
PACE = 15.0  # characters a second: what the gateway asks for a streamed spoken reply


def chatml(tokenizer, user_ids: list[int]) -> list[int]:
    head = tokenizer.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                            add_special_tokens=False).ids
    tail = tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids
    return head + user_ids + tail


def lead_s(stream: Result, tokenizer) -> float:
    """Seconds of speech the stream is ahead of a player that started at its first token."""
    if not stream.arrivals:
        return float("-inf")
    return len(tokenizer.decode(stream.tokens)) / PACE - (time.perf_counter() - stream.arrivals[0][0])


async def until(condition, tasks: list[asyncio.Task], results: list[Result], limit_s: float = 600.0) -> None:
    """Wait for ``condition`` while every request runs (these replies do not end by themselves)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert not any(task.done() for task in tasks), [r.error for r in results]
        assert time.monotonic() < deadline, f"not within {limit_s:.0f} s: {[len(r.tokens) for r in results]} tokens"
        await asyncio.sleep(0.02)


async def scenario(settings, tokenizer):
    url = settings.triton_grpc_url
    salt = uuid.uuid4().hex
    words = " ".join(f"{salt[i % 32]}{w}" for i, w in enumerate(("story of the sea and the ships " * 2000).split()))
    long_prompt = chatml(tokenizer, tokenizer.encode(words, add_special_tokens=False).ids[:LONG_PROMPT_TOKENS])
    budget = CONTEXT - len(long_prompt)
    long = Result()
    tasks = [asyncio.create_task(generate(url, MODEL, request_inputs(
        long_prompt, budget, min_tokens=budget, playback_chars_per_s=PACE), result=long))]
    callers: list[Result] = []
    try:
        await until(lambda: len(long.tokens) >= 200, tasks, [long])  # decoding, at a context past 6k
        for i in range(CALLERS):
            prompt = chatml(tokenizer, tokenizer.encode(f"Hi {salt[:6]} number {i}, can you hear me?",
                                                        add_special_tokens=False).ids)
            callers.append(Result())
            tasks.append(asyncio.create_task(generate(url, MODEL, request_inputs(  # a reply that does not end by itself
                prompt, CONTEXT - len(prompt), min_tokens=CONTEXT - len(prompt), playback_chars_per_s=PACE,
                return_prefill_progress=True), result=callers[-1])))
            await until(lambda: callers[-1].tokens, tasks, [long, *callers])
            # talking ahead of its playhead, past the buffer: resting while a prompt waits
            await until(lambda: lead_s(callers[-1], tokenizer) > settings.playback_buffer_s, tasks, [long, *callers])
        return len(long_prompt) + len(long.tokens), callers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_new_callers_are_served_beside_a_long_reply_without_max_tokens(triton, tokenizer):
    """Each request without max_tokens may run to the end of the 8k context; the 16k-cell pool
    holds two such reservations, so reserving whole contexts kept the second caller waiting
    (until refused). Admission reserves a voice reply's worth of each instead."""
    wait_until_engine_idle(triton.triton_metrics_port)
    context, callers = asyncio.run(scenario(triton, tokenizer))
    print(f"long reply at {context} tokens of context; {CALLERS} new callers' prefills took "
          f"{[len(c.progress) + 1 for c in callers]} steps (a progress report after each chunk but the last), "
          f"engine TTFT {[round(c.ttft_engine_ms) for c in callers]} ms")
    assert context > 6000
    for caller in callers:  # each admitted beside the long reply and the callers before it, all running
        assert caller.error is None and caller.tokens, caller.error  # no server_overloaded, no wait for KV
