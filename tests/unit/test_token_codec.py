"""The gateway's codec: piecewise, cached encoding equals the tokenizer's; bytes decode exactly."""

import json

import pytest
from tokenizers import Tokenizer

from paths import DATA_DIR
from gateway.settings import Settings
from gateway.chat.token_codec import TokenCodec
from gateway.server.triton_launcher import prepare_artifacts

CORPUS = json.loads((DATA_DIR / "multilingual_corpus.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(prepare_artifacts(Settings()).tokenizer_path))


def chatml(system, user):
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_encoding_equals_the_tokenizer_with_and_without_the_cache(tokenizer):
    codec = TokenCodec(tokenizer, cache_pieces=8)
    texts = [chatml(CORPUS[i], CORPUS[-1 - i]) for i in range(len(CORPUS))] + CORPUS
    texts.append("<|im_start|><|im_end|>x<|endoftext|>" + "<|im_start|>")  # special tokens back to back
    for _ in range(2):  # second pass: cached pieces (and evictions, with 8 slots)
        for text in texts:
            assert codec.encode(text) == tokenizer.encode(text, add_special_tokens=False).ids, text


def test_a_shared_system_prompt_is_tokenized_once(tokenizer):
    codec = TokenCodec(tokenizer)
    system = "You are the agent of a clinic. " * 50
    codec.encode(chatml(system, "hi"))
    assert f"system\n{system}" in codec._pieces
    assert codec.encode(chatml(system, "bye")) == tokenizer.encode(chatml(system, "bye"), add_special_tokens=False).ids


def test_token_bytes_rebuild_the_text_exactly(tokenizer):
    codec = TokenCodec(tokenizer)
    for line in CORPUS:
        ids = tokenizer.encode(line, add_special_tokens=False).ids
        assert b"".join(codec.token_bytes(i) for i in ids).decode() == line
    assert codec.token_bytes(2) == b"" and codec.token_bytes(10**6) == b""
