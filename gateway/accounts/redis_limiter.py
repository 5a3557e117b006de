"""Per-account caps shared through Redis by every gateway process and machine.

Each decision is one Lua script, atomic in Redis, on Redis's own clock:
- concurrency: a sorted set of slot tokens scored by lease expiry; expired
  leases are dropped before counting, so the slots of a replica that died
  come back after ``lease_s``. The holder renews its leases while it streams
  (one script for all of this process's slots every ``lease_s / 3``).
- requests per minute: a sorted set of admissions scored by time (a true
  sliding window); tokens per minute: members ``token:count`` scored by time.

Redis unreachable: ``LimiterUnavailable`` (503, the gateway fails closed), or
with ``fail_open`` an admission without caps, logged.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.accounts.limits import (
    CONCURRENCY_RETRY_S, WINDOW_S, Admission, Limits, Refusal, WindowState, new_token,
)
from gateway.errors import APIError

log = logging.getLogger(__name__)

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local conc_cap, rpm_cap, tpm_cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, window = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
local inflight = redis.call('ZCARD', KEYS[1])
local used = redis.call('ZCARD', KEYS[2])
local tokens = 0
local tokens_oldest = now
if tpm_cap > 0 then
  local members = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    tokens = tokens + tonumber(string.match(members[i], ':(%d+)$'))
    if i == 1 then tokens_oldest = tonumber(members[i + 1]) end
  end
end
local refused = 0
if conc_cap > 0 and inflight >= conc_cap then refused = 1
elseif rpm_cap > 0 and used >= rpm_cap then refused = 2
elseif tpm_cap > 0 and tokens >= tpm_cap then refused = 3
else
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], window + 1000)
  used = used + 1
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local oldest_ms = now
if oldest[2] then oldest_ms = tonumber(oldest[2]) end
return {refused, used, oldest_ms + window - now, tokens, tokens_oldest + window - now}
"""

RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', expiry, ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2)
end
return #KEYS
"""

RECORD_TOKENS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
return 1
"""

CAPS = {1: "concurrency", 2: "rpm", 3: "tpm"}


class LimiterUnavailable(APIError):
    status = 503
    type = "service_unavailable_error"
    code = "limiter_unavailable"
    retry_after_s = 1


def _keys(prefix: str, account: str) -> tuple[str, str, str]:
    tag = "{" + account + "}"  # one hash slot per account (Redis Cluster)
    return f"{prefix}:{tag}:inflight", f"{prefix}:{tag}:requests", f"{prefix}:{tag}:tokens"


class RedisLimiter:
    def __init__(self, url: str, lease_s: float = 30.0, fail_open: bool = False, prefix: str = "electron:limits",
                 timeout_s: float = 0.5, connections: int = 16) -> None:
        # A bounded pool: a burst of requests queues for a connection (each call takes ~0.1 ms)
        # instead of opening hundreds of sockets at once, which overflows the server's accept backlog.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=connections, timeout=2 * timeout_s + 1,
                                                     socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                     health_check_interval=10)
        self._redis = redis.Redis(connection_pool=pool)
        self._url = url
        self._lease_ms = int(lease_s * 1000)
        self._fail_open = fail_open
        self._prefix = prefix
        self._admit = self._redis.register_script(ADMIT)
        self._renew = self._redis.register_script(RENEW)
        self._record = self._redis.register_script(RECORD_TOKENS)
        self._held: dict[str, str] = {}  # slot token -> its concurrency key
        self._background: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None

    async def ping(self) -> None:
        await self._redis.ping()

    async def admit(self, account: str, limits: Limits) -> Admission | Refusal:
        inflight_key, requests_key, tokens_key = _keys(self._prefix, account)
        token = new_token()
        try:
            refused, used, reset_ms, tokens, tokens_reset_ms = await self._admit(
                keys=[inflight_key, requests_key, tokens_key],
                args=[token, limits.concurrency, limits.rpm, limits.tpm, self._lease_ms, int(WINDOW_S * 1000)])
        except (RedisError, OSError) as exc:
            if self._fail_open:
                log.error("Redis unreachable (%s): admitting without caps (ELECTRON_LIMITS_FAIL_OPEN)", exc)
                return Admission(account, token, None)
            log.error("Redis unreachable (%s): refusing with 503 (caps and billing must hold)", exc)
            raise LimiterUnavailable("The rate limiter is unavailable; try again shortly.") from None
        window = WindowState(limits.rpm, int(used), max(0.0, reset_ms / 1000), limits.tpm, int(tokens),
                             max(0.0, tokens_reset_ms / 1000))
        if refused:
            cap = CAPS[int(refused)]
            retry = {"concurrency": CONCURRENCY_RETRY_S, "rpm": window.reset_s, "tpm": window.tokens_reset_s}[cap]
            return Refusal(cap, getattr(limits, cap), retry, window)
        self._held[token] = inflight_key
        self._ensure_renewer()
        return Admission(account, token, window)

    def release(self, admission: Admission) -> None:
        if admission.released:
            return
        admission.released = True
        self._held.pop(admission.token, None)
        if admission.window is not None:  # never blocks the caller, and survives its cancellation
            inflight_key = _keys(self._prefix, admission.account)[0]
            self._spawn(self._redis.zrem(inflight_key, admission.token), "release")

    def record_tokens(self, admission: Admission, tokens: int) -> None:
        if tokens > 0:
            _, _, tokens_key = _keys(self._prefix, admission.account)
            self._spawn(self._record(keys=[tokens_key], args=[admission.token, tokens, int(WINDOW_S * 1000)]),
                        "record tokens")

    def _spawn(self, work, what: str) -> None:
        async def run() -> None:
            try:
                await work
            except (RedisError, OSError) as exc:
                log.warning("Redis %s failed (%s); the lease expires on its own", what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            held = list(self._held.items())
            if not held:
                continue
            try:
                await self._renew(keys=[key for _, key in held], args=[self._lease_ms, *[t for t, _ in held]])
            except (RedisError, OSError) as exc:
                log.warning("renewing %d concurrency leases failed: %s", len(held), exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2)
        await self._redis.aclose(close_connection_pool=True)
