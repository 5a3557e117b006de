"""``electron-usage``: usage and cost per account, key, model and day, with totals.

    electron-usage [--since 2026-11-01] [--until 2026-12-01] [--account acme]

Reads the ledger the gateway writes (same store settings as the gateway). Costs
are exact sums of the rows' own costs, at the prices each row was billed at.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timedelta, timezone

from gateway.accounts.pricing import usd
from gateway.accounts.store import AccountStore
from gateway.settings import Settings

DAY_MS = 86_400_000


def _day(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-26") from None


async def report(settings: Settings, since: datetime, until: datetime, account: str | None) -> list[str]:
    store = await AccountStore.open(settings.store_url)
    try:
        start_ms, end_ms = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
        rows = await store.usage_totals(start_ms, end_ms, DAY_MS, ("account_id", "key_id", "model"), account=account)
    finally:
        await store.close()
    lines = [f"{'day':10} {'account':16} {'key':22} {'model':12} {'requests':>8} {'input':>10} {'cached':>10} "
             f"{'output':>10} {'cost (USD)':>14}"]
    totals = [0, 0, 0, 0, 0]
    for row in rows:
        day = (since + timedelta(days=row["bucket"])).strftime("%Y-%m-%d")
        figures = [row["num_model_requests"], row["input_tokens"], row["input_cached_tokens"], row["output_tokens"],
                   row["cost_pico"]]
        totals = [a + b for a, b in zip(totals, figures)]
        lines.append(f"{day:10} {row['account_id']:16} {row['key_id'] or '-':22} {row['model']:12} "
                     f"{figures[0]:>8} {figures[1]:>10} {figures[2]:>10} {figures[3]:>10} {usd(figures[4]):>14.6f}")
    lines.append(f"{'total':10} {'':16} {'':22} {'':12} {totals[0]:>8} {totals[1]:>10} {totals[2]:>10} "
                 f"{totals[3]:>10} {usd(totals[4]):>14.6f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="electron-usage", description=__doc__.split("\n\n")[0])
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    parser.add_argument("--since", type=_day, default=today - timedelta(days=30), help="first day (UTC), included")
    parser.add_argument("--until", type=_day, default=today + timedelta(days=1), help="last day (UTC), excluded")
    parser.add_argument("--account")
    args = parser.parse_args(argv)
    for line in asyncio.run(report(Settings.from_env(), args.since, args.until, args.account)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
