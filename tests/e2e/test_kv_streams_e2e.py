"""The engine on per-sequence KV streams (``ELECTRON_KV_LAYOUT=streams``, llama.cpp's
``kv_unified = false``) in a real tritonserver of its own, beside the session's unified one.

In that layout each sequence id has a stream of its own and llama.cpp copies only whole
streams, so the prefix cache shares a system prompt across calls by copying a holder's
stream and cutting it back, and a call's next turn takes over its finished turn's stream
(no copy). Both must give what the unified engine gives: the same greedy tokens (except
at a verified near-tie) and the same reuse; a sequence's room is its stream.
"""

import asyncio
import uuid

import pytest

from gateway.server.triton_launcher import start_triton, stop_triton
from gateway.settings import Settings
from tests.e2e.near_ties import NearTieJudge
from tests.e2e.triton_client import generate, request_inputs, run

pytestmark = pytest.mark.e2e
MODEL = "electron_cpu"
SEQUENCES = 8
STREAM_CELLS = 1024


@pytest.fixture(scope="module")
def streams(tmp_path_factory, triton):
    """A second Triton whose engine runs per-sequence streams (after the session's, which
    chose the CPU paths and weights this one reuses)."""
    settings = Settings.from_env({
        "ELECTRON_RUN_DIR": str(tmp_path_factory.mktemp("run_streams")),
        "ELECTRON_TRITON_GRPC_PORT": "18101",
        "ELECTRON_TRITON_HTTP_PORT": "18103",
        "ELECTRON_TRITON_METRICS_PORT": "18102",
        "ELECTRON_KV_LAYOUT": "streams",
        "ELECTRON_KV_CELLS": str(SEQUENCES * STREAM_CELLS),
        "ELECTRON_MAX_SEQUENCES": str(SEQUENCES),
        "ELECTRON_ADAPTIVE_THREADS": "false",
    })
    process = start_triton(settings)
    yield settings
    assert stop_triton(process) == 0, "tritonserver did not shut down cleanly"


@pytest.fixture(scope="module")
def judge(settings, engine_gguf):
    return NearTieJudge(settings, engine_gguf)


def gen(settings, prompt, max_tokens, **kw):
    return run(generate(settings.triton_grpc_url, MODEL, request_inputs(prompt, max_tokens, **kw)))


def words(n: int) -> str:
    salt = uuid.uuid4().hex
    return " ".join(f"{salt[i % 32]}{w}" for i, w in enumerate(("alpha bravo charlie delta echo " * 200).split()[:n]))


def test_streams_share_a_system_prompt_and_a_calls_history_and_decode_as_unified(streams, triton, tokenizer,
                                                                               chat, judge):
    block = streams.tokens_per_block
    system = words(260)
    first = chat("What is the capital of France?", system=system)
    second = chat("Give me three tips for a job interview.", system=system)
    a = gen(streams, first, 24)
    b = gen(streams, second, 24)  # the system prompt: copied from a's finished stream, cut back
    assert a.error is None and b.error is None
    assert a.reused_blocks == 0
    shared = len(first) - 20  # the ChatML system turn is the same, the user turns differ
    assert b.reused_blocks * block >= shared - 2 * block, (b.reused_blocks, shared)
    turn2 = first + a.tokens + tokenizer.encode("<|im_end|>\n<|im_start|>user\nAnd of Spain?<|im_end|>\n"
                                                "<|im_start|>assistant\n", add_special_tokens=False).ids
    c = gen(streams, turn2, 24)  # a's next turn: its own stream, taken over
    assert c.error is None
    assert c.reused_blocks * block >= len(first) + len(a.tokens) - block
    for prompt, got in ((first, a), (second, b), (turn2, c)):
        unified = gen(triton, prompt, 24)
        judge.assert_same_or_near_tie(prompt, unified.tokens, got.tokens, "unified vs streams")


def test_concurrent_streams_match_their_solo_runs(streams, chat, judge):
    system = words(120)
    prompts = [chat(q, system=system) for q in ("Name a color.", "Name a fruit.", "Name a city.", "Count to five.")]
    solo = [gen(streams, p, 20).tokens for p in prompts]

    async def together():
        return await asyncio.gather(*(generate(streams.triton_grpc_url, MODEL, request_inputs(p, 20))
                                      for p in prompts))

    for prompt, alone, joint in zip(prompts, solo, run(together())):
        assert joint.error is None
        judge.assert_same_or_near_tie(prompt, alone, joint.tokens, "solo vs together on streams")


def test_a_request_longer_than_its_stream_is_refused(streams, chat):
    prompt = chat("Hello!")
    result = gen(streams, prompt, STREAM_CELLS - len(prompt) + 1)
    assert result.error is not None and f"maximum sequence length of {STREAM_CELLS}" in result.error
    assert gen(streams, prompt, 8).error is None
