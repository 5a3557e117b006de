"""The state of one request in the engine, and where its responses go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from engine_contract import PerfMetrics

from .guides import GuideMask
from .params import GenerationRequest
from .sampling import TokenSampler


@dataclass(frozen=True)
class StepOutput:
    """One response of a request: new tokens, or all of them when not streaming; none in
    a prefill progress report (``ResponseWriter.report_prefill``)."""

    tokens: list[int]
    log_probs: list[float] | None
    final: bool
    sequence_length: int  # prompt + generated tokens so far
    num_input_tokens: int
    perf: PerfMetrics


class ResponseSink(Protocol):
    """Where one request's responses go (the Triton response sender in production)."""

    request_id: str

    def send(self, output: StepOutput) -> None: ...
    def fail(self, message: str) -> None: ...
    def close_cancelled(self) -> None: ...
    def is_cancelled(self) -> bool: ...


@dataclass(eq=False)
class Timeline:
    """When things happened to one request: its ``PerfMetrics``."""

    arrival_ns: int
    arrival_clock: float = 0.0  # time.monotonic() at arrival (the prefix cache's clock)
    first_scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0


@dataclass(eq=False)
class QueueEstimate:
    """What the overload judge (``overload``) knows of a request's prompt while it waits."""

    new_tokens: int = 0  # prompt tokens it would prefill itself (not cached or being computed)
    alone_tokens: int = 0  # prompt tokens it would prefill on a free machine (not cached at arrival)
    keys: list[int] = field(default_factory=list)  # its prompt's block keys (prefix cache)
    awaits: frozenset = frozenset()  # sequences computing blocks of its prompt at arrival


@dataclass(eq=False)
class Delivery:
    """How much of a stream's reply has been sent (``responses``)."""

    tokens: int = 0  # generated tokens already sent
    chars: int = 0  # characters of the tokens already sent
    last_send_ns: int = 0


@dataclass(eq=False)
class SequenceState:
    """One request from arrival to its last response: where its KV and output stand."""

    request: GenerationRequest
    sink: ResponseSink
    timeline: Timeline
    guide: GuideMask | None = None
    sampler: TokenSampler | None = None
    # its KV
    seq: int = -1
    n_past: int = 0  # positions whose KV exists
    prefilled: int = 0  # prompt tokens whose KV exists
    reused_blocks: int = 0
    prefill_started: bool = False  # a chunk of its own prompt was computed (it can no longer be refused)
    pending: int | None = None  # sampled, not yet decoded
    # its reply
    generated: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    chars: int = 0  # characters of the generated text (the playhead's unit)
    estimate: QueueEstimate = field(default_factory=QueueEstimate)
    delivered: Delivery = field(default_factory=Delivery)

    @property
    def prompt_left(self) -> int:
        return len(self.request.prompt) - self.prefilled

    def reached_stop(self) -> bool:
        """Its reply is as long as allowed or ends with one of its stop words."""
        tail = self.generated
        return len(tail) >= self.request.max_new_tokens or any(
            len(w) <= len(tail) and tuple(tail[-len(w) :]) == w for w in self.request.stop_words
        )

    def cells_ahead(self, reply_reserve: int) -> int:
        """KV cells it will need soon: the rest of its prompt and up to ``reply_reserve``
        more reply tokens (a request without ``max_tokens`` may run to the context's end,
        but reserving all of it would shut every other caller out of the pool)."""
        replied = self.n_past - min(self.n_past, len(self.request.prompt))
        reply_left = min(self.request.max_new_tokens - replied, max(reply_reserve - replied, 0))
        return max(len(self.request.prompt) - self.n_past, 0) + max(reply_left, 0)
