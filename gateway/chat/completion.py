"""One chat completion run: engine outputs in, text deltas and exact usage out.

``CompletionRun.deltas()`` drives the engine request through a ``ChoiceStream``
and yields the deltas to send; its last delta carries ``finish_reason``. The
first delta comes with the engine's first token, empty if that token's text is
held back (a lone "I" that a combining mark could still follow): a stream then
starts (headers, role chunk) at the first token, as OpenAI's does, and its
text follows one token later. Usage
counts every token the engine delivered, and is final once the generator is
done, whichever way it ends: run to the end, stopped by a stop string (the
engine request is cancelled at once), or closed early because the client went
away. It is logged once, at that moment. Before the engine's first token, its
prefill progress reports (``EngineOutput.prefilled_tokens``) say how much of the
prompt it has taken in: what a request cancelled before its first token is billed
for.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

from gateway.chat.chat_request import PreparedChat
from gateway.chat.choice_stream import ChoiceStream, Delta
from gateway.chat.timeline import Timeline
from gateway.engine.protocol import Engine

log = logging.getLogger(__name__)


class CompletionRun:
    def __init__(self, engine: Engine, prepared: PreparedChat, request_id: str,
                 token_bytes, tokens_per_block: int, timeline: Timeline | None = None) -> None:
        self._engine = engine
        self.timeline = timeline or Timeline()  # marked from the engine call to the first visible delta
        self._prepared = prepared
        self._request_id = request_id
        self._tokens_per_block = tokens_per_block
        self._choice = ChoiceStream(token_bytes, prepared.stops, prepared.engine_request.max_tokens,
                                    logprobs=prepared.logprobs, tools=prepared.tools)
        self._reused_blocks = 0
        self._prefilled = 0  # prompt tokens the engine had taken in, by its last progress report
        self.engine_ttft_ms: float | None = None
        self.first_text_ms: float | None = None  # the first audible text
        self.first_token_ms: float | None = None  # the engine's first output, as the gateway saw it
        self.engine_outputs = 0  # outputs the engine delivered (0: it never produced anything)
        self.gaps: list[float] = []  # seconds between the engine's outputs (observed as metrics at the end)
        self._started = False  # a delta has gone out
        self.completed = False  # the last delta (with finish_reason) was produced

    @property
    def prompt_tokens(self) -> int:
        return self._prepared.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._choice.completion_tokens

    @property
    def engine_prompt_tokens(self) -> int:
        """Prompt tokens the engine took in for this request, reused or computed: the whole
        prompt once it produced an output; before that, as far as its last prefill progress
        report said (0 from an engine that sends none, or before its first prompt chunk)."""
        return self.prompt_tokens if self.engine_outputs else min(self._prefilled, self.prompt_tokens)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the engine's prefix cache (never more than it took in)."""
        return min(self._reused_blocks * self._tokens_per_block, self.engine_prompt_tokens)

    @property
    def finish_reason(self) -> str | None:
        return self._choice.finish_reason

    async def deltas(self) -> AsyncIterator[Delta]:
        started = time.perf_counter()
        timeline = self.timeline
        timeline.engine_called()
        outputs = self._engine.generate(self._prepared.engine_request, self._request_id)
        try:
            opening = self._choice.opening()  # a forced tool call's filler: before the engine's first token
            if opening is not None:
                self._started = True
                self.first_text_ms = (time.perf_counter() - started) * 1e3
                timeline.delta(visible=True)
                yield opening
            last = None
            async for output in outputs:
                if output.prefilled_tokens is not None:  # prefill progress: no token yet
                    self._prefilled = output.prefilled_tokens
                    self._reused_blocks = output.reused_blocks or 0
                    continue
                now = time.perf_counter()
                self.engine_outputs += 1
                if last is not None:
                    self.gaps.append(now - last)
                last = now
                if self.first_token_ms is None:
                    self.first_token_ms = (now - started) * 1e3
                    times = output.engine_times
                    if times is not None:
                        self.engine_ttft_ms = times.ttft_ms
                        timeline.first_output(times.arrival_ns, times.first_scheduled_ns, times.first_token_ns)
                    else:
                        timeline.first_output(0, 0, 0)
                if output.reused_blocks is not None:
                    self._reused_blocks = output.reused_blocks
                delta = self._choice.feed(output.token_ids, output.logprobs)
                if delta is None and output.token_ids and not self._started:
                    delta = Delta()  # the first token's text is held back: the stream still starts now
                if delta is not None:
                    self._started = True
                    if delta.content and self.first_text_ms is None:
                        self.first_text_ms = (time.perf_counter() - started) * 1e3
                    timeline.delta(visible=bool(delta.content))
                    yield delta
                if self._choice.stopped:
                    break  # a stop string: closing ``outputs`` cancels the engine request
            self.completed = True
            yield self._choice.finish()
        finally:
            await outputs.aclose()
            log.debug("usage: prompt_tokens=%d cached_tokens=%d completion_tokens=%d finish_reason=%s "
                     "first_text_ms=%s engine_ttft_ms=%s duration_ms=%.1f%s",
                     self.prompt_tokens, self.cached_tokens, self.completion_tokens, self.finish_reason,
                     _ms(self.first_text_ms), _ms(self.engine_ttft_ms), (time.perf_counter() - started) * 1e3,
                     "" if self.completed else " (ended early: client gone or error)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
