"""electron_trtllm's parameter file (llm_api.yaml) -> ``LLM`` keyword arguments, and the
checks that tie it to config.pbtxt and the checkpoint. Plain data: nothing here imports
TensorRT-LLM or torch (tests/unit/contract/test_trtllm_llmapi_model.py)."""

from __future__ import annotations

from typing import Any, Mapping

from engine_contract.cpu_parameters import LOG_LEVELS  # Python logging's levels, as the CPU model takes them

ELECTRON_KEYS = frozenset({"quantization"})  # parameter-file keys that are electron's, not LLM arguments
QUANTIZATIONS = ("none", "fp8")


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


def log_level_of(params: Mapping[str, str]) -> str:
    """The model's logging level from config.pbtxt's ``log_level`` (the gateway's
    ``ELECTRON_ENGINE_LOG_LEVEL``, filled in with the repository); raises ValueError."""
    level = params.get("log_level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"config.pbtxt parameter log_level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return level
