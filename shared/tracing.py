"""Trace context across services: the W3C `traceparent` carried as a CloudEvents extension
(`ce_traceparent`), bound into every log line; and optional OpenTelemetry spans for HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI

from shared.events import (
    EventMeta,
    child_of,
    current_traceparent,
    new_traceparent,
    trace_id,
)
from shared.settings import NewsflowSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["child_of", "new_traceparent", "trace_id"]


def traceparent_of(meta: EventMeta) -> str | None:
    return dict(meta.extensions).get("traceparent")


@contextmanager
def traced(traceparent: str | None, **fields: Any) -> Iterator[str]:
    """Runs the block in `traceparent`'s trace (a new one if absent): events created inside
    carry it on, and every log line inside has its `trace_id` (and `fields`)."""
    current = child_of(traceparent)
    token = current_traceparent.set(current)
    # Tokens restore exactly what was bound before, without copying the whole log context
    # (this runs on every HTTP request).
    bound = structlog.contextvars.bind_contextvars(trace_id=trace_id(current), **fields)
    try:
        yield current
    finally:
        structlog.contextvars.reset_contextvars(**bound)
        current_traceparent.reset(token)


@contextmanager
def record_context(meta: EventMeta, **fields: Any) -> Iterator[None]:
    """Handling one consumed record: its trace, event id (and `fields`) in every log line."""
    with traced(traceparent_of(meta), event_id=meta.id, **fields):
        yield


def setup_opentelemetry(
    app: FastAPI,
    service: str,
    *,
    enabled: bool,
    endpoint: str = "",
    exporter: SpanExporter | None = None,
) -> None:
    """HTTP spans per request when `NEWSFLOW_OTEL_ENABLED` is on (OTLP/HTTP to `endpoint`, or
    the console when it is empty). Needs the `otel` extra."""
    if not enabled:
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "NEWSFLOW_OTEL_ENABLED is on but OpenTelemetry is not installed: "
            "pip install 'newsflow[otel]'"
        ) from exc
    if exporter is None:
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"newsflow-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    app.state.tracer_provider = provider


def with_tracing(app: FastAPI, settings: NewsflowSettings) -> FastAPI:
    """The app, with OpenTelemetry spans when the settings turn them on."""
    service = app.title.removeprefix("newsflow ").strip() or "app"
    setup_opentelemetry(
        app, service, enabled=settings.otel_enabled, endpoint=settings.otel_endpoint
    )
    return app
