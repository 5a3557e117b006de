"""Filler phrases: what a voice agent says while a tool runs ("One moment, let me
check that."), in the caller's language, from a phrase bank (``data/filler_phrases.json``,
several phrases per language). A phrase the previous assistant turn already said is
not said again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gateway.tools.language import detect_language

PHRASES_FILE = Path(__file__).resolve().parent / "data" / "filler_phrases.json"


@cache
def phrase_bank() -> dict[str, tuple[str, ...]]:
    return {code: tuple(phrases) for code, phrases in json.loads(PHRASES_FILE.read_text()).items()}


@dataclass(frozen=True)
class FillerChoice:
    phrase: str
    language: str | None  # None: one of the client's own phrases


def choose_filler(last_user_text: str, last_assistant_text: str, custom: list[str] | None = None,
                  rng: random.Random | None = None) -> FillerChoice:
    """A phrase for a caller whose last message is ``last_user_text``; never one that
    ``last_assistant_text`` (the previous assistant turn) contains, when there is another."""
    rng = rng or random
    if custom:
        phrases, language = tuple(custom), None
    else:
        bank = phrase_bank()
        language = detect_language(last_user_text)
        language = language if language in bank else "en"
        phrases = bank[language]
    fresh = [p for p in phrases if p not in last_assistant_text] or list(phrases)
    return FillerChoice(rng.choice(fresh), language)
