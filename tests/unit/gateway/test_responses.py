"""Response shaping: the per-token fast path serializes exactly what the schema path does."""

import random

import pytest

from gateway.api import sse
from gateway.api.responses import ResponseShaper
from gateway.chat.choice_stream import Delta

SAMPLES = ["Hello", " world", "", "\n", '"quoted" \\ back', "\t\b\f\r\x00\x1f\x7f", "नमस्ते", "வணக்கம்", "اردو",
           "emoji 🎉", "\u2028\u2029", "</script>", "a" * 500]


def _random_text(rng: random.Random) -> str:
    alphabet = [chr(c) for c in range(0, 0x80)] + list("éßधமਪ୍ఆ😀\u2028\ufeff")
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


@pytest.mark.parametrize("include_usage", [False, True])
def test_plain_content_fast_path_equals_the_schema_path(include_usage):
    shaper = ResponseShaper("electron", "fp_x", include_usage=include_usage)
    rng = random.Random(7)
    for text in SAMPLES + [_random_text(rng) for _ in range(2000)]:
        if not text:
            continue
        delta = Delta(content=text)
        [chunk] = shaper.stream_chunks(delta)
        assert sse.frame(shaper.plain_content_json(delta)) == sse.event(chunk), repr(text)


def test_anything_but_plain_text_takes_the_schema_path():
    shaper = ResponseShaper("electron", "fp_x")
    assert shaper.plain_content_json(Delta(content="")) is None
    assert shaper.plain_content_json(Delta(content="x", finish_reason="stop")) is None
    assert shaper.plain_content_json(Delta(tool_calls=[{"index": 0}])) is None
    assert ResponseShaper("electron", "fp_x", want_logprobs=True).plain_content_json(Delta(content="x")) is None
