"""Drives the real Pipecat ``OpenAILLMService`` against a running electron
gateway, inside a Pipecat pipeline as a voice bot runs it, and prints what the
bot saw as one JSON object on the last line of stdout.

Run with .venv-clients' Python: ``drive_pipecat.py BASE_URL METRICS_URL``.
A registered function handler records each call Pipecat really ran.
"""

from __future__ import annotations

import asyncio
import json
import sys

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame, ErrorFrame, FunctionCallResultProperties, InterruptionFrame, LLMContextFrame,
    LLMFullResponseEndFrame, LLMTextFrame, MetricsFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.workers.runner import WorkerRunner

import engine_metrics

# A complete call, then a second one cut by the token limit at different points; 48 is the
# limit the failing LiveKit agent used.
CUTOFF_RUNS = [(limit, 0.0) for limit in (36, 40, 44, 48, 52, 56)]
TWO_CITIES = "What's the weather in Paris and in London, in celsius?"

WARNINGS: list[str] = []  # what Pipecat logged at WARNING or above during the current turn
logger.remove()
logger.add(lambda message: WARNINGS.append(message.record["message"]), level="WARNING")
logger.add(sys.stderr, level="INFO")

WEATHER = FunctionSchema(
    name="get_weather", description="Current weather for a city.",
    properties={"city": {"type": "string", "description": "The city's name."},
                "unit": {"type": "string", "enum": ["c", "f"], "description": "c for Celsius, f for Fahrenheit."}},
    required=["city", "unit"])
SYSTEM = "You are a phone assistant. Keep answers short."
WEATHER_QUESTION = "What's the weather in Paris in celsius?"


class Sink(FrameProcessor):
    """The end of the pipeline: what the bot's later stages (TTS, transport) would get."""

    def __init__(self) -> None:
        super().__init__()
        self.turn: dict = {}
        self.text_event = asyncio.Event()
        self.end_event = asyncio.Event()

    def reset(self) -> None:
        self.turn = {"text": "", "first": None, "usage": None, "errors": [], "ran": []}
        WARNINGS.clear()
        self.text_event.clear()
        self.end_event.clear()

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self.turn["first"] = self.turn["first"] or "text"
            self.turn["text"] += frame.text
            self.text_event.set()
        elif isinstance(frame, MetricsFrame):
            for data in frame.data:
                if isinstance(data, LLMUsageMetricsData):
                    self.turn["usage"] = {"prompt": data.value.prompt_tokens,
                                          "completion": data.value.completion_tokens,
                                          "cached": data.value.cache_read_input_tokens}
        elif isinstance(frame, ErrorFrame):
            self.turn["errors"].append(frame.error)
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.end_event.set()
        await self.push_frame(frame, direction)


class Bot:
    def __init__(self, base_url: str, **settings) -> None:
        self.llm = OpenAILLMService(api_key="sk-pipecat", base_url=base_url,
                                    settings=OpenAILLMService.Settings(model="electron", **settings))
        self.llm.register_function("get_weather", self._get_weather)
        self.sink = Sink()
        self.worker = PipelineWorker(Pipeline([self.llm, self.sink]), cancel_on_idle_timeout=False,
                                     params=PipelineParams(enable_metrics=True, enable_usage_metrics=True))
        self.runner = WorkerRunner()
        self._running: asyncio.Task | None = None
        self._started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def started(worker, frame) -> None:
            self._started.set()

    async def _get_weather(self, params: FunctionCallParams) -> None:
        self.sink.turn["ran"].append(dict(params.arguments))
        self.sink.turn["first"] = self.sink.turn["first"] or "tool_calls"
        await params.result_callback({"temperature": 18, "sky": "sunny"},
                                     properties=FunctionCallResultProperties(run_llm=False))

    async def __aenter__(self) -> "Bot":
        await self.runner.add_workers(self.worker)
        self._running = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(self._started.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._running, 30)

    async def turn(self, messages: list[dict], tools: bool = False, tool_choice=None) -> dict:
        self.sink.reset()
        await self.worker.queue_frame(LLMContextFrame(context(messages, tools, tool_choice)))
        await asyncio.wait_for(self.sink.end_event.wait(), 60)
        await asyncio.sleep(0.2)  # function handlers run after the response's end frame
        return {**self.sink.turn, "warnings": list(WARNINGS)}

    async def interrupted_turn(self, messages: list[dict], metrics_url: str, tools: bool = False,
                               tool_choice=None) -> dict:
        """A turn the caller barges in on at its first text (Pipecat's InterruptionFrame)."""
        before = await engine_metrics.settled(metrics_url)
        self.sink.reset()
        await self.worker.queue_frame(LLMContextFrame(context(messages, tools, tool_choice)))
        await asyncio.wait_for(self.sink.text_event.wait(), 60)
        await self.worker.queue_frame(InterruptionFrame())
        turn = {**self.sink.turn, "warnings": list(WARNINGS)}
        turn["engine"] = await engine_metrics.after_hang_up(metrics_url, before)
        await asyncio.sleep(0.2)
        turn["ran"] = list(self.sink.turn["ran"])
        return turn


def context(messages: list[dict], tools: bool, tool_choice) -> LLMContext:
    options = {"tools": ToolsSchema([WEATHER])} if tools else {}
    if tool_choice is not None:
        options["tool_choice"] = tool_choice
    return LLMContext(messages, **options)


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


async def main(base_url: str, metrics_url: str) -> dict:
    results: dict = {}
    async with Bot(base_url, max_completion_tokens=48, temperature=0) as bot:
        results["text"] = [await bot.turn(user("Say hello to the caller in one short sentence.")) for _ in range(2)]
        results["required"] = await bot.turn(user(WEATHER_QUESTION), tools=True, tool_choice="required")
        results["named"] = await bot.turn(user(WEATHER_QUESTION), tools=True, tool_choice={
            "type": "function", "function": {"name": "get_weather"}})
        follow = user(WEATHER_QUESTION) + [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18, "sky": "sunny"}'}]
        results["follow_up"] = await bot.turn(follow, tools=True)
    async with Bot(base_url, max_completion_tokens=400, temperature=0, extra={"extra_body": {"min_tokens": 400}}) as bot:
        results["interrupt_text"] = await bot.interrupted_turn(user("Tell me a very long story about the sea."),
                                                               metrics_url)
    async with Bot(base_url, max_completion_tokens=400, temperature=0) as bot:
        results["interrupt_call"] = await bot.interrupted_turn(user(WEATHER_QUESTION), metrics_url, tools=True,
                                                               tool_choice="required")
    cutoff = []
    for limit, temperature in CUTOFF_RUNS:
        async with Bot(base_url, max_completion_tokens=limit, temperature=temperature,
                       extra={"parallel_tool_calls": True}) as bot:
            for question in (WEATHER_QUESTION, TWO_CITIES):
                turn = await bot.turn(user(question), tools=True, tool_choice="required")
                cutoff.append({**turn, "limit": limit})
    results["cutoff"] = cutoff
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), default=str))
