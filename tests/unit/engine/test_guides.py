"""Guides compiled by llguidance over the real vocabulary, checked token by token
(no model: the tokens are the tokenizer's own encoding of candidate outputs)."""

import json

import llguidance
import pytest

from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts
from llama_engine.guides import GuideCompiler, InvalidGuide


@pytest.fixture(scope="module")
def compiler():
    tokenizer_path = prepare_artifacts(Settings()).tokenizer_path  # the embedded model's tokenizer.json
    return GuideCompiler(llguidance.LLTokenizer(str(tokenizer_path), eos_token=2))


def follows(compiler, guide_type, guide, text):
    """True when the whole of ``text`` is allowed and the guide may end after it."""
    matcher = compiler.matcher(guide_type, guide)
    ids = compiler.tokenizer.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
                     "required": ["city", "unit"], "additionalProperties": False})


@pytest.mark.parametrize("guide_type, guide, good, bad", [
    ("json", "", '{"a": [1, 2]}', '{"a": '),
    ("json_schema", SCHEMA, '{"city": "Pune", "unit": null}', '{"city": "Pune"}'),
    ("json_schema", SCHEMA, '{"city": "Pune", "unit": "c"}', '{"city": "Pune", "unit": null, "x": 1}'),
    ("regex", r"(yes|no), [0-9]{2}", "yes, 42", "maybe, 42"),
    ("ebnf_grammar", 'root ::= "call " [0-9]+', "call 123", "call me"),
    ("ebnf_grammar", '%llguidance {}\nstart: "a" /[b-c]+/', "abcb", "ad"),
])
def test_a_guide_allows_what_it_describes_and_nothing_else(compiler, guide_type, guide, good, bad):
    assert follows(compiler, guide_type, guide, good)
    assert not follows(compiler, guide_type, guide, bad)


def test_once_complete_only_the_end_token_is_allowed(compiler):
    matcher = compiler.matcher("regex", "ok")
    matcher.consume_tokens(compiler.tokenizer.tokenize_str("ok"))
    mask = matcher.compute_bitmask()
    allowed = [t for t in range(compiler.tokenizer.vocab_size) if mask[t // 8] >> (t % 8) & 1]
    assert allowed == [2]


@pytest.mark.parametrize("guide_type, guide, message", [
    ("json_schema", "{not json", "not JSON"),
    ("json_schema", '{"type": "object", "properties": {"a": {"type": "strang"}}}', "cannot be compiled"),
    ("regex", "[a-", "cannot be compiled"),
    ("ebnf_grammar", "root ::= (", "GBNF"),
    ("yaml", "x", "unknown"),
])
def test_a_guide_that_does_not_compile_is_a_clear_error(compiler, guide_type, guide, message):
    with pytest.raises(InvalidGuide, match=message):
        compiler.matcher(guide_type, guide)


def test_the_mask_sets_every_forbidden_logit_to_minus_infinity(compiler):
    import numpy as np

    from llama_engine.guides import GuideMask

    vocab = compiler.tokenizer.vocab_size
    mask = GuideMask(compiler.matcher("regex", "(yes|no)"), vocab)
    logits = np.zeros(vocab, np.float32)
    mask.apply(logits)
    allowed = np.flatnonzero(np.isfinite(logits))
    texts = {compiler.tokenizer.decode_str([int(t)]) for t in allowed}
    assert allowed.size and all("yes".startswith(t) or "no".startswith(t) for t in texts)
    yes = compiler.tokenizer.tokenize_str("yes")
    for token in yes:
        mask.accept(token)
    with pytest.raises(InvalidGuide):
        mask.accept(compiler.tokenizer.tokenize_str("x")[0])
