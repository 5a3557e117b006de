"""The tool dialect (rendering, grammar) and the incremental tool-call parser."""

import json
import random

import llguidance
import pytest

from gateway.settings import Settings
from gateway.tools.tool_calls import Call, CallOpen, Text, ToolCallParser
from gateway.tools.tool_dialect import dialects
from gateway.server.triton_launcher import prepare_artifacts

HERMES = dialects()["hermes"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
BOOK = {"type": "function", "function": {"name": "book_table", "parameters": {
    "type": "object", "properties": {"people": {"type": "integer"}}, "required": ["people"]}}}

OUTPUT = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune \\"East\\" {x}", '
          '"unit": null}}\n</tool_call>\n<tool_call>\n{"name": "book_table", "arguments": {"people": 4}}\n</tool_call>')


def rebuild(events):
    """(content, [(name, arguments)]) from parser events, checking their order."""
    content, calls, open_index = "", [], None
    for e in events:
        if isinstance(e, Text):
            assert open_index is None, "text inside a call"
            content += e.content
        elif isinstance(e, CallOpen):
            assert open_index is None and e.index == len(calls)
            open_index = e.index
        elif isinstance(e, Call):
            assert e.index == open_index == len(calls)
            calls.append((e.name, e.arguments))
            open_index = None
    return content, calls


def parse_in_pieces(text, sizes):
    parser = ToolCallParser(HERMES)
    events, at = [], 0
    while at < len(text):
        n = sizes()
        events += parser.push(text[at:at + n])
        at += n
    return events + parser.finish(), parser


@pytest.mark.parametrize("pieces", ["whole", "chars", "random"])
def test_calls_are_the_same_whether_fed_whole_or_piece_by_piece(pieces):
    rng = random.Random(7)
    size = {"whole": lambda: len(OUTPUT), "chars": lambda: 1, "random": lambda: rng.randint(1, 6)}[pieces]
    events, parser = parse_in_pieces(OUTPUT, size)
    content, calls = rebuild(events)
    assert content == "Let me check. "
    assert calls == [("get_weather", '{"city": "Pune \\"East\\" {x}", "unit": null}'), ("book_table", '{"people": 4}')]
    assert json.loads(calls[0][1]) == {"city": 'Pune "East" {x}', "unit": None}
    assert not parser.in_call and parser.calls == 2


def test_a_call_is_reported_only_once_its_block_closes():
    parser = ToolCallParser(HERMES)
    assert parser.push("Sure. <tool_call>\n") == [Text("Sure. "), CallOpen(0)]  # the marker alone opens it
    assert parser.push('{"name": "get_weather", "arguments": {"city": "Pu') == []
    assert parser.push('ne", "unit": null}}') == [] and parser.in_call
    assert parser.push("\n</tool_call>") == [Call(0, "get_weather", '{"city": "Pune", "unit": null}')]
    assert not parser.in_call and parser.calls == 1


def test_plain_text_with_angle_brackets_passes_and_a_partial_marker_is_held():
    parser = ToolCallParser(HERMES)
    assert rebuild(parser.push("a < b and <tool"))[0] == "a < b and "
    assert rebuild(parser.push("box> too") + parser.finish())[0] == "<toolbox> too"


def test_an_unfinished_call_is_reported_open():
    parser = ToolCallParser(HERMES)
    parser.push('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pu')
    parser.finish()
    assert parser.in_call and parser.calls == 0


def test_history_is_rendered_in_the_dialect():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": {"city": "Pune", "unit": None}}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "31 C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}]
    out = HERMES.render_messages(messages, [WEATHER])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n")
    assert json.dumps(WEATHER) in out[0]["content"]
    assert out[2] == {"role": "assistant", "content":
                      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune", "unit": null}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content":
                      "<tool_response>\n31 C\n</tool_response>\n<tool_response>\nsunny\n</tool_response>"}
    assert len(out) == 4


@pytest.fixture(scope="module")
def tokenizer():
    return llguidance.LLTokenizer(str(prepare_artifacts(Settings()).tokenizer_path), eos_token=2)


def allows(tokenizer, grammar, text):
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ids = tokenizer.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


ONE = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune", "unit": "c"}}\n</tool_call>'
TWO = ONE + '\n<tool_call>\n{"name": "book_table", "arguments": {"people": 2}}\n</tool_call>'


@pytest.mark.parametrize("choice, parallel, text, allowed", [
    ("auto", True, "Just an answer, no call.", True),
    ("auto", True, "Sure. " + ONE, True),
    ("auto", True, "Sure. " + TWO, True),
    ("auto", False, "Sure. " + TWO, False),  # at most one call
    ("auto", True, ONE.replace('"unit": "c"', '"unit": 5'), False),  # arguments follow the schema
    ("auto", True, ONE.replace("get_weather", "get_time"), False),  # only the given tools
    ("auto", True, ONE + " and some text after", False),
    ("required", True, "Sure. " + ONE, False),  # a call from the first token
    ("required", True, TWO, True),
    ("get_weather", False, ONE, True),
    ("book_table", False, ONE, False),
    ("none", True, "No call: " + ONE, False),
    ("none", True, "Plain text < > only.", True),
])
def test_the_grammar_keeps_the_output_to_the_tool_choice(tokenizer, choice, parallel, text, allowed):
    grammar = HERMES.grammar([WEATHER, BOOK], choice, parallel)
    assert allows(tokenizer, grammar, text) is allowed
