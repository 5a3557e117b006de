"""Every guide the gateway can send, compiled by each GPU engine's guide compiler at the
version TensorRT-LLM 1.2.1 pins (xgrammar 0.1.25 for the C++ backend, llguidance 0.7.29 for
the LLM API model), and tried: a valid call or document is accepted, an invalid one refused.

The guides come from the gateway's own request path (``prepare_chat`` with the engine's
declared ``guided_decoding_backend``); the compilers run in ./.venv-guides
(``make install-guide-backends``, apart from the server's install) through
``tests/guide_backends/check_guides.py``. No GPU is involved: this is the compilers'
verdict on the guides, not decoding on TensorRT-LLM.
"""

import json
import subprocess
from dataclasses import replace

import pytest

from gateway.server.triton_launcher import prepare_artifacts
from gateway.settings import Settings
from tests.paths import ROOT
from tests.support.guided import LIMITS, TIME, WEATHER, run

pytestmark = pytest.mark.heavy  # runs llama.cpp or a guide compiler: left out of make test-fast

GUIDES_PYTHON = ROOT / ".venv-guides" / "bin" / "python"
CHECKER = ROOT / "tests" / "guide_backends" / "check_guides.py"

CALL = '{"name": "get_weather", "arguments": {"city": "Pune", "unit": null}}'
CALL_HINDI = '{"name": "get_weather", "arguments": {"city": "पुणे", "unit": "°C"}}'  # Indic text in arguments
CALL_TIME = '{"name": "get_time", "arguments": {}}'
BAD_ARGS = '{"name": "get_weather", "arguments": {"town": "Pune"}}'
UNKNOWN = '{"name": "get_stock", "arguments": {}}'
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
          "required": ["answer", "score"], "additionalProperties": False}


def wrap(*calls: str) -> str:
    return "\n".join(f"<tool_call>\n{call}\n</tool_call>" for call in calls)


# (request fields, strings the guide must accept, strings it must refuse), per kind of guide
CASES = {
    "tools_required": ({"tools": [WEATHER, TIME], "tool_choice": "required"},
                       [wrap(CALL), wrap(CALL_HINDI), wrap(CALL_TIME), wrap(CALL, CALL_TIME)],
                       [wrap(BAD_ARGS), wrap(UNKNOWN), "Sure! " + wrap(CALL), "It is sunny."]),
    "tools_named": ({"tools": [WEATHER, TIME],
                     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
                    [wrap(CALL)],
                    [wrap(CALL_TIME), wrap(CALL, CALL), wrap(BAD_ARGS)]),
    "tools_required_one_call": ({"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False},
                                [wrap(CALL)], [wrap(CALL, CALL_TIME)]),
    "tools_auto": ({"tools": [WEATHER, TIME]},
                   ["It is sunny in Pune.", "एक क्षण। " + wrap(CALL_HINDI)],
                   ["One moment." + wrap(BAD_ARGS)]),
    "tools_none": ({"tools": [WEATHER, TIME], "tool_choice": "none"},
                   ["It is sunny in Pune."], [wrap(CALL)]),
    "json_object": ({"response_format": {"type": "json_object"}},
                    ['{"answer": "yes"}'], ["yes", "[1, 2]"]),
    "json_schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
                    ['{"answer": "yes", "score": 3}', '{"answer": "ஆம்", "score": 3}'],
                    ['{"answer": "yes"}', '{"answer": 3, "score": 3}']),
}
# what the xgrammar engine gets no guide for: the text stays free (docs/gpu.md)
UNGUIDED_ON_XGRAMMAR = {"tools_auto", "tools_none"}


def guide_for(backend: str, fields: dict):
    prepared, _ = run(limits=replace(LIMITS, guide_backend=backend), **fields)
    request = prepared.engine_request
    return request.guide_type, request.guide


@pytest.fixture(scope="module")
def verdicts():
    if not GUIDES_PYTHON.exists():
        pytest.fail(".venv-guides is missing: run `make install-guide-backends` (make test does)")
    cases, keys = [], []
    for backend in ("xgrammar", "llguidance"):
        for name, (fields, accept, reject) in CASES.items():
            kind, text = guide_for(backend, fields)
            if kind is None:
                continue
            cases.append({"backend": backend, "type": kind, "text": text, "accept": accept, "reject": reject})
            keys.append((backend, name))
    request = {"tokenizer_file": str(prepare_artifacts(Settings()).tokenizer_path), "cases": cases}
    done = subprocess.run([str(GUIDES_PYTHON), str(CHECKER)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["versions"] == {"xgrammar": "0.1.25", "llguidance": "0.7.29"}
    return dict(zip(keys, out["results"]))


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_guide_compiles_and_accepts_a_valid_output_and_refuses_an_invalid_one(verdicts, backend, name):
    if backend == "xgrammar" and name in UNGUIDED_ON_XGRAMMAR:
        assert (backend, name) not in verdicts
        assert guide_for(backend, CASES[name][0]) == (None, None)
        return
    verdict = verdicts[(backend, name)]
    assert verdict["compiled"], verdict.get("error")
    assert all(verdict["accepted"]), verdict
    assert all(verdict["rejected"]), verdict


def test_the_guide_types_each_backend_gets():
    assert guide_for("xgrammar", CASES["tools_required"][0])[0] == "regex"
    assert guide_for("llguidance", CASES["tools_required"][0])[0] == "ebnf_grammar"  # Lark, as llguidance reads it
    for backend in ("xgrammar", "llguidance"):
        assert guide_for(backend, CASES["json_schema"][0])[0] == "json_schema"
