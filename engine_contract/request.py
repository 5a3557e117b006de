"""One generation request: the typed form and its tensors, both ways.

``encode_request`` is the gateway's (and the benchmarks') side; ``decode_request`` is
every engine's: it checks the tensors of one request and raises ``InvalidRequest`` with
a message that names the offending input. Tensors carry the batch dimension first
(``[1, 1]`` for a scalar). Where a tensor is absent: temperature 1.0, top_k off (0),
top_p 1.0, no penalties, a random seed; temperature 0 means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Collection, Mapping

import numpy as np

from engine_contract.errors import InvalidRequest
from engine_contract.tensors import GUIDE_TYPES, INPUTS, input_array


@dataclass(frozen=True)
class ModelLimits:
    vocab_size: int
    max_sequence_length: int  # prompt + output tokens of one sequence


@dataclass(frozen=True)
class ContractRequest:
    prompt: tuple[int, ...]
    max_new_tokens: int  # request_output_len
    end_id: int | None = None
    pad_id: int | None = None
    streaming: bool = False
    exclude_input_in_output: bool = False
    temperature: float = 1.0
    top_p: float = 1.0  # runtime_top_p
    top_k: int = 0  # runtime_top_k
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # embedding_bias, nonzero entries
    stop_words: tuple[tuple[int, ...], ...] = ()  # stop_words_list
    guide: tuple[str, str] | None = None  # (guided_decoding_guide_type, guided_decoding_guide)
    return_log_probs: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_perf_metrics: bool = False
    playback_chars_per_s: float = 0.0  # the client plays the text at this pace (0: not played)
    return_prefill_progress: bool = False  # a response without tokens after each prompt chunk


_DEFAULTS = {f.name: f.default for f in fields(ContractRequest)}
# scalar fields whose tensor name differs from the field's
_TENSOR_OF = {"max_new_tokens": "request_output_len", "top_p": "runtime_top_p", "top_k": "runtime_top_k"}
# sent even at their default: an engine's own default for an absent tensor may differ (TensorRT-LLM's)
_ALWAYS_SENT = ("streaming", "exclude_input_in_output", "temperature", "top_p", "top_k", "presence_penalty",
                "frequency_penalty", "repetition_penalty", "min_tokens", "return_log_probs", "return_perf_metrics")
_SCALARS = ("end_id", "pad_id", "seed", "streaming", "exclude_input_in_output", "temperature", "top_p", "top_k",
            "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "return_log_probs",
            "return_num_input_tokens", "return_num_output_tokens", "return_perf_metrics", "playback_chars_per_s",
            "return_prefill_progress")


# ---- typed request -> tensors (the gateway's side) ------------------------------------------

def encode_request(request: ContractRequest, vocab_size: int,
                   declared: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The input tensors of ``request``. ``declared``: the inputs the model declares
    (Triton refuses others); the CPU-only inputs are sent only to a model that declares
    them, and only when set. ``None``: every input the contract knows."""
    out = {"input_ids": input_array("input_ids", list(request.prompt)),
           "input_lengths": input_array("input_lengths", len(request.prompt)),
           "request_output_len": input_array("request_output_len", request.max_new_tokens)}
    for name in _SCALARS:
        value = getattr(request, name)
        if value is None or (value == _DEFAULTS[name] and name not in _ALWAYS_SENT):
            continue
        tensor = _TENSOR_OF.get(name, name)
        if INPUTS[tensor].cpu_only and declared is not None and tensor not in declared:
            continue
        out[tensor] = input_array(tensor, value)
    if request.logit_bias:
        bias = np.zeros(vocab_size, np.float32)
        for token_id, value in request.logit_bias.items():
            bias[token_id] = value
        out["embedding_bias"] = input_array("embedding_bias", bias)
    if request.stop_words:
        out["stop_words_list"] = input_array("stop_words_list", stop_words_array(request.stop_words))
    if request.guide is not None:
        out["guided_decoding_guide_type"] = input_array("guided_decoding_guide_type", request.guide[0])
        out["guided_decoding_guide"] = input_array("guided_decoding_guide", request.guide[1])
    return out


