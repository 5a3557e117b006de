"""Per-request token sampling with llama.cpp's sampler chains.

A guided request (``guides``) first has the tokens its guide forbids set to -inf
in the logits, then goes through the chain. Chain order: logit bias (``embedding_bias``), the end-token ban while fewer than
``min_tokens`` were generated, repetition/presence/frequency penalties over the
generated tokens (OpenAI's semantics: the prompt is not penalised), then greedy,
or temperature -> top-k -> top-p -> a seeded random draw.
"""

from __future__ import annotations

import ctypes
import random

import llama_cpp
import numpy as np

from .guides import GuideMask
from .params import SamplingParams

LLAMA_DEFAULT_SEED = 0xFFFFFFFF


def fold_seed(seed: int | None) -> int:
    """A 32-bit llama.cpp seed from a 64-bit request seed; random when absent."""
    if seed is None:
        return random.getrandbits(31)
    folded = (seed ^ (seed >> 32)) & 0xFFFFFFFF
    return folded if folded != LLAMA_DEFAULT_SEED else LLAMA_DEFAULT_SEED - 1


def _bias_sampler(n_vocab: int, bias: dict[int, float]):
    entries = (llama_cpp.llama_logit_bias * len(bias))()
    for entry, (token, value) in zip(entries, bias.items()):
        entry.token, entry.bias = token, value
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)


class TokenSampler:
    """Owns one llama.cpp sampler chain; call ``close`` when the request ends."""

    def __init__(self, params: SamplingParams, n_vocab: int, end_id: int | None, max_new_tokens: int,
                 guide: GuideMask | None = None):
        self._guide = guide
        self._n_vocab = n_vocab
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._eos_ban_at: int | None = None  # chain index of the min_tokens ban
        self._min_tokens = params.min_tokens
        self._generated = 0
        add = lambda s: llama_cpp.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        if params.logit_bias:
            add(_bias_sampler(n_vocab, params.logit_bias))
        # under a guide the guide decides where the output ends: no min_tokens ban
        if params.min_tokens > 0 and end_id is not None and guide is None:
            self._eos_ban_at = 1 if params.logit_bias else 0
            add(_bias_sampler(n_vocab, {end_id: float("-inf")}))
        if params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    max_new_tokens,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_dist(fold_seed(params.seed)))

    def sample(self, ctx, batch_index: int) -> int:
        """Sample from the logits of ``batch_index`` of the last decode; raises
        ``InvalidGuide`` if the guide cannot go on."""
        if self._guide is not None:
            self._guide.apply(logits_view(ctx, batch_index, self._n_vocab))
        token = llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index)
        if self._guide is not None:
            self._guide.accept(token)
        self._generated += 1
        if self._eos_ban_at is not None and self._generated >= self._min_tokens:
            llama_cpp.llama_sampler_free(llama_cpp.llama_sampler_chain_remove(self._chain, self._eos_ban_at))
            self._eos_ban_at = None
        return token

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def logits_view(ctx, batch_index: int, n_vocab: int) -> np.ndarray:
    """llama.cpp's logits of ``batch_index`` of the last decode, as a writable array (no copy)."""
    pointer = llama_cpp.llama_get_logits_ith(ctx, batch_index)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


def token_logprob(ctx, batch_index: int, token: int, n_vocab: int) -> float:
    """Log-probability of ``token`` under the distribution it was sampled from (for a
    guided request: after its mask)."""
    logits = logits_view(ctx, batch_index, n_vocab)
    peak = float(logits.max())
    return float(logits[token]) - peak - float(np.log(np.exp(logits - peak).sum()))
