"""The usage ledger: one row per admitted request, written in batches off the token path.

``record`` only appends to a list (no I/O, safe to call while a request is being
cancelled); a background task writes what has gathered every ``flush_s`` seconds
(default 1 s: what a crash of the process can lose). ``close`` writes the rest.
A failed write keeps its rows for the next flush; rows carry their own ids and
the insert skips ids already stored, so a batch written twice is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, fields

from gateway.accounts.pricing import Cost, Prices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UsageRow:
    id: str
    request_id: str
    account_id: str
    key_id: str | None
    model: str
    status: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_input_pico: int
    cost_cached_input_pico: int
    cost_output_pico: int
    cost_pico: int
    price_input_micro: int
    price_cached_input_micro: int
    price_output_micro: int
    ttft_ms: float | None
    duration_ms: float
    started_at_ms: int
    finished_at_ms: int

    def values(self) -> dict:
        """The row as column values (a shallow ``asdict``: it runs for every row written)."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS = tuple(f.name for f in fields(UsageRow))


def usage_row(*, request_id: str, account_id: str, key_id: str | None, model: str, status: str,
              prompt_tokens: int, cached_tokens: int, completion_tokens: int, cost: Cost, prices: Prices,
              ttft_ms: float | None, started_at_ms: int, finished_at_ms: int, duration_ms: float) -> UsageRow:
    return UsageRow(
        id="usage_" + uuid.uuid4().hex, request_id=request_id, account_id=account_id, key_id=key_id, model=model,
        status=status, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
        completion_tokens=completion_tokens, cost_input_pico=cost.input, cost_cached_input_pico=cost.cached_input,
        cost_output_pico=cost.output, cost_pico=cost.total, price_input_micro=prices.input,
        price_cached_input_micro=prices.cached_input, price_output_micro=prices.output, ttft_ms=ttft_ms,
        duration_ms=duration_ms, started_at_ms=started_at_ms, finished_at_ms=finished_at_ms)


class UsageLedger:
    def __init__(self, store, flush_s: float = 1.0) -> None:
        self._store = store
        self._flush_s = flush_s
        self._pending: list[UsageRow] = []
        self._oldest_pending: float | None = None
        self._writer: asyncio.Task | None = None
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()
        self.written = 0
        self.last_write_lag_s = 0.0  # how long the oldest row of the last batch waited

    @property
    def depth(self) -> int:
        return len(self._pending)

    def record(self, row: UsageRow) -> None:
        if not self._pending:
            self._oldest_pending = time.monotonic()
        self._pending.append(row)
        log.debug("usage row: status=%s prompt_tokens=%d cached_tokens=%d completion_tokens=%d cost_pico=%d",
                 row.status, row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.cost_pico)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_periodically())

    async def _write_periodically(self) -> None:
        while not self._closing.is_set():
            try:
                await asyncio.wait_for(self._closing.wait(), self._flush_s)
            except asyncio.TimeoutError:
                pass
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            rows, oldest = self._pending, self._oldest_pending
            self._pending, self._oldest_pending = [], None
            try:
                await self._store.insert_usage(rows)
            except BaseException as exc:  # keep the rows (also when cancelled), try again at the next flush
                self._pending[:0] = rows
                self._oldest_pending = oldest
                if not isinstance(exc, Exception):
                    raise
                log.exception("writing %d usage rows failed; kept for the next flush", len(rows))
                return
            self.written += len(rows)
            self.last_write_lag_s = time.monotonic() - oldest if oldest is not None else 0.0

    async def close(self) -> None:
        """Writes what is pending. The writer is asked to stop, never cancelled mid-write:
        a write cancelled after its commit would be written twice (the insert ignores
        rows already stored anyway, so a retried batch can never bill twice)."""
        self._closing.set()
        if self._writer is not None:
            await self._writer
        await self.flush()
        if self._pending:  # a write that failed: one more try
            await self.flush()
        if self._pending:
            log.error("%d usage rows could not be written at shutdown", len(self._pending))