def stop_words_array(words: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """TensorRT-LLM's ``[2, N]`` layout: the concatenated ids, then their cumulative end offsets."""
    ids = [t for word in words for t in word]
    ends = np.cumsum([len(word) for word in words]).tolist()
    return np.array([ids, ends + [-1] * (len(ids) - len(ends))], dtype=np.int32)


# ---- tensors -> typed request (every engine's side) -----------------------------------------

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


def _batch_of_one(tensors: Mapping[str, np.ndarray]) -> None:
    for name, array in tensors.items():
        if array.ndim == 0 or array.shape[0] != 1:
            raise InvalidRequest(f"input '{name}' has batch size {array.shape[0] if array.ndim else 0}; "
                                 "send one request per sequence (batch size 1)")


def decode_stop_words(array: np.ndarray | None) -> tuple[tuple[int, ...], ...]:
    """``stop_words_list`` ``[1, 2, N]``: row 0 the concatenated token ids, row 1 their
    cumulative end offsets, padded with -1 (TensorRT-LLM's layout)."""
    if array is None:
        return ()
    if array.ndim != 3 or array.shape[:2] != (1, 2):
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


def decode_logit_bias(array: np.ndarray | None, vocab_size: int) -> dict[int, float]:
    """``embedding_bias`` ``[1, V]``: an additive bias per token id; the nonzero entries
    (-inf allowed: a banned token)."""
    if array is None or array.size == 0:
        return {}
    bias = array.reshape(-1)
    if bias.shape[0] != vocab_size:
        raise InvalidRequest(f"input 'embedding_bias' must have {vocab_size} values (the vocabulary), got {bias.shape[0]}")
    if not np.all(np.isfinite(bias) | np.isneginf(bias)):
        raise InvalidRequest("input 'embedding_bias' holds NaN or +inf")
    return {int(i): float(bias[i]) for i in np.flatnonzero(bias)}


def decode_guide(tensors: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """``(type, guide)`` from the guided-decoding inputs, or None (no guide). Only the
    form is checked here; each engine compiles the guide itself."""
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


def _prompt(tensors: Mapping[str, np.ndarray], limits: ModelLimits) -> tuple[tuple[int, ...], int]:
    for required in ("input_ids", "request_output_len"):
        if required not in tensors:
            raise InvalidRequest(f"input '{required}' is required")
    ids = tensors["input_ids"].reshape(-1)
    length = _scalar(tensors, "input_lengths", int, len(ids))
    if length < 0:
        raise InvalidRequest(f"input_lengths must be >= 0, got {length}")
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
        raise InvalidRequest(f"prompt ({len(ids)} tokens) plus request_output_len ({max_new}) is {len(ids) + max_new} "
                             f"tokens, over the maximum sequence length of {limits.max_sequence_length}")
    return tuple(int(t) for t in ids), max_new


def decode_request(tensors: Mapping[str, np.ndarray], limits: ModelLimits) -> ContractRequest:
    """Check the tensors of one request; raises ``InvalidRequest`` naming the offending input."""
    _batch_of_one(tensors)
    prompt, max_new = _prompt(tensors, limits)
    request = ContractRequest(
        prompt=prompt,
        max_new_tokens=max_new,
        end_id=_scalar(tensors, "end_id", int),
        pad_id=_scalar(tensors, "pad_id", int),
        streaming=_scalar(tensors, "streaming", bool, False),
        exclude_input_in_output=_scalar(tensors, "exclude_input_in_output", bool, False),
        temperature=_scalar(tensors, "temperature", float, 1.0),
        top_p=_scalar(tensors, "runtime_top_p", float, 1.0),
        top_k=_scalar(tensors, "runtime_top_k", int, 0),
        seed=_scalar(tensors, "seed", int),
        presence_penalty=_scalar(tensors, "presence_penalty", float, 0.0),
        frequency_penalty=_scalar(tensors, "frequency_penalty", float, 0.0),
        repetition_penalty=_scalar(tensors, "repetition_penalty", float, 1.0),
        min_tokens=_scalar(tensors, "min_tokens", int, 0),
        logit_bias=decode_logit_bias(tensors.get("embedding_bias"), limits.vocab_size),
        stop_words=decode_stop_words(tensors.get("stop_words_list")),
        guide=decode_guide(tensors),
        return_log_probs=_scalar(tensors, "return_log_probs", bool, False),
        return_num_input_tokens=_scalar(tensors, "return_num_input_tokens", bool, False),
        return_num_output_tokens=_scalar(tensors, "return_num_output_tokens", bool, False),
        return_perf_metrics=_scalar(tensors, "return_perf_metrics", bool, False),
        playback_chars_per_s=_scalar(tensors, "playback_chars_per_s", float, 0.0),
        return_prefill_progress=_scalar(tensors, "return_prefill_progress", bool, False),
    )
    _check_values(request)
    return request


def _check_values(r: ContractRequest) -> None:
    if r.temperature < 0:
        raise InvalidRequest(f"temperature must be >= 0, got {r.temperature}")
    if r.top_k < 0:
        raise InvalidRequest(f"runtime_top_k must be >= 0, got {r.top_k}")
    if not 0.0 < r.top_p <= 1.0:
        raise InvalidRequest(f"runtime_top_p must be in (0, 1], got {r.top_p}")
    if r.repetition_penalty <= 0:
        raise InvalidRequest(f"repetition_penalty must be > 0, got {r.repetition_penalty}")
    if r.min_tokens < 0:
        raise InvalidRequest(f"min_tokens must be >= 0, got {r.min_tokens}")
    if r.playback_chars_per_s < 0 or r.playback_chars_per_s > 1000:
        raise InvalidRequest(f"playback_chars_per_s must be between 0 and 1000, got {r.playback_chars_per_s}")
