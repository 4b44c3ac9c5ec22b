"""Prometheus metrics every service shares: HTTP latency and consumer progress/lag.

Names follow `newsflow_<service>_<what>_<unit>`; each app has its own registry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def instrument_http(app: FastAPI, registry: CollectorRegistry, service: str) -> None:
    """A latency histogram per route template (never per raw path: uris would explode it)."""
    latency = Histogram(
        f"newsflow_{service}_http_request_seconds",
        "HTTP request latency by route and status",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        latency.labels(request.method, route, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response


class ConsumerMetrics:
    """Records consumed and parked, and lag per partition, for one consumer group member."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.consumed = Counter(
            f"newsflow_{service}_records_consumed",
            "Records handled and committed, by topic",
            ["topic"],
            registry=registry,
        )
        self.parked = Counter(
            f"newsflow_{service}_records_parked",
            "Records sent to a DLQ, by source topic",
            ["topic"],
            registry=registry,
        )
        self.lag = Gauge(
            f"newsflow_{service}_consumer_lag_records",
            "Records not yet consumed, per partition (high watermark minus position)",
            ["topic", "partition"],
            registry=registry,
        )
