"""The narrow interface between the gateway and an engine.

The gateway hands over token ids and sampling parameters and gets back typed
outputs; nothing here knows gRPC or HTTP. ``triton_engine.TritonEngine`` is the
real implementation; tests script their own.

Contract of ``Engine.generate``: an async generator of ``EngineOutput``; the
last one has ``final`` set. Consumers read it to its end. Closing it early
(``aclose``, or cancellation of the consuming task) abandons the request: the
engine stops generating at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass(frozen=True)
class EngineRequest:
    prompt: list[int]
    max_tokens: int
    end_id: int | None = None
    pad_id: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    guide_type: str | None = None  # guided decoding: json, json_schema, regex, ebnf_grammar
    guide: str | None = None
    playback_chars_per_s: float = 0.0  # the client plays the text at this pace (0: not played)


@dataclass(frozen=True)
class EngineTimes:
    """The engine's own timestamps of a request (wall clock, ``time.time_ns``; 0: not reported)."""
    arrival_ns: int
    first_scheduled_ns: int
    first_token_ns: int

    @property
    def ttft_ms(self) -> float | None:
        """Engine arrival to first token."""
        if not (self.arrival_ns and self.first_token_ns):
            return None
        return (self.first_token_ns - self.arrival_ns) / 1e6


@dataclass(frozen=True)
class EngineOutput:
    token_ids: list[int]
    logprobs: list[float] | None = None
    final: bool = False
    reused_blocks: int | None = None  # prefix-cache blocks this request reused
    engine_times: EngineTimes | None = None  # on the first output with tokens, when the engine reports them
    # a prefill progress report (no tokens, not final): prompt tokens whose KV the engine has
    # for this request, reused or computed (``EngineInfo.reports_prefill``)
    prefilled_tokens: int | None = None


@dataclass(frozen=True)
class EngineInfo:
    tokens_per_block: int
    max_sequence_length: int | None  # None: the engine does not say
    guide_backend: str = "llguidance"  # what compiles its guides: llguidance or xgrammar (config parameter)
    # the engine contract's inputs the model declares (docs/engine-contract.md); empty: not known
    declared_inputs: frozenset[str] = frozenset()

    @property
    def paces_playback(self) -> bool:
        """The model takes playback_chars_per_s (the embedded CPU engine)."""
        return "playback_chars_per_s" in self.declared_inputs

    @property
    def reports_prefill(self) -> bool:
        """The model takes return_prefill_progress (the embedded CPU engine): while a prompt is
        prefilled in several steps it reports how far it got, so that a request cancelled
        before its first token is billed for the prompt the engine computed for it."""
        return "return_prefill_progress" in self.declared_inputs


class Engine(Protocol):
    async def info(self) -> EngineInfo:
        """Raises ``EngineUnavailableError`` while the engine cannot be reached."""

    async def ready(self) -> bool: ...

    def generate(self, request: EngineRequest, request_id: str) -> AsyncIterator[EngineOutput]: ...

    async def close(self) -> None: ...
