"""Text to token ids and token ids to bytes, from the artifacts' ``tokenizer.json``.

Encoding parses special tokens in the rendered prompt (``<|im_start|>`` ...), as
llama.cpp and Hugging Face do for chat templates. Both tokenize the text between
special tokens piece by piece, independently, so the codec does the same and
keeps recent pieces in an LRU cache: the long system prompt that thousands of
calls share is tokenized once, not on every turn. Decoding is byte-level: each
token id maps to the exact bytes it stands for, so the incremental detokenizer
can hold back incomplete UTF-8 itself. Special tokens decode to nothing (as with
``skip_special_tokens``).

A long piece (over ``LONG_PIECE_CHARS``) goes through ``encode_batch``, which
releases the GIL while Rust tokenizes (``encode`` holds it: 145,000 tokens held
every other thread of the gateway for 0.4 s); pieces over ``CACHED_PIECE_CHARS``
are not cached (a huge one-off text would only push out shared prompts). The codec may
be used from several threads (the gateway prepares large requests off its event
loop); the cache is locked.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

from tokenizers import Tokenizer

from gateway.model_artifacts import ModelArtifacts

LONG_PIECE_CHARS = 4096  # longer pieces are tokenized without holding the GIL
CACHED_PIECE_CHARS = 65536  # longer pieces are not cached


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenCodec:
    def __init__(self, tokenizer: Tokenizer, add_bos: bool = False, bos_token_id: int | None = None,
                 cache_pieces: int = 4096):
        self._tokenizer = tokenizer
        self._prefix = [bos_token_id] if add_bos and bos_token_id is not None else []
        alphabet = _byte_level_alphabet()
        added = tokenizer.get_added_tokens_decoder()
        special = {t.content for t in added.values() if t.special}
        self._special_ids = {t.content: i for i, t in added.items()}
        # longest first, so that a special token that contains another wins
        self._splitter = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._special_ids, key=len,
                                                                                reverse=True)) + ")")
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self._pieces_lock = threading.Lock()
        self._cache_pieces = cache_pieces
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        table: list[bytes] = []
        for token_id in range(size):
            piece = tokenizer.id_to_token(token_id)
            if piece is None or piece in special:
                table.append(b"")
            else:
                table.append(bytes(alphabet[c] for c in piece if c in alphabet))
        self._bytes = table
        self.vocab_size = size

    @classmethod
    def from_artifacts(cls, artifacts: ModelArtifacts) -> "TokenCodec":
        tokenizer = Tokenizer.from_file(str(Path(artifacts.tokenizer_path)))
        return cls(tokenizer, artifacts.add_bos_token, artifacts.bos_token_id)

    def encode(self, text: str) -> list[int]:
        ids = list(self._prefix)
        for n, piece in enumerate(self._splitter.split(text) if self._special_ids else [text]):
            if n % 2:
                ids.append(self._special_ids[piece])
            elif piece:
                ids += self._encode_piece(piece)
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        cached = len(piece) <= CACHED_PIECE_CHARS
        if cached:
            with self._pieces_lock:
                ids = self._pieces.get(piece)
                if ids is not None:
                    self._pieces.move_to_end(piece)
                    return ids
        if len(piece) > LONG_PIECE_CHARS:
            ids = self._tokenizer.encode_batch([piece], add_special_tokens=False)[0].ids
        else:
            ids = self._tokenizer.encode(piece, add_special_tokens=False).ids
        if not cached:
            return ids
        with self._pieces_lock:
            self._pieces[piece] = ids
            if len(self._pieces) > self._cache_pieces:
                self._pieces.popitem(last=False)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < len(self._bytes):
            return self._bytes[token_id]
        return b""

    def decode(self, token_ids: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in token_ids).decode("utf-8", errors="replace")
