"""Exact cost arithmetic: integer pico-dollars, never binary floats.

Prices are USD per million tokens, given as decimal strings ("0.40") and held as
integer micro-dollars per million tokens (400000). Tokens x micro-dollars per
million tokens = pico-dollars (1e-12 USD), an exact integer.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from gateway.settings import CANCELLED_PROMPT_BILLING

MICRO = Decimal(10) ** 6
PICO = Decimal(10) ** 12


def micro_per_million(usd_per_million: str) -> int:
    """``"0.40"`` -> 400000; at most six decimal places, never negative."""
    try:
        value = Decimal(usd_per_million.strip())
    except InvalidOperation:
        raise ValueError(f"price {usd_per_million!r} is not a decimal number") from None
    micro = value * MICRO
    if micro < 0 or micro != micro.to_integral_value():
        raise ValueError(f"price {usd_per_million!r} must be >= 0 with at most 6 decimal places")
    return int(micro)


@dataclass(frozen=True)
class Prices:
    """Micro-dollars per million tokens, kept with every usage row."""
    input: int
    cached_input: int
    output: int

    @classmethod
    def from_settings(cls, settings) -> "Prices":
        return cls(micro_per_million(settings.price_input_per_million),
                   micro_per_million(settings.price_cached_input_per_million),
                   micro_per_million(settings.price_output_per_million))


@dataclass(frozen=True)
class Cost:
    """Pico-dollars per line item."""
    input: int
    cached_input: int
    output: int

    @property
    def total(self) -> int:
        return self.input + self.cached_input + self.output


NO_COST = Cost(0, 0, 0)


def check_counts(prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> None:
    """ValueError unless 0 <= cached <= prompt and completion >= 0."""
    if not 0 <= cached_tokens <= prompt_tokens or completion_tokens < 0:
        raise ValueError(f"inconsistent token counts: prompt={prompt_tokens} cached={cached_tokens} "
                         f"completion={completion_tokens}")


def cost_of(prompt_tokens: int, cached_tokens: int, completion_tokens: int, prices: Prices) -> Cost:
    """Uncached prompt tokens at the input price, cached ones at the cached price,
    completion tokens at the output price."""
    check_counts(prompt_tokens, cached_tokens, completion_tokens)
    return Cost((prompt_tokens - cached_tokens) * prices.input, cached_tokens * prices.cached_input,
                completion_tokens * prices.output)


# How a request cancelled before the engine's first token pays for the prompt tokens the
# engine took in for it: one of CANCELLED_PROMPT_BILLING (``Settings.cancelled_prompt_billing``;
# docs/accounts.md, "The usage ledger").


def cancelled_prompt_cost(prompt_tokens: int, cached_tokens: int, prices: Prices, policy: str) -> Cost:
    """``cached``: every prompt token the engine took in (computed or reused) at the cached
    input price - the computed ones stay in the prefix cache, and the call's next request
    pays them at that price again; ``full``: as any request (computed at the input price,
    reused at the cached price); ``none``: nothing."""
    if policy == "none":
        return NO_COST
    if policy == "full":
        return cost_of(prompt_tokens, cached_tokens, 0, prices)
    if policy == "cached":
        check_counts(prompt_tokens, cached_tokens, 0)
        return Cost(0, prompt_tokens * prices.cached_input, 0)
    raise ValueError(f"cancelled-prompt billing {policy!r} is not one of {', '.join(CANCELLED_PROMPT_BILLING)}")


def usd(pico: int) -> Decimal:
    return Decimal(pico) / PICO
