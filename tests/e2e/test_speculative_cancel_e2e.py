"""What LiveKit sends by default: a speculative ("preemptive") request as soon as a transcript
looks final, cancelled when the caller goes on speaking, often before its first token and in
the middle of its prefill (here: as soon as the engine's metrics show its prefill under way).
Real tritonserver, real gateway process, raw HTTP for the hang-up and the official ``openai``
SDK for the call's next request. No mocks.

The cancel must take effect in the engine at once (its prefill runs in short steps, and the
engine checks for cancellation before every step), the prompt blocks it computed stay in the
prefix cache for the call's next request, and its usage row bills what the engine did for it.
"""

import json
import random
import socket
import time

import openai
import pytest

from tests.support.stack import Stack
from tests.e2e.triton_client import measure_prefill_seconds_per_token, read_metrics, wait_until_engine_idle

pytestmark = pytest.mark.e2e
MODEL = "electron"
WORDS = ("account balance transfer card branch loan savings mortgage statement payment deposit interest "
         "customer agent verify identity policy fraud alert limit overdraft schedule appointment refund").split()
CACHED_PRICE_MICRO = 100_000  # ELECTRON_PRICE_CACHED_INPUT_PER_MILLION=0.10, the default
# the engine's metrics reach Triton's port every 0.25 s (model.py's exporter); the engine itself
# drops a cancelled request within one short step (~0.1 s) plus the 20 ms cancellation check
CANCEL_BOUND_S = 1.0  # generous; before short steps the engine went on for ~3 s (a 512-token step)


def _system_prompt(tokenizer, tokens: int) -> str:
    """A new system prompt (nothing of it cached) of about ``tokens`` tokens."""
    rng = random.Random(time.time_ns())
    words = [f"Rule {rng.randrange(10**6)}: you are the bank's voice agent."]
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False).ids) < tokens:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def _post(root: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    host, port = root.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _when_cancelled(port: int, before: dict[str, float], limit_s: float = 10.0) -> float:
    """Seconds until the engine's metrics show the cancel and nothing running."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        now = read_metrics(port)
        if (now["electron_engine_cancellations_total"] > before["electron_engine_cancellations_total"]
                and now["electron_engine_running"] == 0):
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"the engine still runs the cancelled request {limit_s:.0f} s after the hang-up: {now}")


def _prefill_started(port: int, before: dict[str, float], limit_s: float = 30.0) -> dict[str, float]:
    """The engine's metrics once they show prompt tokens prefilled since ``before``."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        now = read_metrics(port)
        if now["electron_engine_prefill_tokens_total"] > before["electron_engine_prefill_tokens_total"]:
            return now
        time.sleep(0.01)
    raise AssertionError(f"the engine prefilled nothing {limit_s:.0f} s after the request: {now}")


async def test_a_speculative_request_cancelled_during_its_prefill_stops_at_once_and_its_work_is_reused_and_billed(
        triton, tmp_path, tokenizer):
    port = triton.triton_metrics_port
    # ~800 tokens, or more where the engine prefills them in under 1.5 s: the caller hangs up
    # once the engine's metrics show the prefill under way (exported every 0.25 s), still mid-prefill
    system_tokens = max(780, round(1.5 / await measure_prefill_seconds_per_token(triton, tokenizer)))
    system = _system_prompt(tokenizer, system_tokens)
    user = "I would like to check my account balance and then move some money to savings, please."
    speculative = {"model": MODEL, "messages": [{"role": "system", "content": system},
                                                {"role": "user", "content": user}],
                   "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 150,
                   "temperature": 0.8, "parallel_tool_calls": True, "prompt_cache_key": "call-1"}
    stack = Stack(triton, tmp_path)
    try:
        root = stack.start()
        wait_until_engine_idle(port)
        before = read_metrics(port)
        connection = _post(root, speculative)
        during = _prefill_started(port, before)  # the caller goes on speaking: LiveKit cancels the request
        connection.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing came back: no header, no first token
            connection.recv(1)
        connection.close()
        latency = _when_cancelled(port, before)
        prefilled = during["electron_engine_prefill_tokens_total"] - before["electron_engine_prefill_tokens_total"]
        assert during["electron_engine_running"] == 1 and prefilled < system_tokens, during  # cancelled mid-prefill
        assert latency < CANCEL_BOUND_S, f"the engine went on {latency:.2f} s after the hang-up"

        # the call's next request: the same system prompt, the caller's longer turn
        client = openai.OpenAI(base_url=root + "/v1", api_key="none", max_retries=0, timeout=120)
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[*speculative["messages"], {"role": "user", "content": "Actually, first the card."}],
            stream=True, stream_options={"include_usage": True}, max_completion_tokens=8, temperature=0))
        usage = chunks[-1].usage
        time.sleep(1.5)  # the ledger writes every second
    finally:
        stack.stop()
    cancelled, nxt = await stack.rows()
    assert cancelled["status"] == "cancelled" and cancelled["completion_tokens"] == 0 and cancelled["ttft_ms"] is None
    computed = cancelled["prompt_tokens"] - cancelled["cached_tokens"]
    assert computed > 0, cancelled  # the prompt tokens the engine computed for it, as far as the gateway heard
    assert cancelled["prompt_tokens"] < usage.prompt_tokens
    # the default policy: every prompt token it had the engine take in, at the cached-input price
    assert (cancelled["cost_input_pico"], cancelled["cost_output_pico"]) == (0, 0)
    assert cancelled["cost_pico"] == cancelled["cost_cached_input_pico"] == cancelled["prompt_tokens"] * CACHED_PRICE_MICRO
    # its blocks stayed in the cache: the next request reads them (4 tokens a block)
    assert usage.prompt_tokens_details.cached_tokens >= cancelled["prompt_tokens"] // 4 * 4 > 0
    assert (nxt["prompt_tokens"], nxt["cached_tokens"]) == (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens)
    print(f"cancel took effect {latency * 1e3:.0f} ms after the hang-up (metrics export every 250 ms); "
          f"the cancelled request computed {computed} of its prompt tokens; the next request had "
          f"{usage.prompt_tokens_details.cached_tokens} of {usage.prompt_tokens} cached")
