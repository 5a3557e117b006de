"""One request's contract tensors -> a TensorRT-LLM 1.2.x ``LLM.generate_async`` call, as
plain data.

The tensors are decoded and checked by ``engine_contract`` (the code electron_cpu and the
gateway use too; docs/engine-contract.md); here they become the keyword arguments of
``SamplingParams`` and ``GuidedDecodingParams`` (``parse_request``). Nothing here imports
TensorRT-LLM or torch: the field names and declared types it targets are recorded, with
the source they were read from, in tests/data/trtllm_llm_api_1_2_1.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from engine_contract import GUIDE_TYPES, ContractRequest, ModelLimits, decode_request

# contract guide type -> the GuidedDecodingParams field that carries it. TensorRT-LLM's
# llguidance backend compiles `json_object` as the schema {"type": "object"} and `grammar`
# with grammar_from_lark: the gateway's ebnf_grammar guides are llguidance Lark grammars.
GUIDE_FIELDS = {"json": "json_object", "json_schema": "json", "regex": "regex", "ebnf_grammar": "grammar"}
assert set(GUIDE_FIELDS) == set(GUIDE_TYPES)

Limits = ModelLimits  # the request's limits: vocabulary and the LLM's max_seq_len


@dataclass(frozen=True)
class LlmApiCall:
    """One ``LLM.generate_async(prompt, sampling_params=..., streaming=True)`` call as plain
    data, plus what its responses need to know about the request."""

    prompt: tuple[int, ...]
    sampling: dict[str, Any]  # SamplingParams keyword arguments, except the two below
    guided_decoding: dict[str, Any] | None  # GuidedDecodingParams keyword arguments
    embedding_bias: np.ndarray | None  # float32 [vocab]; SamplingParams wants it as a torch tensor
    stop_sequences: tuple[tuple[int, ...], ...]  # multi-token stop words: SamplingParams takes
    # single stop token ids only (stop_token_ids), so model.py watches for these and aborts
    streaming: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool
    return_perf_metrics: bool


# ---- contract request -> LLM API call ------------------------------------------------------

def guided_decoding(guide: tuple[str, str] | None) -> dict[str, Any] | None:
    """GuidedDecodingParams keyword arguments of the contract's guide, or None. The guide
    itself is compiled by the LLM API's llguidance backend, not checked here."""
    if guide is None:
        return None
    guide_type, text = guide
    return {"json_object": True} if guide_type == "json" else {GUIDE_FIELDS[guide_type]: text}


def embedding_bias(bias: Mapping[int, float], vocab_size: int) -> np.ndarray | None:
    """The float32 ``[vocab_size]`` vector SamplingParams.embedding_bias holds; None when empty."""
    if not bias:
        return None
    vector = np.zeros(vocab_size, np.float32)
    for token_id, value in bias.items():
        vector[token_id] = value
    return vector


def _sampling(r: ContractRequest) -> dict[str, Any]:
    """SamplingParams keyword arguments of the sampling inputs. Temperature, top_p and
    top_k are always set: left all unset, the LLM API decodes greedily, while the contract
    (like electron_cpu) samples at temperature 1 when a request sends none."""
    kwargs: dict[str, Any] = {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k}
    if r.seed is not None:
        kwargs["seed"] = r.seed
    for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0)):
        if getattr(r, name) != neutral:
            kwargs[name] = getattr(r, name)
    if r.min_tokens > 0 and r.guide is None:  # under a guide the guide decides where the output ends
        kwargs["min_tokens"] = r.min_tokens
    return kwargs


def parse_request(tensors: Mapping[str, np.ndarray], limits: Limits) -> LlmApiCall:
    """Check the tensors of one request (``engine_contract.decode_request``) and describe
    its LLM API call; raises ``InvalidRequest`` (a ValueError) naming the offending input."""
    r = decode_request(tensors, limits)
    sampling = _sampling(r)
    # token ids in, token ids out: the gateway owns text. Stop tokens stay in the output, as
    # electron_cpu keeps them; the LLM API would cut them off token_ids at the end otherwise.
    sampling.update(max_tokens=r.max_new_tokens, detokenize=False, include_stop_str_in_output=True)
    for name in ("end_id", "pad_id"):
        if getattr(r, name) is not None:
            sampling[name] = getattr(r, name)
    single = [w[0] for w in r.stop_words if len(w) == 1]
    if single:
        sampling["stop_token_ids"] = single
    if r.return_log_probs:
        sampling["logprobs"] = 1  # the sampled token's log probability
    sampling["return_perf_metrics"] = r.return_perf_metrics
    return LlmApiCall(
        prompt=r.prompt,
        sampling=sampling,
        guided_decoding=guided_decoding(r.guide),
        embedding_bias=embedding_bias(r.logit_bias, limits.vocab_size),
        stop_sequences=tuple(w for w in r.stop_words if len(w) > 1),
        streaming=r.streaming,
        exclude_input_in_output=r.exclude_input_in_output,
        return_log_probs=r.return_log_probs,
        return_num_input_tokens=r.return_num_input_tokens,
        return_num_output_tokens=r.return_num_output_tokens,
        return_perf_metrics=r.return_perf_metrics,
    )
