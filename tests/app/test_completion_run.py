"""CompletionRun: when the stream starts, and usage whichever way the run ends."""

from gateway.chat.chat_request import PreparedChat
from gateway.chat.completion import CompletionRun
from gateway.engine.protocol import EngineRequest

from tests.app.scripted_engine import Script, ScriptedEngine


def run_for(model, text, max_tokens=50, stops=(), reused_blocks=0):
    engine = ScriptedEngine(script=Script(tokens=model.codec.encode(text), reused_blocks=reused_blocks))
    prepared = PreparedChat(EngineRequest(prompt=[1] * 40, max_tokens=max_tokens), list(stops), True, True, False)
    return engine, CompletionRun(engine, prepared, "req_test", model.codec.token_bytes, tokens_per_block=16)


async def test_a_held_first_token_still_starts_the_stream_at_once(model):
    engine, run = run_for(model, "I am here.")
    deltas = run.deltas()
    first = await deltas.__anext__()
    assert first.content == "" and first.finish_reason is None
    assert engine.calls[0].responses_sent == 1  # sent with the first token, not after the second
    rest = [d async for d in deltas]
    assert "".join(d.content for d in rest) == "I am here." and rest[-1].finish_reason == "stop"


async def test_a_first_token_with_text_is_the_first_delta(model):
    engine, run = run_for(model, "Hello there")
    first = await run.deltas().__anext__()
    assert first.content and "Hello".startswith(first.content)


async def test_usage_counts_what_was_generated_when_the_client_leaves_early(model):
    engine, run = run_for(model, "one two three four five six", reused_blocks=2)
    deltas = run.deltas()
    await deltas.__anext__()
    await deltas.__anext__()
    await deltas.aclose()  # what a hang-up does
    assert engine.calls[0].abandoned and not run.completed
    assert run.completion_tokens == engine.calls[0].responses_sent == 2
    assert run.prompt_tokens == 40 and run.cached_tokens == 32
