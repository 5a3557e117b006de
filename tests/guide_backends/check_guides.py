"""Compile guides with the GPU engines' guide compilers and try strings against them.

Runs in ./.venv-guides (xgrammar and llguidance at TensorRT-LLM 1.2.1's pins), not in the
server's .venv: ``tests/unit/deploy/test_guide_backends.py`` writes the cases as JSON to stdin and
reads the results from stdout. Each case: ``backend`` (xgrammar | llguidance), the guide's
``type`` and ``text`` as the gateway sends them, ``accept`` and ``reject`` strings.

Each backend compiles a guide as TensorRT-LLM does:
- xgrammar, the C++ backend (``xgrammar_matcher.cpp``): json -> the built-in JSON grammar,
  json_schema -> ``Grammar::FromJSONSchema``, regex -> ``FromRegex``, ebnf_grammar -> ``FromEBNF``;
  then compiled for the model's vocabulary. A string is tried on the grammar itself.
- llguidance, the LLM API's llguidance backend (``grammar_matcher.py``): json_schema ->
  ``grammar_from_json_schema``, regex -> ``grammar_from_regex``, ebnf_grammar ->
  ``grammar_from_lark`` (TensorRT-LLM hands it Lark); a matcher on the model's tokenizer consumes
  the string's tokens.
"""

from __future__ import annotations

import json
import sys


def xgrammar_case(case: dict, compiler, xgr) -> dict:
    kind, text = case["type"], case["text"]
    try:
        grammar = {
            "json": lambda: xgr.Grammar.builtin_json_grammar(),
            "json_schema": lambda: xgr.Grammar.from_json_schema(text),
            "regex": lambda: xgr.Grammar.from_regex(text),
            "ebnf_grammar": lambda: xgr.Grammar.from_ebnf(text),
        }[kind]()
        compiler.compile_grammar(grammar)
    except Exception as exc:  # noqa: BLE001 - xgrammar's own errors (RuntimeError, InvalidJSONError...)
        return {"compiled": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    from xgrammar.testing import _is_grammar_accept_string
    return {"compiled": True,
            "accepted": [_is_grammar_accept_string(grammar, s) for s in case["accept"]],
            "rejected": [not _is_grammar_accept_string(grammar, s) for s in case["reject"]]}


def llguidance_case(case: dict, tokenizer, hf_tokenizer, llguidance) -> dict:
    kind, text = case["type"], case["text"]
    matcher_cls = llguidance.LLMatcher
    try:
        grammar = {
            "json": lambda: matcher_cls.grammar_from_json_schema('{"type": "object"}'),
            "json_schema": lambda: matcher_cls.grammar_from_json_schema(text),
            "regex": lambda: matcher_cls.grammar_from_regex(text),
            "ebnf_grammar": lambda: matcher_cls.grammar_from_lark(text),
        }[kind]()
        probe = matcher_cls(tokenizer, grammar)
        if probe.is_error():
            raise ValueError(probe.get_error())
    except Exception as exc:  # noqa: BLE001 - any compiler error is a result here
        return {"compiled": False, "error": f"{type(exc).__name__}: {exc}"[:500]}

    def accepts(s: str) -> bool:
        matcher = matcher_cls(tokenizer, grammar)
        tokens = hf_tokenizer.encode(s, add_special_tokens=False)
        return matcher.consume_tokens(tokens) and not matcher.is_error() and matcher.is_accepting()

    return {"compiled": True, "accepted": [accepts(s) for s in case["accept"]],
            "rejected": [not accepts(s) for s in case["reject"]]}


def main() -> int:
    request = json.load(sys.stdin)
    from transformers import PreTrainedTokenizerFast
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=request["tokenizer_file"])
    results = []
    backends = {case["backend"] for case in request["cases"]}
    if "xgrammar" in backends:
        import xgrammar as xgr
        compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(hf_tokenizer))
    if "llguidance" in backends:
        import llguidance
        import llguidance.hf
        tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)
    for case in request["cases"]:
        if case["backend"] == "xgrammar":
            results.append(xgrammar_case(case, compiler, xgr))
        else:
            results.append(llguidance_case(case, tokenizer, hf_tokenizer, llguidance))
    versions = {}
    from importlib.metadata import version
    for name in ("xgrammar", "llguidance"):
        versions[name] = version(name)
    json.dump({"versions": versions, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
