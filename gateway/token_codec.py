"""Text to token ids and token ids to bytes, from the artifacts' ``tokenizer.json``.

Encoding parses special tokens in the rendered prompt (``<|im_start|>`` ...), as
llama.cpp and Hugging Face do for chat templates. Decoding is byte-level: each
token id maps to the exact bytes it stands for, so the incremental detokenizer
can hold back incomplete UTF-8 itself. Special tokens decode to nothing (as with
``skip_special_tokens``).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from gateway.model_artifacts import ModelArtifacts


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
    def __init__(self, tokenizer: Tokenizer, add_bos: bool = False, bos_token_id: int | None = None):
        self._tokenizer = tokenizer
        self._prefix = [bos_token_id] if add_bos and bos_token_id is not None else []
        alphabet = _byte_level_alphabet()
        special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
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
        return self._prefix + self._tokenizer.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < len(self._bytes):
            return self._bytes[token_id]
        return b""

    def decode(self, token_ids: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in token_ids).decode("utf-8", errors="replace")
