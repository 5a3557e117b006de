"""Incremental detokenization that only ever emits whole characters and whole
grapheme clusters.

Token bytes go through an incremental UTF-8 decoder, which holds back an
incomplete multi-byte sequence until its last byte arrives. The decoded text
then passes a grapheme gate: the trailing grapheme cluster (Unicode extended
grapheme clusters, ``regex``'s ``\\X``) is held back, because the next token may
still extend it - a virama and the consonant after it, a vowel sign, a
combining accent, an emoji skin tone, ZWJ sequence or keycap. Only ASCII spaces
and punctuation pass at once (a letter or digit may still take a combining mark
or keycap), so English text is not delayed by a whole token. ``finish`` flushes
what is held; bytes of a character the model never completed are dropped, not
turned into U+FFFD.
"""

from __future__ import annotations

import codecs

import regex

_CLUSTER = regex.compile(r"\X")
# ASCII that nothing in real text extends ('\r' can still be followed by '\n';
# '#' and '*' start keycap emoji, like digits).
_FINAL_ASCII = frozenset(" \t\n!\"$%&'()+,-./:;<=>?@[\\]^_`{|}~")


def split_trailing_cluster(text: str) -> tuple[str, str]:
    """``(safe, held)``: ``held`` is the last grapheme cluster of ``text`` unless
    it is a single ASCII space or punctuation character. ``text`` must start at a
    cluster boundary (the gate only ever passes held text plus new text)."""
    if not text or text[-1] in _FINAL_ASCII:
        return text, ""
    start = 0
    for match in _CLUSTER.finditer(text):
        start = match.start()
    return text[:start], text[start:]


class GraphemeGate:
    """Holds back a possibly incomplete trailing grapheme cluster."""

    def __init__(self) -> None:
        self._held = ""

    def push(self, text: str) -> str:
        safe, self._held = split_trailing_cluster(self._held + text)
        return safe

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


class IncrementalDetokenizer:
    """Token bytes to UTF-8-complete text (no grapheme gate; see ``GraphemeGate``)."""

    def __init__(self, token_bytes) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: list[int]) -> str:
        return self._decoder.decode(b"".join(self._token_bytes(t) for t in token_ids))

    def finish(self) -> None:
        """Drops the bytes of an unfinished character (cut by ``length`` or a stop)."""
        self._decoder.reset()
