"""The engine's counters from Triton's metrics port, for the client drivers (which
run in .venv-clients, apart from the test suite's packages)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request


EXPORT_PERIOD_S = 0.25  # the engine's metrics reach Triton's port this often


async def settled(metrics_url: str) -> dict[str, float]:
    """The counters once everything before this moment has been exported."""
    await asyncio.sleep(2.5 * EXPORT_PERIOD_S)
    return read(metrics_url)


def read(metrics_url: str) -> dict[str, float]:
    """``electron_engine_*`` values by name (the model's labels dropped)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"(electron_engine_\w+)\{[^}]*\} ([0-9.e+-]+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


async def after_hang_up(metrics_url: str, before: dict[str, float], limit_s: float = 5.0) -> dict:
    """Once the engine runs and waits on nothing (or ``limit_s`` passed): what it
    did since ``before``. A request cancelled before the engine took it up counts
    in none of these."""
    started = time.monotonic()
    while True:
        now = read(metrics_url)
        idle = now["electron_engine_running"] == 0 and now["electron_engine_waiting"] == 0
        if idle or time.monotonic() - started > limit_s:
            waited = time.monotonic() - started
            now = await settled(metrics_url)  # a request that completed late would show now

            def delta(name: str) -> float:
                return now[name] - before[name]  # noqa: B023 - called in this iteration

            return {"cancelled": delta("electron_engine_cancellations_total"),
                    "completed": delta("electron_engine_completed_total"),
                    "errors": delta("electron_engine_errors_total"),
                    "decoded": delta("electron_engine_step_tokens_total") - delta("electron_engine_prefill_tokens_total"),
                    "running": now["electron_engine_running"], "waited_s": round(waited, 3)}
        await asyncio.sleep(0.05)
