"""``stop`` strings matched on generated text, across token boundaries.

Text that could still be the start of a stop string is held back until the
next text resolves it; when a stop string appears, the text before it is
released and the rest (the stop string included) is dropped, as OpenAI does.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Text safe to emit; sets ``matched`` when a stop string was found."""
        if self.matched is not None or not self._stops:
            return "" if self.matched is not None else text
        buffer = self._held + text
        cut = -1
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut, self.matched = at, stop
        if cut != -1:
            self._held = ""
            return buffer[:cut]
        keep = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation, a held partial match is ordinary text."""
        held, self._held = self._held, ""
        return held if self.matched is None else ""

    def _partial_match_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best
