"""Per-account caps and the in-process limiter.

``Limiter`` is the interface both stores implement: ``admit`` takes a
concurrency slot and a place in the 60-second request window (or refuses with
the cap that was hit), ``release`` gives the slot back, ``record_tokens`` adds a
finished request's tokens to the tokens-per-minute window. ``LocalLimiter``
keeps it all in this process (the embedded default; one gateway process);
``gateway.accounts.redis_limiter.RedisLimiter`` shares it through Redis.

The request window is a true sliding window: a request is admitted when fewer
than ``rpm`` requests were admitted in the 60 seconds before it, so no 60-second
span ever holds more than ``rpm`` admissions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

log = logging.getLogger(__name__)
WINDOW_S = 60.0
CONCURRENCY_RETRY_S = 1.0  # a slot frees when some stream ends: nobody knows when; ask again soon


@dataclass(frozen=True)
class Limits:
    """0 means no cap."""
    concurrency: int
    rpm: int
    tpm: int = 0


UNLIMITED = Limits(0, 0, 0)


@dataclass(frozen=True)
class WindowState:
    """What the rate-limit headers say after a decision."""
    limit: int
    used: int  # in the window, this request included when admitted
    reset_s: float  # until the oldest entry leaves the window (one more becomes available)
    tokens_limit: int = 0
    tokens_used: int = 0
    tokens_reset_s: float = 0.0


@dataclass(frozen=True)
class Refusal:
    cap: str  # "concurrency", "rpm" or "tpm"
    value: int
    retry_after_s: float
    window: WindowState


@dataclass
class Admission:
    account: str
    token: str
    window: WindowState | None  # None: admitted without caps
    released: bool = False


class Limiter(Protocol):
    async def admit(self, account: str, limits: Limits) -> Admission | Refusal: ...
    def release(self, admission: Admission) -> None: ...
    def record_tokens(self, admission: Admission, tokens: int) -> None: ...
    async def close(self) -> None: ...


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass
class SlidingWindow:
    """Entries (time, weight) of the last ``span_s`` seconds."""
    span_s: float = WINDOW_S
    entries: deque = field(default_factory=deque)
    total: int = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.span_s:
            self.total -= self.entries.popleft()[1]

    def add(self, now: float, weight: int = 1) -> None:
        self.entries.append((now, weight))
        self.total += weight

    def reset_s(self, now: float) -> float:
        """Until the oldest entry leaves the window (0 when empty)."""
        return max(0.0, self.entries[0][0] + self.span_s - now) if self.entries else 0.0


@dataclass
class AccountState:
    inflight: set = field(default_factory=set)
    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)


class LocalLimiter:
    """Caps kept in this process: exact, since a decision never awaits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._accounts: dict[str, AccountState] = {}

    def in_flight(self, account: str) -> int:
        state = self._accounts.get(account)
        return len(state.inflight) if state else 0

    async def admit(self, account: str, limits: Limits) -> Admission | Refusal:
        return self.decide(account, limits)

    def decide(self, account: str, limits: Limits) -> Admission | Refusal:
        now = self._clock()
        state = self._accounts.setdefault(account, AccountState())
        state.requests.expire(now)
        state.tokens.expire(now)

        def window(admitted: bool) -> WindowState:
            return WindowState(limits.rpm, len(state.requests.entries), state.requests.reset_s(now),
                               limits.tpm, state.tokens.total, state.tokens.reset_s(now))

        if limits.concurrency and len(state.inflight) >= limits.concurrency:
            return Refusal("concurrency", limits.concurrency, CONCURRENCY_RETRY_S, window(False))
        if limits.rpm and len(state.requests.entries) >= limits.rpm:
            return Refusal("rpm", limits.rpm, state.requests.reset_s(now), window(False))
        if limits.tpm and state.tokens.total >= limits.tpm:
            return Refusal("tpm", limits.tpm, state.tokens.reset_s(now), window(False))
        token = new_token()
        state.inflight.add(token)
        state.requests.add(now)
        return Admission(account, token, window(True))

    def release(self, admission: Admission) -> None:
        if admission.released:
            return
        admission.released = True
        state = self._accounts.get(admission.account)
        if state is not None:
            state.inflight.discard(admission.token)

    def record_tokens(self, admission: Admission, tokens: int) -> None:
        if tokens > 0:
            self._accounts.setdefault(admission.account, AccountState()).tokens.add(self._clock(), tokens)

    async def close(self) -> None:
        pass
