"""The gateway's codec: piecewise, cached encoding equals the tokenizer's; bytes decode exactly."""

import json
import threading
import time

import pytest
from tokenizers import Tokenizer

from tests.paths import DATA_DIR
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


def test_long_pieces_encode_exactly_and_huge_ones_stay_out_of_the_cache(tokenizer):
    codec = TokenCodec(tokenizer)
    long_system = "Namaste, main aapki kaise madad kar sakti hoon? नमस्ते, मैं आपकी मदद करूँगी। " * 80  # > 4096 chars
    huge = " ".join(f"word{i % 97}" for i in range(20000))  # > 65536 chars
    for text in (chatml(long_system, "hi"), chatml("Be brief.", huge)):
        assert codec.encode(text) == tokenizer.encode(text, add_special_tokens=False).ids
    assert f"system\n{long_system}" in codec._pieces  # a long shared prompt is still tokenized once
    assert not any(len(piece) > 65536 for piece in codec._pieces)


def test_a_long_piece_is_tokenized_without_holding_the_gil(tokenizer):
    # the gateway prepares large requests on a worker thread: its event loop must keep running meanwhile.
    # The text doubles until its encoding takes a tenth of a second on this CPU (60,000 items took ~0.2 s
    # on the project's VMs), so that the other thread's 1 ms naps could be held up on a faster CPU too
    items = 30000
    while True:
        took, worst = _encode_beside_a_ticker(TokenCodec(tokenizer), " ".join(f"item{i % 89}" for i in range(items)))
        if took >= 0.1 or items >= 2_000_000:
            break
        items *= 2
    # holding the GIL the other thread would wait the whole encode
    assert took > 0.05 and worst < took / 2, (items, took, worst)


def _encode_beside_a_ticker(codec: TokenCodec, text: str) -> tuple[float, float]:
    """How long ``codec`` took to encode ``text``, and the longest a thread napping 1 ms at a
    time meanwhile took for one nap."""
    worst, done = [0.0], threading.Event()

    def tick():
        while not done.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            worst[0] = max(worst[0], time.perf_counter() - started)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.05)
        worst[0] = 0.0
        started = time.perf_counter()
        codec.encode(text)
        took = time.perf_counter() - started
    finally:
        done.set()
        ticker.join()
    return took, worst[0]
