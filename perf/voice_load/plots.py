"""PNG plots of a voice benchmark run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def ttft_distribution(rows: list[dict], scenario: str, path: Path) -> Path | None:
    """Cumulative distribution of time to first token, one line per server."""
    chosen = [r for r in rows if r["scenario"] == scenario and r["samples"]["ttft_ms"]]
    if not chosen:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in chosen:
        values = sorted(row["samples"]["ttft_ms"])
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))],
                label=f"{row['server']} ({row['plan']['calls']} calls)")
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (ms, log scale)")
    ax.set_ylabel("fraction of turns")
    ax.set_title(f"Time to first token, {scenario}")
    return _save(fig, [ax], path)


def by_concurrency(rows: list[dict], scenario: str, path: Path) -> Path | None:
    """Later-turn TTFT p50 and output tokens/s against the number of calls, per server."""
    chosen = [r for r in rows if r["scenario"] == scenario]
    servers = sorted({r["server"] for r in chosen})
    if len({r["plan"]["calls"] for r in chosen}) < 2:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for server in servers:
        mine = sorted((r for r in chosen if r["server"] == server), key=lambda r: r["plan"]["calls"])
        calls = [r["plan"]["calls"] for r in mine]
        left.plot(calls, [r["figures"]["later_turns"]["ttft_ms"]["p50"] for r in mine], marker="o", label=server)
        right.plot(calls, [r["figures"]["output_tokens_per_s"] for r in mine], marker="o", label=server)
    left.set(xscale="log", xlabel="concurrent calls", ylabel="later-turn TTFT p50 (ms)",
             title="Time to first token vs concurrency")
    right.set(xscale="log", xlabel="concurrent calls", ylabel="output tokens/s (all calls)",
              title="Throughput vs concurrency")
    return _save(fig, [left, right], path)


def capacity(points: dict[str, dict[int, dict]], slo, path: Path) -> Path | None:
    """TTFT p95 and the share of turns failing the SLO against the number of calls, per server."""
    if not any(points.values()):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for server, by_n in points.items():
        calls = sorted(by_n)
        left.plot(calls, [by_n[n]["ttft_ms"]["p95"] for n in calls], marker="o", label=server)
        right.plot(calls, [100 * by_n[n]["failed_share"] for n in calls], marker="o", label=server)
    left.axhline(slo.ttft_p95_ms, color="grey", linestyle="--", linewidth=1)
    right.axhline(100 * slo.max_failed_share, color="grey", linestyle="--", linewidth=1)
    left.set(yscale="log", xlabel="paced calls", ylabel="TTFT p95 (ms, log scale)", title="Time to first token")
    right.set(xlabel="paced calls", ylabel=f"% of turns stalling > {slo.stall_ms:.0f} ms, refused or failed",
              title="Turns the caller would notice")
    return _save(fig, [left, right], path)


def _save(fig, axes, path: Path) -> Path:
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
