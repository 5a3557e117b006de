"""Engine-contract tensors <-> TensorRT-LLM 1.2.x LLM API calls, as plain data.

electron_trtllm's ``model.py`` runs TensorRT-LLM's LLM API inside Triton. Everything
between the two that can be checked without a GPU lives here, so that it is unit-tested
(tests/unit/test_trtllm_llmapi_model.py):

* one request's contract tensors (decoded and checked by ``engine_contract``, the code
  electron_cpu and the gateway use too; docs/engine-contract.md) -> the keyword arguments
  of ``SamplingParams`` and ``GuidedDecodingParams`` (``parse_request``);
* the LLM API's streamed outputs -> the contract's responses (``ResponseBuilder``);
* the parameter file (llm_api.yaml) -> ``LLM`` keyword arguments (``llm_kwargs``).

Nothing here imports TensorRT-LLM or torch. The field names and declared types it
targets are recorded, with the source they were read from, in
tests/data/trtllm_llm_api_1_2_1.json.
"""

from __future__ import annotations

import datetime
import logging
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from engine_contract import (GUIDE_TYPES, ContractRequest, ContractResponse, ModelLimits, PerfMetrics, decode_request,
                             encode_response)

log = logging.getLogger("electron_trtllm")

# contract guide type -> the GuidedDecodingParams field that carries it. TensorRT-LLM's
# llguidance backend compiles `json_object` as the schema {"type": "object"} and `grammar`
# with grammar_from_lark: the gateway's ebnf_grammar guides are llguidance Lark grammars.
GUIDE_FIELDS = {"json": "json_object", "json_schema": "json", "regex": "regex", "ebnf_grammar": "grammar"}
assert set(GUIDE_FIELDS) == set(GUIDE_TYPES)

ELECTRON_KEYS = frozenset({"quantization"})  # parameter-file keys that are electron's, not LLM arguments
QUANTIZATIONS = ("none", "fp8")

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


# ---- LLM API outputs -> response arrays ----------------------------------------------------

class StopWatcher:
    """Finds where a multi-token stop sequence ends in the generated tokens (the tail of
    the generated tokens so far equals a stop word, as electron_cpu checks)."""

    def __init__(self, sequences: tuple[tuple[int, ...], ...]):
        self._sequences = sequences
        self._keep = max((len(s) for s in sequences), default=1) - 1
        self._tail: list[int] = []

    def cut(self, new_tokens: list[int]) -> int | None:
        """How many of ``new_tokens`` to keep (the stop sequence included), or None when
        no stop sequence ends in them."""
        window = self._tail + list(new_tokens)
        for end in range(len(self._tail) + 1, len(window) + 1):
            if any(end >= len(s) and tuple(window[end - len(s):end]) == s for s in self._sequences):
                return end - len(self._tail)
        self._tail = window[max(0, len(window) - self._keep):] if self._keep else []
        return None


