"""Where one request's time to first token goes, stage by stage, as the gateway sees it.

A ``Timeline`` is started when the chat endpoint takes the request and marked at the
end of each stage on the way to the first content byte written to the client's socket:

    auth, read_body, parse, template, tokenize, guide, admit    the gateway, before the engine
    to_engine      the gateway's engine call to the engine's arrival: the request's encoding,
                   gRPC, Triton's queue and its hand-over to the model process
    engine_queue   engine arrival to the step that starts its prefill
    prefill        that step to its first token (the prompt's new tokens, the first sample)
    from_engine    the first token, from the engine through Triton and gRPC to the gateway
    detokenize     the first output to the first delta (text, stop strings, tool parsing)
    held_back      the first delta to the first one with visible text: a first token whose
                   text waits for the next one (a lone "I"), or a reply that opens with a
                   tool call (no text at all: the stage is absent, ``visible`` False)
    sse_write      the first content's chunk serialized and written to the socket

The engine's three stages come from its perf metrics, which are wall-clock
nanoseconds (``time.time_ns``) taken on the same machine: they are placed on the
gateway's ``perf_counter`` line through the pair of clock readings taken at start.
A stage the request never reached (refused, failed, cancelled) is absent.
``stages()`` is logged at DEBUG when the request ends (logger ``gateway.timeline``,
with the request id) and summed by ``python -m perf ttft``.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("gateway.timeline")

ENGINE_STAGES = ("to_engine", "engine_queue", "prefill", "from_engine")


class Timeline:
    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._start_ns = time.time_ns()
        self._last = self._start
        self._stages: dict[str, float] = {}  # stage -> milliseconds
        self._engine_call: float | None = None
        self.visible: bool | None = None  # a delta with text to speak was made (None: no delta yet)

    def mark(self, stage: str) -> None:
        """The stage that ended now (the time since the previous mark); a stage marked again
        adds up (a body read in several parts)."""
        now = time.perf_counter()
        self._stages[stage] = self._stages.get(stage, 0.0) + (now - self._last) * 1e3
        self._last = now

    def engine_called(self) -> None:
        self._last = self._engine_call = time.perf_counter()

    def first_output(self, arrival_ns: int, first_scheduled_ns: int, first_token_ns: int) -> None:
        """The engine's first output with tokens arrived now; its perf metrics (0: not
        reported) split the wait since ``engine_called`` into the engine's stages."""
        now = time.perf_counter()
        if self._engine_call is None:
            self._engine_call = self._last
        if arrival_ns and first_scheduled_ns and first_token_ns:
            points = [self._engine_call, self._at(arrival_ns), self._at(first_scheduled_ns),
                      self._at(first_token_ns), now]
            for stage, begin, end in zip(ENGINE_STAGES, points, points[1:]):
                self._stages[stage] = (end - begin) * 1e3
        else:
            self._stages["engine"] = (now - self._engine_call) * 1e3
        self._last = now

    def delta(self, visible: bool) -> None:
        """A delta was made now, before any with visible text; ``visible``: it carries text
        to speak (the stages end at the first one that does)."""
        if self.visible:
            return
        if "detokenize" not in self._stages:
            self.mark("detokenize")
        elif visible:
            self.mark("held_back")
        self.visible = visible

    def written(self) -> None:
        """A chunk is on the socket: the first content's, once ``visible``."""
        if self.visible and "sse_write" not in self._stages:
            self.mark("sse_write")

    def _at(self, wall_ns: int) -> float:
        return self._start + (wall_ns - self._start_ns) / 1e9

    def stages(self) -> dict[str, float]:
        """Stage -> milliseconds, in the order they happened, rounded to 0.1 ms."""
        return {stage: round(ms, 1) for stage, ms in self._stages.items()}

    @property
    def total_ms(self) -> float:
        return sum(self._stages.values())

    def log(self, request_id: str) -> None:
        """One DEBUG line of the stages (its fields: ``request_id``, ``ttft_stages_ms``,
        ``ttft_total_ms``, ``first_content_visible``)."""
        if log.isEnabledFor(logging.DEBUG):
            stages = self.stages()
            log.debug("ttft timeline: %s total=%.1f ms%s", " ".join(f"{k}={v}" for k, v in stages.items()),
                      self.total_ms, "" if self.visible else " (no visible text yet)",
                      extra={"fields": {"request_id": request_id, "ttft_stages_ms": stages,
                                        "ttft_total_ms": round(self.total_ms, 1),
                                        "first_content_visible": bool(self.visible)}})
