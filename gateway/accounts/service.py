"""What the API layer asks of accounts: who is calling, may they start, what did it cost.

``AccountService`` holds the store, the key directory (all keys by hash, re-read
every ``accounts_refresh_s`` so that ``electron-keys`` changes reach running
gateways within seconds), the limiter and the ledger. Per request:
``authenticate`` (401) -> ``admit`` (429, or 503 when Redis is unreachable) ->
``settle`` exactly once, whichever way the request ends: the slot is released
and the usage row recorded. Nothing on that path does I/O but the limiter's one
Redis call; keys are looked up in memory.

Protected mode: while the store holds no key, a gateway bound to a loopback
address serves without keys (as account ``local``, without caps); bound to any
other address it refuses to start (``check_accounts_at_start``) and refuses
requests if the last key is deleted while it runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from gateway.accounts.api_keys import bearer_token, hash_key, same_hash
from gateway.accounts.ledger import UsageLedger, UsageRow, usage_row
from gateway.accounts.limits import UNLIMITED, Admission, Limiter, Limits, LocalLimiter, Refusal
from gateway.accounts.pricing import NO_COST, Prices, cancelled_prompt_cost, cost_of
from gateway.accounts.rate_headers import refusal_headers, window_headers
from gateway.accounts.store import AccountStore, KeyRecord
from gateway.errors import AuthenticationError, RateLimitError
from gateway.settings import Settings

log = logging.getLogger(__name__)
LOCAL_ACCOUNT = "local"
MISSING_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
               "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
WRONG_KEY = "Incorrect API key provided."
CAP_NAMES = {"concurrency": "concurrent requests", "rpm": "requests per minute (RPM)",
             "tpm": "tokens per minute (TPM)"}


@dataclass(frozen=True)
class Caller:
    account_id: str
    key_id: str | None
    admin: bool
    limits: Limits


@dataclass(frozen=True)
class Outcome:
    """How an admitted request ended, for its usage row."""
    status: str  # stop, length, tool_calls, cancelled, error, overloaded (refused by the engine, no tokens)
    prompt_tokens: int  # what the engine took in: all of the prompt once it produced an output
    cached_tokens: int
    completion_tokens: int
    # the engine delivered at least one output: billed in full; before that only a cancelled
    # request is billed, for its prompt tokens (``cancelled_prompt_billing``)
    engine_produced: bool
    ttft_ms: float | None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StartupError(RuntimeError):
    """Something the operator must fix before the gateway can serve: the message says what."""


class ProtectedModeError(StartupError):
    pass


def _without_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy wraps it in ``orig``)."""
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.strip().splitlines()[0].rstrip(".")


def protected_mode_message(settings: Settings) -> str:
    return (f"No API key exists and the gateway is bound to {settings.gateway_host}, which is not a loopback "
            "address: it will not serve without keys. Create one first:\n"
            "  .venv/bin/electron-keys create --account my-team --name my-key\n"
            "(same ELECTRON_DATA_DIR / ELECTRON_DATABASE_URL as the gateway; with docker compose: docker compose "
            "run --rm electron .venv/bin/electron-keys create --account my-team --name my-key), or bind to 127.0.0.1.")


async def check_accounts_at_start(settings: Settings) -> int:
    """At start: the number of keys; raises ``ProtectedModeError`` when there are none and
    the bind address is not loopback, ``StartupError`` when the store cannot be opened or
    Redis (the shared caps) does not answer. Creates the store (migrations) on first use."""
    try:
        store = await AccountStore.open(settings.store_url)
        try:
            keys = await store.count_keys()
        finally:
            await store.close()
    except (SQLAlchemyError, OSError, asyncio.TimeoutError) as exc:
        url = _without_password(settings.store_url)
        raise StartupError(
            f"cannot open the accounts store at {url}: {_reason(exc)}. Check ELECTRON_DATABASE_URL (with docker "
            "compose: POSTGRES_PASSWORD must be the password the electron-usage volume was first created with)"
        ) from None
    if settings.redis_url and not settings.limits_fail_open:
        await _check_redis(settings.redis_url)
    if keys == 0:
        if not is_loopback(settings.gateway_host):
            raise ProtectedModeError(protected_mode_message(settings))
        log.warning("*** NO API KEYS: serving WITHOUT authentication or limits on %s (loopback only). "
                    "Create a key with `electron-keys create --account A --name N`: from then on every request "
                    "needs one. ***", settings.gateway_host)
    return keys


async def _check_redis(url: str) -> None:
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise StartupError(
            f"cannot reach Redis at {_without_password(url)} (the shared caps): {_reason(exc)}. Check ELECTRON_REDIS_URL "
            "and that Redis runs, or set ELECTRON_LIMITS_FAIL_OPEN=true to admit requests without caps while "
            "it is down") from None
    finally:
        await client.aclose()


def make_limiter(settings: Settings) -> Limiter:
    if settings.redis_url:
        from gateway.accounts.redis_limiter import RedisLimiter
        return RedisLimiter(settings.redis_url, lease_s=settings.concurrency_lease_s,
                            fail_open=settings.limits_fail_open)
    return LocalLimiter()


