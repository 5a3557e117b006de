"""Percentiles and summaries of latency samples."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between order statistics
    (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: list[float]) -> dict:
    """n, min, p50, p95, p99, max of ``values`` (None where there are none)."""
    return {"n": len(values), "min": min(values) if values else None, "p50": percentile(values, 50),
            "p95": percentile(values, 95), "p99": percentile(values, 99), "max": max(values) if values else None}