def duration_ns(value: Any) -> int:
    """A timing of RequestPerfMetrics in nanoseconds. The binding gives datetime.timedelta
    (on the LLM's steady clock: only differences mean anything); None before it is known."""
    if value is None:
        return 0
    if isinstance(value, datetime.timedelta):
        return (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    if isinstance(value, numbers.Integral):
        return int(value)
    log.warning("unexpected perf-metrics timing %r (%s): reported as 0", value, type(value).__name__)
    return 0


def perf_from_metrics(metrics: Any) -> PerfMetrics | None:
    """``CompletionOutput.request_perf_metrics`` (RequestPerfMetrics) -> ``PerfMetrics``."""
    if metrics is None:
        return None
    kv, timing = getattr(metrics, "kv_cache_metrics", None), getattr(metrics, "timing_metrics", None)
    count = lambda name: int(getattr(kv, name, 0) or 0)  # noqa: E731
    at = lambda name: duration_ns(getattr(timing, name, None))  # noqa: E731
    return PerfMetrics(
        reused_blocks=count("num_reused_blocks"),
        new_blocks=count("num_new_allocated_blocks"),
        total_blocks=count("num_total_allocated_blocks"),
        arrival_ns=at("arrival_time"),
        first_scheduled_ns=at("first_scheduled_time"),
        first_token_ns=at("first_token_time"),
        last_token_ns=at("last_token_time"),
    )


def sampled_logprob(token: int, entry: Any) -> float:
    """The log probability of the sampled ``token`` from one position of
    ``CompletionOutput.logprobs``: a float, or (PyTorch backend) a dict token id ->
    Logprob of the top-k tokens. When the sampled token is not among the top k (sampling
    at temperature > 0 with logprobs=1), the smallest logprob returned is given: an upper
    bound of the true value, as the sampled token ranked below all of them."""
    if isinstance(entry, Mapping):
        if token in entry:
            return float(_logprob_value(entry[token]))
        return min((float(_logprob_value(v)) for v in entry.values()), default=0.0)
    return float(entry)


def _logprob_value(value: Any) -> float:
    return value.logprob if hasattr(value, "logprob") else value


@dataclass(frozen=True)
class Step:
    """What one LLM API output asks of model.py."""

    arrays: dict[str, np.ndarray] | None  # a response to send now (None: nothing yet)
    final: bool  # the response is the request's last
    abort: bool  # a stop sequence ended the output: abort the generation


class ResponseBuilder:
    """Turns the successive outputs of one generation (``RequestOutput.outputs[0]``, a
    CompletionOutput whose ``token_ids`` grow) into contract responses: new tokens when
    streaming, else one response with all of them (the prompt first unless
    ``exclude_input_in_output``), as electron_cpu sends them."""

    def __init__(self, call: LlmApiCall, end_id: int | None):
        self._call = call
        self._end_id = end_id
        self._watcher = StopWatcher(call.stop_sequences) if call.stop_sequences else None
        self._generated: list[int] = []
        self._log_probs: list[float] = []
        self._seen = 0  # tokens of output.token_ids read so far
        self._sent = 0  # of self._generated, sent so far
        self._perf = PerfMetrics()

    def step(self, output: Any, finished: bool) -> Step:
        token_ids = list(output.token_ids)
        new = token_ids[self._seen:]
        log_probs = self._new_log_probs(output, new)
        self._seen = len(token_ids)
        stopped = False
        if self._watcher is not None and new:
            cut = self._watcher.cut(new)
            if cut is not None:
                new, log_probs, stopped = new[:cut], log_probs[:cut], True
        if finished and not stopped and self._ended_by_end_id(output, new):
            new, log_probs = new[:-1], log_probs[:-1]  # the end id is not output (as electron_cpu)
        self._generated += new
        self._log_probs += log_probs
        if self._call.return_perf_metrics:
            self._perf = perf_from_metrics(getattr(output, "request_perf_metrics", None)) or self._perf
        final = finished or stopped
        if not final and not (self._call.streaming and self._sent < len(self._generated)):
            return Step(None, final=False, abort=False)
        return Step(self.arrays(), final=final, abort=stopped and not finished)

    def arrays(self) -> dict[str, np.ndarray]:
        """The response for what was generated since the last one (streaming) or so far."""
        call, generated = self._call, self._generated
        tokens = generated[self._sent:] if call.streaming else generated
        log_probs = self._log_probs[self._sent:] if call.streaming else self._log_probs
        if not call.streaming and not call.exclude_input_in_output:
            tokens = list(call.prompt) + tokens
        self._sent = len(generated)
        with_prompt = not call.streaming and not call.exclude_input_in_output
        return encode_response(ContractResponse(
            output_ids=tokens,
            sequence_length=len(call.prompt) + len(generated),
            log_probs=log_probs if call.return_log_probs else None,
            num_input_tokens=len(call.prompt) if call.return_num_input_tokens else None,
            num_output_tokens=len(tokens) - (len(call.prompt) if with_prompt else 0)
            if call.return_num_output_tokens else None,
            perf=self._perf if call.return_perf_metrics else None,
        ))

    def _new_log_probs(self, output: Any, new: list[int]) -> list[float]:
        if not self._call.return_log_probs or not new:
            return []
        entries = list(output.logprobs or [])[self._seen:self._seen + len(new)]
        if len(entries) < len(new):
            raise ValueError(f"the LLM API returned {len(entries)} log probabilities for {len(new)} new tokens")
        return [sampled_logprob(t, e) for t, e in zip(new, entries)]

    def _ended_by_end_id(self, output: Any, new: list[int]) -> bool:
        """The generation stopped at the end id and (depending on the backend) output it."""
        return (bool(new) and self._end_id is not None and new[-1] == self._end_id
                and getattr(output, "finish_reason", None) == "stop" and getattr(output, "stop_reason", None) is None)


# ---- parameter file -> LLM arguments -------------------------------------------------------

def llm_kwargs(config: Any) -> dict[str, Any]:
    """The ``LLM`` keyword arguments of a parameter file (llm_api.yaml, parsed), after
    checking what the engine contract relies on; raises ValueError."""
    if not isinstance(config, Mapping):
        raise ValueError("the parameter file must be a mapping of LLM arguments")
    for key in ("model", "max_seq_len", "kv_cache_config"):
        if key not in config:
            raise ValueError(f"'{key}' is required")
    if config.get("quantization", "none") not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {config['quantization']!r}")
    if config.get("backend", "pytorch") != "pytorch":
        raise ValueError(f"backend must be pytorch, got {config['backend']!r}")
    if config.get("guided_decoding_backend") != "llguidance":
        raise ValueError("guided_decoding_backend must be llguidance: the gateway's grammars are llguidance Lark grammars")
    kv = config["kv_cache_config"]
    if not isinstance(kv, Mapping) or not kv.get("enable_block_reuse") or "tokens_per_block" not in kv:
        raise ValueError("kv_cache_config needs enable_block_reuse: true and tokens_per_block (cached_tokens need both)")
    if not config.get("return_perf_metrics"):
        raise ValueError("return_perf_metrics must be true: the LLM stamps arrival times only then")
    return {k: v for k, v in config.items() if k not in ELECTRON_KEYS}


def check_advertised(kwargs: Mapping[str, Any], tokens_per_block: str, max_sequence_length: str) -> None:
    """config.pbtxt repeats two values of the parameter file for the gateway, which reads
    only the config: a disagreement would misreport cached tokens or the context window."""
    pairs = (("tokens_per_block", tokens_per_block, "kv_cache_config.tokens_per_block",
              kwargs["kv_cache_config"]["tokens_per_block"]),
             ("max_sequence_length", max_sequence_length, "max_seq_len", kwargs["max_seq_len"]))
    for name, advertised, key, actual in pairs:
        if not advertised.isdigit() or int(advertised) != int(actual):
            raise ValueError(f"config.pbtxt parameter {name} is {advertised!r} but the parameter file's {key} is {actual}")


def check_quantization(declared: str, hf_quant_config: Mapping[str, Any] | None) -> None:
    """The parameter file's ``quantization`` must say what the checkpoint is: fp8 means a
    ModelOpt export whose hf_quant_config.json names FP8 (the LLM API reads that file and
    only loads the quantized weights; nothing is quantized at load time)."""
    algo = None
    if hf_quant_config is not None:
        algo = (hf_quant_config.get("quantization") or {}).get("quant_algo")
    if declared == "fp8" and algo != "FP8":
        raise ValueError(f"quantization is fp8 but the checkpoint's hf_quant_config.json says {algo!r}")
    if declared == "none" and algo is not None:
        raise ValueError(f"quantization is none but the checkpoint is quantized ({algo})")


def vocab_size_of(hf_config: Mapping[str, Any]) -> int:
    """The vocabulary size of a Hugging Face config.json (multimodal configs nest it)."""
    for holder in (hf_config, hf_config.get("text_config") or {}, hf_config.get("llm_config") or {}):
        if isinstance(holder.get("vocab_size"), int):
            return holder["vocab_size"]
    raise ValueError("config.json of the checkpoint has no vocab_size")
