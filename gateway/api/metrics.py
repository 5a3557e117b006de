"""The gateway's Prometheus metrics, served at ``GET /metrics`` (text format).

Names carry the ``electron_`` prefix and their unit; one registry per app. What
a request did is recorded once, at its end, from its summary (the same fields
as its log line): nothing is observed on the token path, inter-token gaps are
kept by the completion run and observed when it ends. The engine's own metrics
(queue, running sequences, KV cells, decode steps) stay on Triton's metrics port.

Under a pool of gateway workers (``gateway.server.workers``) the values live in
``prometheus_client``'s multiprocess files and any worker renders the sum of
all; gauges read from a function (in flight, ledger) are then written every
``LIVE_REFRESH_S`` by each worker and summed over the live ones.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# fine around the voice budget (first token well under 300 ms)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5,
                   5.0, 10.0)
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
LIVE_REFRESH_S = 0.5


def multiprocess_mode() -> bool:
    """True in a worker of a pool: ``PROMETHEUS_MULTIPROC_DIR`` set by the pool's parent."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class GatewayMetrics:
    def __init__(self) -> None:
        self.shared = multiprocess_mode()
        self._live: list[tuple[Gauge, object]] = []
        self.registry = r = CollectorRegistry()
        self.requests = Counter("electron_requests", "HTTP requests by route, status code and error code",
                                ["route", "status_code", "error_code"], registry=r)
        self.ttft = Histogram("electron_time_to_first_token_seconds",
                              "From admission to the engine's first token", ["model"], buckets=LATENCY_BUCKETS,
                              registry=r)
        self.first_text = Histogram("electron_time_to_first_text_seconds",
                                    "From admission to the first audible text sent (a filler phrase counts)",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("electron_inter_token_latency_seconds",
                                     "Gaps between the engine's outputs within a stream", ["model"],
                                     buckets=GAP_BUCKETS, registry=r)
        self.duration = Histogram("electron_request_duration_seconds", "Admitted chat completions, end to end",
                                  ["model", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.prompt_tokens = Counter("electron_prompt_tokens", "Prompt tokens billed", ["model"], registry=r)
        self.cached_tokens = Counter("electron_cached_prompt_tokens", "Prompt tokens read from the prefix cache",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("electron_completion_tokens", "Completion tokens billed", ["model"],
                                         registry=r)
        self.cost = Counter("electron_cost_usd", "Billed cost in US dollars", ["model"], registry=r)
        self.refused = Counter("electron_rate_limited_requests", "Requests refused with 429, by cap", ["cap"],
                               registry=r)
        self.in_flight = Gauge("electron_requests_in_flight", "Admitted chat completions not yet settled",
                               registry=r, multiprocess_mode="livesum")
        self.disconnects = Counter("electron_client_disconnects", "Admitted requests the client abandoned",
                                   registry=r)
        self.engine_errors = Counter("electron_engine_errors", "Admitted requests that ended in an error",
                                     registry=r)
        self.ledger_depth = Gauge("electron_ledger_queue_rows", "Usage rows waiting to be written", registry=r,
                                  multiprocess_mode="livesum")
        self.ledger_lag = Gauge("electron_ledger_write_lag_seconds",
                                "How long the oldest row of the last written batch waited", registry=r,
                                multiprocess_mode="livemax")

    def live(self, gauge: Gauge, read) -> None:
        """``gauge`` shows ``read()``: at each scrape in one process; in a pool, each worker
        writes it every ``LIVE_REFRESH_S`` (``refresh``) and the scrape sums the workers."""
        if self.shared:
            self._live.append((gauge, read))
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        for gauge, read in self._live:
            gauge.set(read())

    def watch_ledger(self, ledger_of) -> None:
        """``ledger_of()``: the ledger, once the accounts have started (None before)."""
        self.live(self.ledger_depth, lambda: (ledger_of().depth if ledger_of() else 0))
        self.live(self.ledger_lag, lambda: (ledger_of().last_write_lag_s if ledger_of() else 0.0))

    def request_done(self, route: str, line: dict, model: str) -> None:
        """Everything one request did, from its log line's fields."""
        self.requests.labels(route, str(line.get("http_status")), line.get("error_code") or "").inc()
        if line.get("error_code") == "rate_limit_exceeded":
            self.refused.labels(line.get("cap") or "unknown").inc()
        status = line.get("status")
        if status is None:  # not admitted
            return
        self.duration.labels(model, status).observe(line["duration_ms"] / 1000)
        self.prompt_tokens.labels(model).inc(line.get("prompt_tokens") or 0)
        self.cached_tokens.labels(model).inc(line.get("cached_tokens") or 0)
        self.completion_tokens.labels(model).inc(line.get("completion_tokens") or 0)
        self.cost.labels(model).inc(line.get("cost_usd") or 0.0)
        if line.get("ttft_ms") is not None:
            self.ttft.labels(model).observe(line["ttft_ms"] / 1000)
        if line.get("first_text_ms") is not None:
            self.first_text.labels(model).observe(line["first_text_ms"] / 1000)
        gaps = self.inter_token.labels(model)
        for gap in line.get("_gaps") or ():
            gaps.observe(gap)
        if status == "cancelled":
            self.disconnects.inc()
        elif status == "error":
            self.engine_errors.inc()

    def render(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        self.refresh()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
