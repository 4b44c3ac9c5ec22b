"""Trace context across services: the W3C `traceparent` carried as a CloudEvents extension
(`ce_traceparent`), bound into every log line; and optional OpenTelemetry spans for HTTP."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI

from shared.events import EventMeta

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
INVALID_TRACE = "0" * 32


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_of(traceparent: str | None) -> str:
    """The same trace with a new span id; a fresh trace when the parent is absent or invalid."""
    match = TRACEPARENT.match(traceparent or "")
    if not match or match.group(1) == INVALID_TRACE:
        return new_traceparent()
    return f"00-{match.group(1)}-{secrets.token_hex(8)}-{match.group(3)}"


def trace_id(traceparent: str | None) -> str | None:
    match = TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def traceparent_of(meta: EventMeta) -> str | None:
    return dict(meta.extensions).get("traceparent")


@contextmanager
def record_context(meta: EventMeta, **fields: Any) -> Iterator[None]:
    """Every log line inside carries the record's event id and trace id (and `fields`)."""
    with structlog.contextvars.bound_contextvars(
        event_id=meta.id, trace_id=trace_id(traceparent_of(meta)), **fields
    ):
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
