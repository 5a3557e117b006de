"""The store's tables (SQLAlchemy Core): accounts, API keys, usage rows.

Times are integer Unix milliseconds, money integer pico-dollars and prices
integer micro-dollars per million tokens, so SQLite and PostgreSQL hold the
same exact numbers. The schema itself is created by the Alembic migrations in
``gateway/accounts/migrations``; these definitions are what the code queries.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("max_concurrency", sa.Integer, nullable=True),  # null: the gateway's default
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(128), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
)

usage = sa.Table(
    "usage", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("account_id", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # stop, length, tool_calls, cancelled, error, overloaded
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_input_pico", sa.BigInteger, nullable=False),
    sa.Column("cost_cached_input_pico", sa.BigInteger, nullable=False),
    sa.Column("cost_output_pico", sa.BigInteger, nullable=False),
    sa.Column("cost_pico", sa.BigInteger, nullable=False),
    sa.Column("price_input_micro", sa.BigInteger, nullable=False),  # per million tokens, as billed
    sa.Column("price_cached_input_micro", sa.BigInteger, nullable=False),
    sa.Column("price_output_micro", sa.BigInteger, nullable=False),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("started_at_ms", sa.BigInteger, nullable=False),
    sa.Column("finished_at_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_usage_account_started", "account_id", "started_at_ms"),
)
