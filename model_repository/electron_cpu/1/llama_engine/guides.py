"""Guided decoding: the token masks that keep a sequence inside a guide.

The guide types are TensorRT-LLM's (``guided_decoding_guide_type``):

- ``json``: any JSON value;
- ``json_schema``: JSON that validates against the schema in the guide;
- ``regex``: text matching the regular expression (whole output);
- ``ebnf_grammar``: a grammar in llama.cpp's GBNF, or in llguidance's Lark syntax
  when the guide starts with ``%llguidance`` (the gateway's tool-call grammars use
  it for lazy triggers: free text until ``<tool_call>``, then a valid call).

Masks come from llguidance (Rust, no PyTorch): one ``LLMatcher`` per sequence,
built when the request arrives (a guide that does not compile fails that request
alone), asked for the allowed tokens before each sample and told the sampled token
after it. When the guide is complete only the end token is allowed.
"""

from __future__ import annotations

import json
import logging

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import any_to_lark

from .params import GUIDE_TYPES

log = logging.getLogger(__name__)

LARK_PREFIX = "%llguidance"
# JSON on one line with Python's separators (as models write it): no free whitespace,
# so a small model cannot wander off into blank lines
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class InvalidGuide(ValueError):
    """The guide cannot be compiled; the message says why."""


def grammar_for(guide_type: str, guide: str) -> str:
    """The llguidance grammar of a guide (not yet checked)."""
    if guide_type == "json":
        return llguidance.LLMatcher.grammar_from_json_schema({}, defaults=JSON_OPTIONS)
    if guide_type == "json_schema":
        try:
            schema = json.loads(guide)
        except json.JSONDecodeError as exc:
            raise InvalidGuide(f"the json_schema guide is not JSON: {exc}") from exc
        if not isinstance(schema, (dict, bool)):
            raise InvalidGuide("the json_schema guide must be a JSON object")
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if guide_type == "regex":
        return llguidance.LLMatcher.grammar_from_regex(guide)
    if guide_type == "ebnf_grammar":
        if guide.lstrip().startswith(LARK_PREFIX):
            return llguidance.LLMatcher.grammar_from_lark(guide)
        try:
            return llguidance.LLMatcher.grammar_from_lark(any_to_lark(guide))
        except Exception as exc:  # the converter raises plain exceptions on bad GBNF
            raise InvalidGuide(f"the ebnf_grammar guide is not valid GBNF: {exc}") from exc
    raise InvalidGuide(f"unknown guided_decoding_guide_type {guide_type!r}; one of {', '.join(GUIDE_TYPES)}")


class GuideCompiler:
    """Compiles guides for one vocabulary (building the tokenizer view takes ~1 s, once)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_llama_vocab(cls, vocab, eos_token: int) -> "GuideCompiler":
        from llguidance.llamacpp import lltokenizer_from_vocab

        return cls(lltokenizer_from_vocab(vocab, eos_token=eos_token))

    def matcher(self, guide_type: str, guide: str) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self.tokenizer, grammar_for(guide_type, guide), log_level=0)
        if matcher.is_error():
            raise InvalidGuide(f"the {guide_type} guide cannot be compiled: {matcher.get_error()}")
        return matcher


class GuideMask:
    """Applies one sequence's guide to the logits before each sample."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int):
        self.matcher = matcher
        self._n_vocab = n_vocab
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def apply(self, logits: np.ndarray) -> None:
        """Sets every token the guide forbids to -inf, in place."""
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._n_vocab]
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise InvalidGuide(f"the guide rejected token {token}: {self.matcher.get_error()}")
