"""One streamed chat request, timed the way a voice platform sees it.

Time to first token: the first content or tool-call delta. Time to first text:
the first content delta (what the text-to-speech can speak). Inter-token
latencies: gaps between successive deltas. Usage from the final usage chunk.
A request can be abandoned after a few deltas (a speculative request that a
newer interim transcript replaces), which closes the connection.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx2


@dataclass
class TurnResult:
    status: int = 0
    error: str | None = None
    cancelled: bool = False
    started: float = 0.0  # perf_counter at send
    first_chunk_s: float | None = None  # the first chunk (the role's, sent with the engine's first token)
    ttft_s: float | None = None
    first_text_s: float | None = None
    end_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    text_deltas: list[tuple[float, int]] = field(default_factory=list)  # (seconds since send, characters)
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    request_id: str | None = None  # the server's x-request-id

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first token, while the reply streams."""
        if not self.completion_tokens or self.completion_tokens < 2 or self.ttft_s is None or self.end_s is None:
            return None
        span = self.end_s - self.ttft_s
        return (self.completion_tokens - 1) / span if span > 0 else None


def parse_sse_line(line: str):
    """A ``data:`` line's JSON object, the string ``"[DONE]"``, or None for anything else."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return "[DONE]"
    return json.loads(payload)


def apply_event(result: TurnResult, event: dict, now_s: float, last_delta_s: float | None) -> float | None:
    """Fold one chunk into ``result``; returns the time of the latest delta."""
    if "error" in event:
        result.error = event["error"].get("message", "error event")
        return last_delta_s
    if event.get("usage"):
        usage = event["usage"]
        result.prompt_tokens = usage.get("prompt_tokens")
        result.completion_tokens = usage.get("completion_tokens")
        result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        content, calls = delta.get("content"), delta.get("tool_calls")
        if not content and not calls:
            continue
        if result.ttft_s is None:
            result.ttft_s = now_s
        if content and result.first_text_s is None:
            result.first_text_s = now_s
        if last_delta_s is not None:
            result.itl_s.append(now_s - last_delta_s)
        result.text += content or ""
        if content:
            result.text_deltas.append((now_s, len(content)))
        last_delta_s = now_s
    return last_delta_s


async def stream_chat(http: httpx2.AsyncClient, body: dict, cancel_after_deltas: int | None = None) -> TurnResult:
    """POST ``body`` (``stream`` and ``include_usage`` are set here) and time it; times
    in the result are seconds since the request was sent."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    result = TurnResult(started=time.perf_counter())
    last = None
    try:
        async with http.stream("POST", "/chat/completions", json=body) as response:
            result.status = response.status_code
            result.request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:300]
                return result
            async for line in response.aiter_lines():
                event = parse_sse_line(line)
                if event is None:
                    continue
                if event == "[DONE]":
                    break
                now_s = time.perf_counter() - result.started
                if result.first_chunk_s is None:
                    result.first_chunk_s = now_s
                last = apply_event(result, event, now_s, last)
                deltas = 0 if result.ttft_s is None else len(result.itl_s) + 1
                if cancel_after_deltas is not None and deltas >= cancel_after_deltas:
                    result.cancelled = True
                    break
    except httpx2.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.end_s = time.perf_counter() - result.started
    return result
