"""Drives the real LiveKit Agents OpenAI plugin (``livekit.plugins.openai.LLM``)
against a running electron gateway, as a voice agent does, and prints what the
agent saw as one JSON object on the last line of stdout.

Run with .venv-clients' Python: ``drive_livekit.py BASE_URL METRICS_URL``.
Tool calls are run the way an ``AgentSession`` runs them
(``livekit.agents.llm.utils.execute_function_call``), so ``ran`` lists the calls
the agent really executed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Literal

from livekit.agents import function_tool, llm
from livekit.agents.llm.utils import execute_function_call
from livekit.plugins import openai as lk_openai

import engine_metrics

# A complete call, then a second one cut by the token limit at different points; 48 is the
# limit the failing LiveKit agent used.
CUTOFF_RUNS = [(limit, 0.0) for limit in (36, 40, 44, 48, 52, 56)]
TWO_CITIES = "What's the weather in Paris and in London, in celsius?"

ran: list[dict] = []


@function_tool
async def get_weather(city: str, unit: Literal["c", "f"]) -> str:
    """Current weather for a city.

    Args:
        city: The city's name.
        unit: c for Celsius, f for Fahrenheit.
    """
    ran.append({"city": city, "unit": unit})
    return f"{city}: 18 degrees {unit}, sunny"


def context(user: str) -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are a phone assistant. Keep answers short.")
    ctx.add_message(role="user", content=user)
    return ctx


async def turn(model: lk_openai.LLM, ctx: llm.ChatContext, interrupt_after: int | None = None, **options) -> dict:
    """One LLM turn: text, the tool calls the agent ran, usage; closed early (as a
    barge-in does) after ``interrupt_after`` chunks with text."""
    ran.clear()
    text, calls, usage, texts = "", [], None, 0
    first_kind = None
    async with model.chat(chat_ctx=ctx, **options) as stream:
        async for chunk in stream:
            if chunk.usage is not None:
                usage = {"prompt": chunk.usage.prompt_tokens, "completion": chunk.usage.completion_tokens,
                         "cached": chunk.usage.prompt_cached_tokens}
            if chunk.delta is None:
                continue
            if chunk.delta.content:
                first_kind = first_kind or "text"
                text += chunk.delta.content
                texts += 1
            if chunk.delta.tool_calls:
                first_kind = first_kind or "tool_calls"
                calls += chunk.delta.tool_calls
            if interrupt_after is not None and texts >= interrupt_after:
                break  # leaving the block closes the stream: the HTTP request goes away
    tool_ctx = llm.ToolContext([get_weather])
    for call in calls:
        await execute_function_call(call, tool_ctx)
    return {"text": text, "first": first_kind, "usage": usage, "ran": list(ran),
            "calls": [{"name": c.name, "arguments": c.arguments} for c in calls]}


async def interrupted(model, ctx, metrics_url: str, **options) -> dict:
    before = await engine_metrics.settled(metrics_url)
    result = await turn(model, ctx, interrupt_after=1, **options)
    result["engine"] = await engine_metrics.after_hang_up(metrics_url, before)
    return result


async def main(base_url: str, metrics_url: str) -> dict:
    def model(**options) -> lk_openai.LLM:
        return lk_openai.LLM(base_url=base_url, api_key="sk-livekit", model="electron", **options)

    weather = "What's the weather in Paris in celsius?"
    short = model(max_completion_tokens=48, temperature=0)
    results = {
        "text": [await turn(short, context("Say hello to the caller in one short sentence.")) for _ in range(2)],
        "required": await turn(short, context(weather), tools=[get_weather], tool_choice="required",
                               parallel_tool_calls=False),
        "named": await turn(short, context(weather), tools=[get_weather], parallel_tool_calls=False,
                            tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    }
    follow = context(weather)
    follow.insert(llm.FunctionCall(call_id="call_1", name="get_weather", arguments='{"city": "Paris", "unit": "c"}'))
    follow.insert(llm.FunctionCallOutput(call_id="call_1", name="get_weather", output="Paris: 18 degrees c, sunny",
                                         is_error=False))
    results["follow_up"] = await turn(short, follow, tools=[get_weather])
    long = model(max_completion_tokens=400, temperature=0)
    results["interrupt_text"] = await interrupted(long, context("Tell me a very long story about the sea."),
                                                  metrics_url, extra_kwargs={"extra_body": {"min_tokens": 400}})
    results["interrupt_call"] = await interrupted(long, context(weather), metrics_url, tools=[get_weather],
                                                  tool_choice="required")
    # The case LiveKit users hit: a complete call, then a second one cut by the token limit.
    cutoff = []
    for limit, temperature in CUTOFF_RUNS:
        cut_model = model(max_completion_tokens=limit, temperature=temperature, parallel_tool_calls=True,
                          tool_choice="required")
        for question in (weather, TWO_CITIES):
            cutoff.append({**await turn(cut_model, context(question), tools=[get_weather]), "limit": limit})
    results["cutoff"] = cutoff
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
