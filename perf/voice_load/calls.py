"""Simulated phone calls: a shared system prompt, short caller turns, capped replies.

``CallPlan`` says what a run does; ``run_calls`` plays ``plan.calls`` calls at
once (staggered starts when paced) against one OpenAI-compatible base URL and
returns every turn's ``TurnResult`` tagged with its call and turn numbers.
Pacing ``paced``: after a reply the caller listens (text-to-speech from the
first text at ``tts_chars_per_s``), then speaks for ``speak_s`` before the next
turn. ``closed``: the next turn goes out at once (saturation).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx2

from perf.voice_load.sse_client import TurnResult, stream_chat

TOPICS = ["book a table for {n} on friday", "move my appointment to {n} pm", "check the status of order {n}",
          "cancel the booking for {n} people", "ask whether you deliver to area {n}",
          "change my phone number ending in {n}", "know the price of plan {n}", "report a problem with device {n}"]
FILLER = ("You are the phone agent of a busy restaurant and delivery service. Greet callers warmly, keep every "
          "answer to one or two short sentences, confirm names, dates, times and party sizes, never invent "
          "opening hours or prices, and offer to transfer to a human when unsure. ")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_order_status", "description": "Look up an order by its number",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}}}


@dataclass(frozen=True)
class CallPlan:
    calls: int = 1
    turns: int = 6
    system_words: int = 450  # about 600 tokens
    reply_tokens: int = 48
    pacing: str = "paced"  # or "closed"
    stagger_s: float = 1.0
    tts_chars_per_s: float = 15.0
    speak_s: float = 1.5
    tool_fraction: float = 0.0
    speculative_fraction: float = 0.0
    hangup_fraction: float = 0.0  # turns where the caller hangs up mid-reply (the call ends there)
    model: str = "electron"
    seed: int = 0


@dataclass
class TurnRecord:
    call: int
    turn: int
    result: TurnResult
    speculative: bool = False


def system_prompt(words: int, salt: str = "") -> str:
    """A system prompt of about ``words`` words (~1.3 tokens each); ``salt`` makes it new."""
    out = (f"[{salt}] " if salt else "") + FILLER
    while len(out.split()) < words:
        out += FILLER
    return " ".join(out.split()[:words])


def caller_turn(rng: random.Random) -> str:
    return f"Hi, I'd like to {rng.choice(TOPICS).format(n=rng.randint(2, 99))}, please."


def listen_and_speak_s(plan: CallPlan, result: TurnResult) -> float:
    """Seconds from the end of a reply until the caller's next turn is sent."""
    if plan.pacing == "closed":
        return 0.0
    first = result.first_text_s if result.first_text_s is not None else result.end_s or 0.0
    audio_end = first + len(result.text) / plan.tts_chars_per_s
    return max(0.0, audio_end - (result.end_s or 0.0)) + plan.speak_s


def start_offsets(plan: CallPlan) -> list[float]:
    """When each call starts, seconds from the run's start."""
    gap = plan.stagger_s if plan.pacing == "paced" else 0.0
    return [i * gap for i in range(plan.calls)]


async def run_call(http: httpx2.AsyncClient, plan: CallPlan, index: int, system: str, delay_s: float,
                   records: list[TurnRecord], on_turn=None) -> None:
    rng = random.Random(plan.seed * 1000 + index)
    await asyncio.sleep(delay_s)
    history = [{"role": "system", "content": system}]
    for turn in range(plan.turns):
        history.append({"role": "user", "content": caller_turn(rng)})
        body = {"model": plan.model, "messages": history, "max_tokens": plan.reply_tokens, "temperature": 0.7,
                "seed": rng.randint(0, 2**31)}
        if rng.random() < plan.tool_fraction:
            body["tools"] = [WEATHER_TOOL]
        if rng.random() < plan.speculative_fraction:  # an interim transcript's request, abandoned
            partial = history[:-1] + [{"role": "user", "content": history[-1]["content"][:20]}]
            spec = await stream_chat(http, {**body, "messages": partial}, cancel_after_deltas=3)
            records.append(TurnRecord(index, turn, spec, speculative=True))
        hangs_up = rng.random() < plan.hangup_fraction
        result = await stream_chat(http, body, cancel_after_deltas=rng.randint(2, 20) if hangs_up else None)
        records.append(TurnRecord(index, turn, result))
        if on_turn is not None:
            on_turn()
        if hangs_up:
            return
        history.append({"role": "assistant", "content": result.text or "Sorry?"})
        if turn + 1 < plan.turns:
            await asyncio.sleep(listen_and_speak_s(plan, result))


async def run_calls(base_url: str, plan: CallPlan, system: str, on_turn=None) -> tuple[list[TurnRecord], float]:
    """All calls of ``plan``; returns the turn records and the wall time in seconds."""
    records: list[TurnRecord] = []
    limits = httpx2.Limits(max_connections=plan.calls * 2 + 4)
    async with httpx2.AsyncClient(base_url=base_url, timeout=300, limits=limits,
                                  headers={"Authorization": "Bearer bench"}) as http:
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(run_call(http, plan, i, system, offset, records, on_turn)
                               for i, offset in enumerate(start_offsets(plan))))
        return records, asyncio.get_running_loop().time() - started


async def warm(base_url: str, plan: CallPlan, system: str) -> None:
    """One request with the shared system prompt, so that it is cached before the calls."""
    async with httpx2.AsyncClient(base_url=base_url, timeout=300) as http:
        await stream_chat(http, {"model": plan.model, "max_tokens": 1,
                                 "messages": [{"role": "system", "content": system},
                                              {"role": "user", "content": "Hello."}]})
