"""The language a caller writes in, offline: by script first, then, where a script
is shared by several languages (Latin, Cyrillic, Arabic, Devanagari, Bengali), by
``py3langid`` (a maintained fork of langid.py, its model inside the package)
restricted to the languages written in that script.
"""

from __future__ import annotations

import unicodedata
from functools import cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

# Unicode blocks of scripts that name one language (or a few, decided by langid)
_SCRIPTS: list[tuple[int, int, tuple[str, ...]]] = [
    (0x0370, 0x03FF, ("el",)),
    (0x0400, 0x04FF, ("ru", "uk", "bg", "sr", "mk", "kk", "mn", "be")),
    (0x0530, 0x058F, ("hy",)),
    (0x0590, 0x05FF, ("he",)),
    (0x0600, 0x06FF, ("ar", "fa", "ur")),
    (0x0750, 0x077F, ("ar", "fa", "ur")),
    (0x0900, 0x097F, ("hi", "mr", "ne")),
    (0x0980, 0x09FF, ("bn", "as")),
    (0x0A00, 0x0A7F, ("pa",)),
    (0x0A80, 0x0AFF, ("gu",)),
    (0x0B00, 0x0B7F, ("or",)),
    (0x0B80, 0x0BFF, ("ta",)),
    (0x0C00, 0x0C7F, ("te",)),
    (0x0C80, 0x0CFF, ("kn",)),
    (0x0D00, 0x0D7F, ("ml",)),
    (0x0D80, 0x0DFF, ("si",)),
    (0x0E00, 0x0E7F, ("th",)),
    (0x0E80, 0x0EFF, ("lo",)),
    (0x1000, 0x109F, ("my",)),
    (0x10A0, 0x10FF, ("ka",)),
    (0x1100, 0x11FF, ("ko",)),
    (0x1200, 0x137F, ("am",)),
    (0x1780, 0x17FF, ("km",)),
    (0x3040, 0x30FF, ("ja",)),
    (0x3130, 0x318F, ("ko",)),
    (0x4E00, 0x9FFF, ("zh",)),
    (0xAC00, 0xD7AF, ("ko",)),
    (0xFB50, 0xFDFF, ("ar", "fa", "ur")),
    (0xFE70, 0xFEFF, ("ar", "fa", "ur")),
]
_LATIN = ("en", "es", "fr", "de", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "sk", "hu", "ro", "hr",
          "sl", "lt", "lv", "et", "tr", "vi", "id", "ms", "tl", "sw", "af", "ca", "eu", "gl", "is", "ga", "cy",
          "sq", "az", "zu", "jv", "bs")
_ALIASES = {"nb": "no", "nn": "no"}
# langid takes short Marathi for Hindi; these are frequent in Marathi and absent from Hindi
_MARATHI_MARKS = ("ळ", "आहे", "मला", "तुम्ही", "नाही", "काय ")


@cache
def _identifier(languages: tuple[str, ...]) -> LanguageIdentifier:
    identifier = LanguageIdentifier.from_pickled_model(MODEL_FILE)
    identifier.set_languages([code for code in languages if code in identifier.nb_classes] +
                             (["nb", "nn"] if "no" in languages else []))
    return identifier


def _script_of(char: str) -> tuple[str, ...] | None:
    point = ord(char)
    for low, high, languages in _SCRIPTS:
        if low <= point <= high:
            return languages
    if char.isalpha() and "LATIN" in unicodedata.name(char, ""):
        return _LATIN
    return None


def detect_language(text: str, default: str = "en") -> str:
    """An ISO 639-1 code for ``text`` (``default`` when it has no letters)."""
    counts: dict[tuple[str, ...], int] = {}
    for char in text:
        languages = _script_of(char)
        if languages is not None:
            counts[languages] = counts.get(languages, 0) + 1
    if not counts:
        return default
    if ("ja",) in counts and ("zh",) in counts:
        return "ja"  # Japanese mixes kanji with kana; Chinese has no kana
    languages = max(counts, key=counts.get)
    if len(languages) == 1:
        return languages[0]
    if languages[0] == "hi" and any(mark in text for mark in _MARATHI_MARKS):
        return "mr"
    code, _ = _identifier(languages).classify(text)
    return _ALIASES.get(code, code)
