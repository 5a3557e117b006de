"""A scripted stand-in for the engine, for in-process tests of the gateway.

Each request is answered by a script: the token ids to stream (split into
responses of ``per_response`` tokens), an optional error raised after some
responses, an optional delay between responses, optional prefill progress
reports before the first token. It records what it was asked and whether each
request was abandoned before its final output.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from gateway.engine.protocol import EngineInfo, EngineOutput, EngineRequest, EngineTimes
from gateway.errors import APIError


@dataclass
class Script:
    tokens: list[int]
    per_response: int = 1
    reused_blocks: int = 0
    error_after: int | None = None  # responses sent before ``error`` is raised
    error: APIError | None = None
    delay_s: float = 0.0
    logprob: float = -0.5
    prefill_progress: tuple[int, ...] = ()  # prompt tokens taken in, reported before the first token
    first_token_delay_s: float = 0.0  # after the progress reports
    engine_ttft_ms: float | None = None  # reported with the first tokens, as Triton's perf metrics give it


@dataclass
class Call:
    request: EngineRequest
    request_id: str
    responses_sent: int = 0
    finished: bool = False
    abandoned: bool = False


@dataclass
class ScriptedEngine:
    script: Script = field(default_factory=lambda: Script(tokens=[]))
    tokens_per_block: int = 16
    max_sequence_length: int | None = 256
    is_ready: bool = True
    info_error: APIError | None = None
    calls: list[Call] = field(default_factory=list)

    async def info(self) -> EngineInfo:
        if self.info_error is not None:
            raise self.info_error
        return EngineInfo(self.tokens_per_block, self.max_sequence_length)

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        pass

    async def generate(self, request: EngineRequest, request_id: str):
        call = Call(request, request_id)
        self.calls.append(call)
        s = self.script
        tokens = s.tokens[:request.max_tokens]
        pieces = [tokens[i:i + s.per_response] for i in range(0, len(tokens), s.per_response)] or [[]]
        try:
            for prefilled in s.prefill_progress:
                await asyncio.sleep(s.delay_s)
                yield EngineOutput(token_ids=[], reused_blocks=s.reused_blocks, prefilled_tokens=prefilled)
            await asyncio.sleep(s.first_token_delay_s)
            for n, piece in enumerate(pieces):
                if s.error_after is not None and n == s.error_after:
                    raise s.error
                if s.delay_s:
                    await asyncio.sleep(s.delay_s)
                final = n == len(pieces) - 1
                call.responses_sent += 1
                yield EngineOutput(token_ids=piece, logprobs=[s.logprob] * len(piece) if request.logprobs else None,
                                   final=final, reused_blocks=s.reused_blocks,
                                   engine_times=_engine_times(s.engine_ttft_ms) if n == 0 else None)
            call.finished = True
        finally:
            call.abandoned = not call.finished


def _engine_times(ttft_ms: float | None) -> EngineTimes | None:
    """Timestamps as an engine reports them, its first token now and ``ttft_ms`` after arrival."""
    if ttft_ms is None:
        return None
    now = time.time_ns()
    arrival = now - round(ttft_ms * 1e6)
    return EngineTimes(arrival_ns=arrival, first_scheduled_ns=arrival, first_token_ns=now)
