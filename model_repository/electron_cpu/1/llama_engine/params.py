"""One generation request as the CPU engine holds it, read from the contract's tensors.

The tensors are decoded and checked by ``engine_contract.decode_request`` (the same code
every engine and the gateway use; see docs/engine-contract.md). Here they are only
regrouped: the sampler's parameters apart, the rest beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from engine_contract import GUIDE_TYPES, InvalidRequest, ModelLimits, decode_request

__all__ = ["GUIDE_TYPES", "GenerationRequest", "InvalidRequest", "ModelLimits", "SamplingParams", "parse_request"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_new_tokens: int
    end_id: int | None
    streaming: bool
    exclude_input_in_output: bool
    sampling: SamplingParams
    stop_words: tuple[tuple[int, ...], ...] = ()
    return_log_probs: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_perf_metrics: bool = False
    guide: tuple[str, str] | None = None  # (guided_decoding_guide_type, guided_decoding_guide)
    playback_chars_per_s: float = 0.0  # the client plays the text at this pace (0: not played; see scheduler)
    return_prefill_progress: bool = False  # a response without tokens after each prompt chunk (streaming only)


def parse_request(tensors: Mapping[str, np.ndarray], limits: ModelLimits) -> GenerationRequest:
    """Check the tensors of one request; raises ``InvalidRequest`` with a message that
    names the offending input."""
    r = decode_request(tensors, limits)
    return GenerationRequest(
        prompt=r.prompt,
        max_new_tokens=r.max_new_tokens,
        end_id=r.end_id,
        streaming=r.streaming,
        exclude_input_in_output=r.exclude_input_in_output,
        sampling=SamplingParams(
            temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, seed=r.seed,
            presence_penalty=r.presence_penalty, frequency_penalty=r.frequency_penalty,
            repetition_penalty=r.repetition_penalty, min_tokens=r.min_tokens, logit_bias=dict(r.logit_bias)),
        stop_words=r.stop_words,
        return_log_probs=r.return_log_probs,
        return_num_input_tokens=r.return_num_input_tokens,
        return_num_output_tokens=r.return_num_output_tokens,
        return_perf_metrics=r.return_perf_metrics,
        guide=r.guide,
        playback_chars_per_s=r.playback_chars_per_s,
        return_prefill_progress=r.return_prefill_progress,
    )
