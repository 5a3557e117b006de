"""Pure logic of the accounts layer: keys, the sliding window and semaphore, cost arithmetic, headers."""

import hashlib
import random
from decimal import Decimal

import pytest

from gateway.accounts.api_keys import KEY_PREFIX, bearer_token, hash_key, new_key, same_hash
from gateway.accounts.limits import Admission, Limits, LocalLimiter, Refusal
from gateway.accounts.pricing import Prices, cancelled_prompt_cost, cost_of, micro_per_million, usd
from gateway.accounts.rate_headers import duration, refusal_headers, window_headers
from gateway.accounts.service import is_loopback
from gateway.settings import Settings
from tests.support.clock import Clock


# --- keys ------------------------------------------------------------------------

def test_keys_are_random_prefixed_and_stored_only_as_their_hash():
    made = {new_key() for _ in range(200)}
    assert len({m.key for m in made}) == 200
    for m in made:
        assert m.key.startswith(KEY_PREFIX)
        secret = m.key[len(KEY_PREFIX):]
        assert len(secret) * 6 >= 256  # 43 base64url characters: 32 random bytes
        assert m.hash == hashlib.sha256(m.key.encode()).hexdigest() == hash_key(m.key)
        assert m.key not in m.hash and m.prefix == m.key[:len(KEY_PREFIX) + 6]
        assert m.key_id.startswith("key_") and m.key_id not in m.key


def test_bearer_token_parsing():
    assert bearer_token("Bearer sk-el-abc") == "sk-el-abc"
    assert bearer_token("bearer   sk-el-abc  ") == "sk-el-abc"
    for bad in (None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "sk-el-abc"):
        assert bearer_token(bad) is None


def test_hash_comparison():
    a = hash_key("x")
    assert same_hash(a, hash_key("x")) and not same_hash(a, hash_key("y"))


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "::1", "localhost", "127.1.2.3"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.5", "::", "example.com"]))


# --- pricing ---------------------------------------------------------------------

def test_prices_parse_to_exact_micro_dollars_per_million():
    assert micro_per_million("0.40") == 400_000
    assert micro_per_million("0.1") == 100_000
    assert micro_per_million("1.600001") == 1_600_001
    for bad in ("0.0000001", "-1", "abc", "1e400x"):
        with pytest.raises(ValueError):
            micro_per_million(bad)


def test_cost_is_exact_with_cached_input_at_a_quarter():
    prices = Prices.from_settings(Settings())  # 0.40 / 0.10 / 1.60 per million
    cost = cost_of(prompt_tokens=1000, cached_tokens=600, completion_tokens=50, prices=prices)
    assert cost.input == 400 * 400_000 and cost.cached_input == 600 * 100_000 and cost.output == 50 * 1_600_000
    assert usd(cost.total) == Decimal("0.00030")  # 400*0.4e-6 + 600*0.1e-6 + 50*1.6e-6
    # a million cached tokens cost exactly 75% less than a million uncached ones
    assert cost_of(10**6, 10**6, 0, prices).total * 4 == cost_of(10**6, 0, 0, prices).total
    # no float drift over many rows: 0.1 + 0.2 == 0.3
    rows = [cost_of(1, 0, 0, Prices(100_000, 0, 0)), cost_of(2, 0, 0, Prices(100_000, 0, 0))]
    assert usd(sum(c.total for c in rows)) == usd(cost_of(3, 0, 0, Prices(100_000, 0, 0)).total)
    with pytest.raises(ValueError):
        cost_of(10, 11, 0, prices)


# --- limiter ---------------------------------------------------------------------

def test_concurrency_cap_is_exact_and_a_slot_is_released_once():
    limiter = LocalLimiter(Clock())
    caps = Limits(concurrency=5, rpm=0)
    decisions = [limiter.decide("a", caps) for _ in range(200)]
    admitted = [d for d in decisions if isinstance(d, Admission)]
    assert len(admitted) == 5 and all(isinstance(d, Refusal) and d.cap == "concurrency" for d in decisions[5:])
    assert limiter.in_flight("a") == 5 and limiter.in_flight("b") == 0
    limiter.release(admitted[0])
    limiter.release(admitted[0])  # a second release gives nothing back
    assert limiter.in_flight("a") == 4
    assert isinstance(limiter.decide("a", caps), Admission)
    assert isinstance(limiter.decide("a", caps), Refusal)
    assert isinstance(limiter.decide("b", caps), Admission)  # accounts are separate


