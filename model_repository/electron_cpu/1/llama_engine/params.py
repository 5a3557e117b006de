"""One generation request, read and checked from TensorRT-LLM-style input tensors.

Tensors arrive with the batch dimension first (``max_batch_size > 0``), so a
scalar is shape ``[1, 1]`` and ``input_ids`` is ``[1, L]``. Names, dtypes and
meanings follow TensorRT-LLM's ``tensorrt_llm`` model; see ``../shared/design.md``
("Engine contract"). Defaults where a tensor is absent: temperature 1.0, top_k
off (0), top_p 1.0, no penalties, a random seed; temperature 0 means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")  # TensorRT-LLM's guide types


class InvalidRequest(ValueError):
    """The request cannot run; the message is sent back to the client as is."""


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


@dataclass(frozen=True)
class ModelLimits:
    vocab_size: int
    max_sequence_length: int  # prompt + output tokens of one sequence


def _scalar(tensors: Mapping[str, np.ndarray], name: str, kind: type, default=None):
    array = tensors.get(name)
    if array is None:
        return default
    if array.size != 1:
        raise InvalidRequest(f"input '{name}' must hold exactly one value per request, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if kind is bool:
        return bool(value)
    value = kind(value)
    if kind is float and not np.isfinite(value):
        raise InvalidRequest(f"input '{name}' must be finite, got {value}")
    return value


def _batch_of_one(tensors: Mapping[str, np.ndarray]) -> None:
    for name, array in tensors.items():
        if array.ndim == 0 or array.shape[0] != 1:
            raise InvalidRequest(
                f"input '{name}' has batch size {array.shape[0] if array.ndim else 0}; "
                "send one request per sequence (batch size 1)"
            )


def parse_stop_words(array: np.ndarray | None) -> tuple[tuple[int, ...], ...]:
    """TensorRT-LLM's ``stop_words_list`` ``[1, 2, N]``: row 0 the concatenated
    token ids, row 1 their cumulative end offsets, padded with -1."""
    if array is None:
        return ()
    if array.ndim != 3 or array.shape[1] != 2:
        raise InvalidRequest(f"input 'stop_words_list' must have shape [1, 2, N], got {list(array.shape)}")
    ids, offsets = array[0, 0].tolist(), array[0, 1].tolist()
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if end <= start or end > len(ids):
            raise InvalidRequest(f"input 'stop_words_list' has a bad offset {end}")
        words.append(tuple(ids[start:end]))
        start = end
    return tuple(words)


def parse_logit_bias(array: np.ndarray | None, vocab_size: int) -> dict[int, float]:
    """``embedding_bias`` ``[1, V]``: an additive bias per token id; empty = none."""
    if array is None or array.size == 0:
        return {}
    bias = array.reshape(-1)
    if bias.shape[0] != vocab_size:
        raise InvalidRequest(f"input 'embedding_bias' must have {vocab_size} values (the vocabulary), got {bias.shape[0]}")
    if not np.all(np.isfinite(bias) | np.isneginf(bias)):
        raise InvalidRequest("input 'embedding_bias' holds NaN or +inf")
    nonzero = np.flatnonzero(bias)
    return {int(i): float(bias[i]) for i in nonzero}


def parse_request(tensors: Mapping[str, np.ndarray], limits: ModelLimits) -> GenerationRequest:
    """Check the tensors of one request; raises ``InvalidRequest`` with a message
    that names the offending input."""
    _batch_of_one(tensors)
    for required in ("input_ids", "request_output_len"):
        if required not in tensors:
            raise InvalidRequest(f"input '{required}' is required")
    ids = tensors["input_ids"].reshape(-1)
    length = _scalar(tensors, "input_lengths", int, len(ids))
    if length != len(ids):
        raise InvalidRequest(f"input_lengths is {length} but input_ids holds {len(ids)} tokens")
    if len(ids) == 0:
        raise InvalidRequest("input_ids is empty: a prompt needs at least one token")
    bad = ids[(ids < 0) | (ids >= limits.vocab_size)]
    if bad.size:
        raise InvalidRequest(f"input_ids holds token id {int(bad[0])}, outside the vocabulary [0, {limits.vocab_size})")
    max_new = _scalar(tensors, "request_output_len", int)
    if max_new < 1:
        raise InvalidRequest(f"request_output_len must be at least 1, got {max_new}")
    if len(ids) + max_new > limits.max_sequence_length:
        raise InvalidRequest(
            f"prompt ({len(ids)} tokens) plus request_output_len ({max_new}) is "
            f"{len(ids) + max_new} tokens, over the maximum sequence length of {limits.max_sequence_length}"
        )
    sampling = _parse_sampling(tensors, limits)
    end_id = _scalar(tensors, "end_id", int)
    return GenerationRequest(
        prompt=tuple(int(t) for t in ids),
        max_new_tokens=max_new,
        end_id=end_id,
        streaming=_scalar(tensors, "streaming", bool, False),
        exclude_input_in_output=_scalar(tensors, "exclude_input_in_output", bool, False),
        sampling=sampling,
        stop_words=parse_stop_words(tensors.get("stop_words_list")),
        return_log_probs=_scalar(tensors, "return_log_probs", bool, False),
        return_num_input_tokens=_scalar(tensors, "return_num_input_tokens", bool, False),
        return_num_output_tokens=_scalar(tensors, "return_num_output_tokens", bool, False),
        return_perf_metrics=_scalar(tensors, "return_perf_metrics", bool, False),
        guide=parse_guide(tensors),
        playback_chars_per_s=_playback_pace(tensors),
        return_prefill_progress=_scalar(tensors, "return_prefill_progress", bool, False),
    )


def _playback_pace(tensors: Mapping[str, np.ndarray]) -> float:
    pace = _scalar(tensors, "playback_chars_per_s", float, 0.0)
    if pace < 0 or pace > 1000:
        raise InvalidRequest(f"playback_chars_per_s must be between 0 and 1000, got {pace}")
    return pace


def _text(tensors: Mapping[str, np.ndarray], name: str) -> str | None:
    value = tensors.get(name)
    if value is None or not value.size:
        return None
    item = value.reshape(-1)[0]
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"input '{name}' is not UTF-8") from exc
    return str(item)


def parse_guide(tensors: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """``(type, guide)`` from the guided-decoding inputs, or None (no guide). The
    guide itself is compiled later (``guides``); here only its form is checked."""
    guide_type = _text(tensors, "guided_decoding_guide_type")
    guide = _text(tensors, "guided_decoding_guide")
    if not guide_type:
        if guide:
            raise InvalidRequest("input 'guided_decoding_guide' needs 'guided_decoding_guide_type'")
        return None
    if guide_type not in GUIDE_TYPES:
        raise InvalidRequest(f"guided_decoding_guide_type {guide_type!r} is not one of {', '.join(GUIDE_TYPES)}")
    if guide_type != "json" and not guide:
        raise InvalidRequest(f"guided_decoding_guide_type {guide_type!r} needs a 'guided_decoding_guide'")
    return guide_type, guide or ""


def _parse_sampling(tensors: Mapping[str, np.ndarray], limits: ModelLimits) -> SamplingParams:
    params = SamplingParams(
        temperature=_scalar(tensors, "temperature", float, 1.0),
        top_k=_scalar(tensors, "runtime_top_k", int, 0),
        top_p=_scalar(tensors, "runtime_top_p", float, 1.0),
        seed=_scalar(tensors, "seed", int),
        presence_penalty=_scalar(tensors, "presence_penalty", float, 0.0),
        frequency_penalty=_scalar(tensors, "frequency_penalty", float, 0.0),
        repetition_penalty=_scalar(tensors, "repetition_penalty", float, 1.0),
        min_tokens=_scalar(tensors, "min_tokens", int, 0),
        logit_bias=parse_logit_bias(tensors.get("embedding_bias"), limits.vocab_size),
    )
    if params.temperature < 0:
        raise InvalidRequest(f"temperature must be >= 0, got {params.temperature}")
    if params.top_k < 0:
        raise InvalidRequest(f"runtime_top_k must be >= 0, got {params.top_k}")
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidRequest(f"runtime_top_p must be in (0, 1], got {params.top_p}")
    if params.repetition_penalty <= 0:
        raise InvalidRequest(f"repetition_penalty must be > 0, got {params.repetition_penalty}")
    if params.min_tokens < 0:
        raise InvalidRequest(f"min_tokens must be >= 0, got {params.min_tokens}")
    return params
