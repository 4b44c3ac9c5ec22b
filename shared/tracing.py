"""Trace context across services: the W3C `traceparent` carried as a CloudEvents extension
(`ce_traceparent`), bound into every log line; and optional OpenTelemetry spans for HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from shared.events import (
    EventMeta,
    child_of,
    current_traceparent,
    new_traceparent,
    trace_id,
)
from shared.logging import log_fields
from shared.settings import NewsflowSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["child_of", "new_traceparent", "trace_id"]


def traceparent_of(meta: EventMeta) -> str | None:
    for name, value in meta.extensions:
        if name == "traceparent":
            return value
    return None


def traced(traceparent: str | None, **fields: Any) -> Traced:
    """Runs the block in `traceparent`'s trace (a new one if absent): events created inside
    carry it on, and every log line inside has its `trace_id` (and `fields`)."""
    return Traced(traceparent, fields)


class Traced:
    """`traced`'s context manager.

    Nothing is bound into the log context: two context variables are set, and a line logged
    inside reads them (`shared.logging.add_log_context`). This runs for every request and
    every record, which mostly log nothing; binding and unbinding structlog's context for
    each cost more than the rest of it.
    """

    __slots__ = ("_fields", "_fields_token", "_token", "current")

    def __init__(self, traceparent: str | None, fields: dict[str, Any]) -> None:
        self.current = child_of(traceparent)
        self._fields = fields

    def __enter__(self) -> str:
        self._token = current_traceparent.set(self.current)
        fields = self._fields
        if fields:
            outer = log_fields.get()
            self._fields_token = log_fields.set({**outer, **fields} if outer else fields)
        return self.current

    def __exit__(self, *_: object) -> None:
        if self._fields:
            log_fields.reset(self._fields_token)
        current_traceparent.reset(self._token)


def record_context(meta: EventMeta, **fields: Any) -> Traced:
    """Handling one consumed record: its trace, event id (and `fields`) in every log line."""
    fields["event_id"] = meta.id
    return Traced(traceparent_of(meta), fields)


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
