"""Playback stalls: what a caller would hear as silence in the middle of a reply.

A text-to-speech player starts speaking at the first text and speaks at
``chars_per_s``; it stalls whenever it has spoken everything received so far and
the next text has not arrived yet. ``stalls`` gives each such wait of one reply.
"""

from __future__ import annotations

DEFAULT_CHARS_PER_S = 15.0


def stalls(text_deltas: list[tuple[float, int]], chars_per_s: float = DEFAULT_CHARS_PER_S) -> list[float]:
    """Seconds the player waited, one entry per stall, for text arriving as
    ``(time_s, characters)`` in order of arrival."""
    waits: list[float] = []
    spoken_until = None  # when the player will have spoken everything received so far
    for at, chars in text_deltas:
        if spoken_until is None:
            spoken_until = at
        elif at > spoken_until:
            waits.append(at - spoken_until)
            spoken_until = at
        spoken_until += chars / chars_per_s
    return waits


def longest_stall(text_deltas: list[tuple[float, int]], chars_per_s: float = DEFAULT_CHARS_PER_S) -> float:
    return max(stalls(text_deltas, chars_per_s), default=0.0)