def test_rpm_is_a_true_sliding_window():
    clock = Clock()
    limiter = LocalLimiter(clock)
    caps = Limits(concurrency=0, rpm=200)
    results = []
    for i in range(250):
        clock.now = 1000.0 + i * 0.01
        results.append(limiter.decide("a", caps))
    assert sum(isinstance(r, Admission) for r in results) == 200
    refusal = results[-1]
    assert refusal.cap == "rpm" and 57 < refusal.retry_after_s <= 60
    clock.now = 1059.99  # the first admission (t=1000.00) is still inside the window
    assert isinstance(limiter.decide("a", caps), Refusal)
    clock.now = 1060.005  # it left: exactly one more
    assert isinstance(limiter.decide("a", caps), Admission)
    assert isinstance(limiter.decide("a", caps), Refusal)


def test_no_60_second_span_ever_holds_more_than_rpm_admissions():
    """A fixed window would admit 2x the cap across a boundary; a sliding one never does."""
    clock = Clock()
    limiter = LocalLimiter(clock)
    caps = Limits(concurrency=0, rpm=50)
    rng = random.Random(7)
    admitted = []
    for _ in range(5000):
        clock.now += rng.expovariate(3.0)
        decision = limiter.decide("a", caps)
        if isinstance(decision, Admission):
            admitted.append(clock.now)
            limiter.release(decision)
    j = 0
    for i, t in enumerate(admitted):
        while admitted[j] <= t - 60:
            j += 1
        assert i - j + 1 <= 50
    assert len(admitted) > 50 * (admitted[-1] - admitted[0]) / 60 * 0.9  # and it does admit up to the cap


def test_tokens_per_minute():
    clock = Clock()
    limiter = LocalLimiter(clock)
    caps = Limits(concurrency=0, rpm=0, tpm=1000)
    first = limiter.decide("a", caps)
    limiter.record_tokens(first, 1200)
    refusal = limiter.decide("a", caps)
    assert isinstance(refusal, Refusal) and refusal.cap == "tpm" and refusal.window.tokens_used == 1200
    clock.now += 60.01
    assert isinstance(limiter.decide("a", caps), Admission)


# --- headers ---------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(0.02, "20ms"), (0, "0ms"), (1, "1s"), (1.5, "1.5s"), (59.9994, "59.999s"),
                                           (360, "6m0s"), (90.25, "1m30.25s")])
def test_durations_in_openai_format(seconds, text):
    assert duration(seconds) == text


def test_rate_limit_headers():
    limiter = LocalLimiter(Clock())
    caps = Limits(concurrency=0, rpm=2)
    admitted = limiter.decide("a", caps)
    headers = window_headers(admitted.window)
    assert headers == {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1",
                       "x-ratelimit-reset-requests": "1m0s"}
    limiter.decide("a", caps)
    refused = limiter.decide("a", caps)
    headers = refusal_headers(refused)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["retry-after"] == "60" and headers["retry-after-ms"] == "60000"


def test_a_request_cancelled_before_its_first_token_pays_its_prompt_by_the_policy():
    prices = Prices(input=400_000, cached_input=100_000, output=1_600_000)  # per million: $0.40, $0.10, $1.60
    cached = cancelled_prompt_cost(800, 200, prices, "cached")
    assert (cached.input, cached.cached_input, cached.output) == (0, 800 * 100_000, 0)
    full = cancelled_prompt_cost(800, 200, prices, "full")
    assert (full.input, full.cached_input, full.output) == (600 * 400_000, 200 * 100_000, 0)
    assert cancelled_prompt_cost(800, 200, prices, "none").total == 0
    with pytest.raises(ValueError, match="inconsistent token counts"):
        cancelled_prompt_cost(100, 200, prices, "cached")
    with pytest.raises(ValueError, match="not one of cached, full, none"):
        cancelled_prompt_cost(800, 200, prices, "half")
