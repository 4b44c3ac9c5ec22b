"""Trace context: W3C traceparent handling, log binding, optional OpenTelemetry spans."""

from __future__ import annotations

import json

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.events import EventMeta, EventType
from shared.logging import CONTEXT_PROCESSORS, configure_logging, get_logger
from shared.tracing import (
    child_of,
    new_traceparent,
    record_context,
    setup_opentelemetry,
    trace_id,
    traced,
    traceparent_of,
)

pytestmark = pytest.mark.unit


def test_child_keeps_the_trace_and_changes_the_span() -> None:
    parent = new_traceparent()
    child = child_of(parent)
    assert trace_id(child) == trace_id(parent)
    assert child != parent
    assert child.startswith("00-") and child.endswith("-01")


@pytest.mark.parametrize("bad", [None, "", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"])
def test_invalid_parent_starts_a_new_trace(bad: str | None) -> None:
    assert trace_id(child_of(bad)) not in (None, "0" * 32)


def test_log_lines_inside_a_record_context_carry_its_event_and_trace() -> None:
    traceparent = new_traceparent()
    meta = EventMeta.new(EventType.PUBLISHED, "urn:test", traceparent=traceparent)
    assert traceparent_of(meta) == traceparent
    log = structlog.get_logger("test")
    with structlog.testing.capture_logs(CONTEXT_PROCESSORS) as logs:
        with record_context(meta, article_uri="urn:x"):
            log.info("inside")
            with traced(None, subscription_id="s1"):
                log.info("nested", article_uri="urn:own")
        log.info("after")
    inside, nested, after = logs
    assert inside["event_id"] == meta.id and inside["article_uri"] == "urn:x"
    assert inside["trace_id"] == trace_id(traceparent)
    # A nested context adds its fields to the outer ones; a line's own keys win.
    assert nested["event_id"] == meta.id and nested["subscription_id"] == "s1"
    assert nested["article_uri"] == "urn:own"
    assert nested["trace_id"] not in (None, trace_id(traceparent))  # a fresh trace
    assert not {"event_id", "trace_id", "article_uri"} & after.keys()
    assert structlog.contextvars.get_contextvars() == {}


def test_json_log_lines_carry_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    before = structlog.get_config()
    configure_logging("INFO", "json")
    try:
        traceparent = new_traceparent()
        meta = EventMeta.new(EventType.PUBLISHED, "urn:test", traceparent=traceparent)
        with record_context(meta):
            get_logger("test").info("handled")
    finally:
        structlog.configure(**before)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "handled" and line["event_id"] == meta.id
    assert line["trace_id"] == trace_id(traceparent)


def test_opentelemetry_spans_when_enabled() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    exporter = InMemorySpanExporter()
    setup_opentelemetry(app, "test", enabled=True, exporter=exporter)
    with TestClient(app) as client:
        assert client.get("/ping").status_code == 200
    app.state.tracer_provider.force_flush()
    app.state.tracer_provider.shutdown()
    names = [span.name for span in exporter.get_finished_spans()]
    assert any("/ping" in name for name in names), names


def test_opentelemetry_is_off_by_default() -> None:
    app = FastAPI()
    setup_opentelemetry(app, "test", enabled=False)
    assert not hasattr(app.state, "tracer_provider")


def test_http_requests_carry_the_callers_trace_into_events_and_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from shared.http import add_health_routes

    app = FastAPI(title="newsflow probe")
    registry = CollectorRegistry()
    created: list[EventMeta] = []

    @app.post("/v1/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        created.append(EventMeta.new(EventType.PUBLISHED, "urn:test"))
        return {"id": item_id}

    async def ready() -> bool:
        return True

    add_health_routes(app, registry, ready)
    caller = new_traceparent()
    with TestClient(app) as client:
        response = client.post("/v1/items/urn%3Aa", headers={"traceparent": caller})
        fresh = client.post("/v1/items/b")

    assert trace_id(response.headers["traceparent"]) == trace_id(caller)
    assert trace_id(traceparent_of(created[0])) == trace_id(caller)
    assert trace_id(traceparent_of(created[1])) == trace_id(fresh.headers["traceparent"])
    assert trace_id(caller) != trace_id(fresh.headers["traceparent"])
    count = registry.get_sample_value(
        "newsflow_probe_http_request_seconds_count",
        {"method": "POST", "route": "/v1/items/{item_id}", "status": "200"},
    )
    assert count == 2
