"""The per-choice state machine: UTF-8 and grapheme hold-back, stop strings, finish reasons.

The multilingual corpus (Indic conjuncts, Arabic, CJK, emoji sequences, combining
marks) is tokenized with the model's real tokenizer and streamed one token at a time.
"""

import json

import pytest
import regex

from tests.paths import DATA_DIR
from gateway.chat.choice_stream import ChoiceStream
from gateway.settings import Settings
from gateway.chat.token_codec import TokenCodec
from gateway.server.triton_launcher import prepare_artifacts

CORPUS = json.loads((DATA_DIR / "multilingual_corpus.json").read_text())


@pytest.fixture(scope="module")
def codec():
    return TokenCodec.from_artifacts(prepare_artifacts(Settings()))


def stream(codec, ids, stops=(), max_tokens=10_000, per_feed=1):
    choice = ChoiceStream(codec.token_bytes, list(stops), max_tokens)
    deltas = []
    for i in range(0, len(ids), per_feed):
        d = choice.feed(ids[i:i + per_feed])
        if d is not None:
            deltas.append(d.content)
        if choice.stopped:
            break
    last = choice.finish()
    deltas.append(last.content)
    return deltas, last.finish_reason, choice


def clusters(text):
    return regex.findall(r"\X", text)


@pytest.mark.parametrize("line", CORPUS, ids=range(len(CORPUS)))
def test_each_corpus_line_streams_intact_on_whole_grapheme_clusters(codec, line):
    ids = codec.encode(line)
    deltas, reason, _ = stream(codec, ids)
    assert "".join(deltas) == line
    assert reason == "stop"
    full = clusters(line)
    sent = ""
    for d in deltas:
        assert "\ufffd" not in d
        sent += d
        # every prefix sent so far ends on a cluster boundary of the whole text
        assert clusters(sent) == full[:len(clusters(sent))], (sent, d)


def test_a_split_multibyte_character_is_held_until_complete(codec):
    # "क्ष" is several tokens' worth of bytes in a byte-level BPE; feed raw bytes token by token
    ids = codec.encode("क्षत्रिय")
    pieces = [codec.token_bytes(t) for t in ids]
    assert any(len(p) % 3 for p in pieces), "the tokenizer should split a character across tokens here"
    deltas, _, _ = stream(codec, ids)
    assert "".join(deltas) == "क्षत्रिय"


def test_streaming_in_any_chunking_gives_the_same_text(codec):
    text = "नमस्ते! Hello 👋🏽 — café, ক্ষমা করবেন।"
    ids = codec.encode(text)
    for per_feed in (1, 2, 3, 7, len(ids)):
        assert "".join(stream(codec, ids, per_feed=per_feed)[0]) == text


def test_stop_string_across_tokens_cuts_the_text_and_finishes_with_stop(codec):
    ids = codec.encode("The answer is 42. END OF ANSWER and then more")
    deltas, reason, choice = stream(codec, ids, stops=["END OF"])
    assert "".join(deltas) == "The answer is 42. "
    assert reason == "stop" and choice.stopped
    assert choice.completion_tokens < len(ids)


def test_length_when_max_tokens_runs_out_and_a_cut_character_is_dropped(codec):
    ids = codec.encode("ok क्ष")
    cut = ids[:-1]  # the last character's bytes are incomplete
    deltas, reason, choice = stream(codec, cut, max_tokens=len(cut))
    text = "".join(deltas)
    assert reason == "length" and choice.completion_tokens == len(cut)
    assert "\ufffd" not in text and "ok क्ष".startswith(text)


def test_special_tokens_add_no_text(codec):
    ids = [2] + codec.encode("hi") + [0]
    deltas, _, choice = stream(codec, ids)
    assert "".join(deltas) == "hi" and choice.completion_tokens == len(ids)


def test_logprobs_follow_the_text_they_belong_to(codec):
    ids = codec.encode("Hi there")
    choice = ChoiceStream(codec.token_bytes, [], 100, logprobs=True)
    got = []
    for t in ids:
        d = choice.feed([t], [-0.25])
        if d is not None:
            got.extend(d.logprobs)
    got.extend(choice.finish().logprobs)
    assert [e["logprob"] for e in got] == [-0.25] * len(ids)
    assert b"".join(bytes(e["bytes"]) for e in got) == "Hi there".encode()
