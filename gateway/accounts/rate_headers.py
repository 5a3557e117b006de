"""Rate-limit response headers as OpenAI sends them (the SDK and voice frameworks act on these).

``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` on every response of
a capped account; on a 429 also ``retry-after`` (whole seconds, rounded up) and
``retry-after-ms``, which the OpenAI SDK prefers. Durations use OpenAI's
format: ``20ms``, ``1s``, ``6m0s``, ``1.5s``.
"""

from __future__ import annotations

import math

from gateway.accounts.limits import Refusal, WindowState


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s"


def window_headers(window: WindowState | None) -> dict[str, str]:
    if window is None:
        return {}
    headers = {}
    if window.limit:
        headers["x-ratelimit-limit-requests"] = str(window.limit)
        headers["x-ratelimit-remaining-requests"] = str(max(0, window.limit - window.used))
        headers["x-ratelimit-reset-requests"] = duration(window.reset_s)
    if window.tokens_limit:
        headers["x-ratelimit-limit-tokens"] = str(window.tokens_limit)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, window.tokens_limit - window.tokens_used))
        headers["x-ratelimit-reset-tokens"] = duration(window.tokens_reset_s)
    return headers


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    retry_s = max(refusal.retry_after_s, 0.001)
    return {**window_headers(refusal.window), "retry-after": str(max(1, math.ceil(retry_s))),
            "retry-after-ms": str(max(1, math.ceil(retry_s * 1000)))}