class AccountService:
    def __init__(self, settings: Settings, limiter: Limiter | None = None) -> None:
        self._settings = settings
        self._prices = Prices.from_settings(settings)
        self._defaults = Limits(settings.default_concurrency, settings.default_rpm, settings.default_tpm)
        self._open_allowed = is_loopback(settings.gateway_host)
        self.limiter = limiter or make_limiter(settings)
        self.store: AccountStore | None = None
        self.ledger: UsageLedger | None = None
        self._by_hash: dict[str, KeyRecord] = {}
        self._key_count = 0
        self._refresher: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._start_lock = asyncio.Lock()

    # --- life cycle --------------------------------------------------------------

    async def start(self) -> None:
        """Idempotent; the app calls it at start-up and (for ASGI tests without lifespan) on first use."""
        if self.store is not None:
            return
        async with self._start_lock:
            if self.store is not None:
                return
            store = await AccountStore.open(self._settings.store_url)
            self.ledger = UsageLedger(store, self._settings.ledger_flush_s)
            await self._load(store)
            self.store = store
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_periodically())

    async def close(self) -> None:
        """The refresher is asked to stop and waited for, never cancelled: a query cancelled
        midway can leave aiosqlite's connection closing forever (a hung shutdown)."""
        self._stopping.set()
        if self._refresher is not None:
            await self._refresher
        if self.ledger is not None:
            await self.ledger.close()
        await self.limiter.close()
        if self.store is not None:
            await self.store.close()

    async def refresh(self) -> None:
        """Re-read keys and limits now (the periodic refresh does this every few seconds)."""
        await self._load(self.store)

    async def _load(self, store: AccountStore) -> None:
        records = await store.keys()
        self._by_hash = {r.hash: r for r in records if not r.disabled}
        self._key_count = len(records)

    async def _refresh_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self._settings.accounts_refresh_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self._load(self.store)
            except Exception:  # noqa: BLE001 - keep the keys we have
                log.exception("re-reading keys and limits failed; keeping the previous ones")

    @property
    def open_mode(self) -> bool:
        return self._key_count == 0 and self._open_allowed

    # --- per request -------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Caller:
        await self.start()
        if self.open_mode:
            return Caller(LOCAL_ACCOUNT, None, True, UNLIMITED)
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(MISSING_KEY)
        digest = hash_key(token)
        record = self._by_hash.get(digest)
        if record is None or not same_hash(record.hash, digest):
            raise AuthenticationError(WRONG_KEY)
        limits = Limits(_or(record.max_concurrency, self._defaults.concurrency),
                        _or(record.rpm, self._defaults.rpm), _or(record.tpm, self._defaults.tpm))
        return Caller(record.account_id, record.key_id, record.admin, limits)

    async def admit(self, caller: Caller) -> Admission:
        """A slot and a place in the window, or ``RateLimitError`` naming the cap."""
        decision = await self.limiter.admit(caller.account_id, caller.limits)
        if isinstance(decision, Refusal):
            log.info("429: account %s over its %s cap (%d)", caller.account_id, decision.cap, decision.value)
            raise RateLimitError(
                cap=decision.cap, message=f"Rate limit reached for account {caller.account_id} on {CAP_NAMES[decision.cap]}: "
                f"limit {decision.value}. Please try again in {decision.retry_after_s:.3g}s.",
                type="tokens" if decision.cap == "tpm" else "requests", headers=refusal_headers(decision))
        return decision

    @staticmethod
    def headers(admission: Admission) -> dict[str, str]:
        return window_headers(admission.window)

    def settle(self, caller: Caller, admission: Admission, request_id: str, model: str, outcome: Outcome,
               started_at: float) -> UsageRow | None:
        """Release the slot and record the usage row (returned); synchronous (no I/O), so it
        runs to the end even in a cancelled task. A second call does nothing (None)."""
        if admission.released:
            return None
        self.limiter.release(admission)
        cost = self._cost(outcome)
        if (outcome.engine_produced or cost.total) and caller.limits.tpm:
            self.limiter.record_tokens(admission, outcome.prompt_tokens + outcome.completion_tokens)
        finished = time.time()
        row = usage_row(
            request_id=request_id, account_id=caller.account_id, key_id=caller.key_id, model=model,
            status=outcome.status, prompt_tokens=outcome.prompt_tokens, cached_tokens=outcome.cached_tokens,
            completion_tokens=outcome.completion_tokens, cost=cost, prices=self._prices, ttft_ms=outcome.ttft_ms,
            started_at_ms=int(started_at * 1000), finished_at_ms=int(finished * 1000),
            duration_ms=(finished - started_at) * 1000)
        self.ledger.record(row)
        return row

    def _cost(self, outcome: Outcome):
        if outcome.engine_produced:
            return cost_of(outcome.prompt_tokens, outcome.cached_tokens, outcome.completion_tokens, self._prices)
        if outcome.status == "cancelled":  # hung up before the first token: the prompt it had the engine compute
            return cancelled_prompt_cost(outcome.prompt_tokens, outcome.cached_tokens, self._prices,
                                         self._settings.cancelled_prompt_billing)
        return NO_COST  # refused by the engine or failed in it before any output


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
