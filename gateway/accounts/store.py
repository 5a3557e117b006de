"""The accounts store: keys, limits and usage rows in SQLite or PostgreSQL.

One code path for both (SQLAlchemy Core, async drivers aiosqlite and asyncpg).
``AccountStore.open(url)`` runs the Alembic migrations first (under an advisory
lock on PostgreSQL, so replicas starting together migrate once). SQLite runs in
WAL mode, so the gateway, ``electron-keys`` and ``electron-usage`` share one file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.accounts.api_keys import NewKey, new_key
from gateway.accounts.tables import accounts, api_keys, usage

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x656C6563  # "elec": PostgreSQL advisory lock id


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class KeyRecord:
    """A key as the gateway and ``electron-keys list`` see it (never the secret)."""
    key_id: str
    account_id: str
    name: str
    prefix: str
    hash: str
    admin: bool
    disabled: bool
    created_at_ms: int
    max_concurrency: int | None
    rpm: int | None
    tpm: int | None


class StoreError(Exception):
    """A command on the store that cannot be done (unknown or ambiguous key...)."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _upgrade(connection: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class AccountStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str) -> "AccountStore":
        is_sqlite = url.startswith("sqlite")
        if is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
            await conn.run_sync(_upgrade)
        log.info("accounts store ready: %s", engine.url.render_as_string(hide_password=True))
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # --- keys and limits ---------------------------------------------------------

    async def create_key(self, account: str, name: str, admin: bool = False) -> NewKey:
        made = new_key()
        async with self.engine.begin() as conn:
            exists = (await conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account))).first()
            if exists is None:
                await conn.execute(accounts.insert().values(id=account, created_at_ms=now_ms()))
            await conn.execute(api_keys.insert().values(
                id=made.key_id, account_id=account, name=name, prefix=made.prefix, hash=made.hash,
                admin=admin, disabled=False, created_at_ms=now_ms()))
        return made

    async def keys(self) -> list[KeyRecord]:
        query = (sa.select(api_keys.c.id, api_keys.c.account_id, api_keys.c.name, api_keys.c.prefix,
                           api_keys.c.hash, api_keys.c.admin, api_keys.c.disabled, api_keys.c.created_at_ms,
                           accounts.c.max_concurrency, accounts.c.rpm, accounts.c.tpm)
                 .join(accounts, accounts.c.id == api_keys.c.account_id)
                 .order_by(api_keys.c.account_id, api_keys.c.created_at_ms))
        async with self.engine.connect() as conn:
            return [KeyRecord(*row) for row in (await conn.execute(query)).all()]

    async def count_keys(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(sa.func.count()).select_from(api_keys))).scalar_one()

    async def find_key(self, prefix_or_id: str) -> KeyRecord:
        """The one key whose id or display prefix starts with ``prefix_or_id``."""
        if len(prefix_or_id) < 4:
            raise StoreError("give at least 4 characters of the key's prefix or id")
        found = [k for k in await self.keys() if k.prefix.startswith(prefix_or_id) or k.key_id == prefix_or_id
                 or (len(prefix_or_id) >= len(k.prefix) and prefix_or_id.startswith(k.prefix))]
        if not found:
            raise StoreError(f"no key matches {prefix_or_id!r}")
        if len(found) > 1:
            raise StoreError(f"{prefix_or_id!r} matches {len(found)} keys: "
                             + ", ".join(f"{k.key_id} ({k.prefix})" for k in found) + "; give the key id")
        return found[0]

    async def set_disabled(self, key_id: str, disabled: bool) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(disabled=disabled))

    async def delete_key(self, key_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.delete().where(api_keys.c.id == key_id))

    async def set_limits(self, account: str, concurrency: int | None, rpm: int | None, tpm: int | None) -> None:
        values = {k: v for k, v in (("max_concurrency", concurrency), ("rpm", rpm), ("tpm", tpm)) if v is not None}
        async with self.engine.begin() as conn:
            exists = (await conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account))).first()
            if exists is None:
                await conn.execute(accounts.insert().values(id=account, created_at_ms=now_ms(), **values))
            elif values:
                await conn.execute(accounts.update().where(accounts.c.id == account).values(**values))

    async def account_limits(self, account: str) -> tuple[int | None, int | None, int | None] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(accounts.c.max_concurrency, accounts.c.rpm, accounts.c.tpm)
                                      .where(accounts.c.id == account))).first()
        return None if row is None else tuple(row)

    # --- usage -------------------------------------------------------------------

    async def insert_usage(self, rows: list) -> None:
        """Idempotent: a row whose id is already stored is skipped (a retried batch)."""
        if rows:
            async with self.engine.begin() as conn:
                insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
                statement = insert(usage).on_conflict_do_nothing(index_elements=[usage.c.id])
                await conn.execute(statement, [row.values() for row in rows])

    async def usage_rows(self, account: str | None = None) -> list[dict]:
        query = sa.select(usage).order_by(usage.c.started_at_ms)
        if account is not None:
            query = query.where(usage.c.account_id == account)
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in (await conn.execute(query)).all()]

    async def usage_totals(self, start_ms: int, end_ms: int, width_ms: int, group_by: tuple[str, ...] = (),
                           account: str | None = None, key_ids: tuple[str, ...] = (),
                           models: tuple[str, ...] = ()) -> list[dict]:
        """Sums per time bucket (``bucket``: its index from ``start_ms``) and per ``group_by`` column."""
        bucket = ((usage.c.started_at_ms - start_ms) // width_ms).label("bucket")
        groups = [usage.c[name] for name in group_by]
        query = (sa.select(bucket, *groups,
                           sa.func.sum(usage.c.prompt_tokens).label("input_tokens"),
                           sa.func.sum(usage.c.cached_tokens).label("input_cached_tokens"),
                           sa.func.sum(usage.c.completion_tokens).label("output_tokens"),
                           sa.func.count().label("num_model_requests"),
                           sa.func.sum(usage.c.cost_input_pico).label("cost_input_pico"),
                           sa.func.sum(usage.c.cost_cached_input_pico).label("cost_cached_input_pico"),
                           sa.func.sum(usage.c.cost_output_pico).label("cost_output_pico"),
                           sa.func.sum(usage.c.cost_pico).label("cost_pico"))
                 .where(usage.c.started_at_ms >= start_ms, usage.c.started_at_ms < end_ms)
                 .group_by(bucket, *groups).order_by(bucket, *groups))
        if account is not None:
            query = query.where(usage.c.account_id == account)
        if key_ids:
            query = query.where(usage.c.key_id.in_(key_ids))
        if models:
            query = query.where(usage.c.model.in_(models))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for row in rows:
            item = dict(row._mapping)
            for name in item:  # PostgreSQL's SUM(bigint) is numeric: back to exact ints
                if name not in group_by and item[name] is not None:
                    item[name] = int(item[name])
            out.append(item)
        return out
