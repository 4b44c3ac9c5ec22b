"""`POST /v1/articles` is answered without FastAPI's router (`HotPath`), and every answer is the
one the router gives: same statuses, headers and problem documents, same trace, metrics, spans
and crash handling."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.app import HotPath, create_app
from services.ingest.settings import IngestSettings
from shared.events import new_traceparent, trace_id
from shared.tracing import setup_opentelemetry, traceparent_of
from tests.factories import article_payload
from tests.fakes import FakePublisher, FakeRateLimiter, fake_ingest_runtime

pytestmark = pytest.mark.unit

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
LATENCY = "newsflow_ingest_http_request_seconds_count"


class SeenScopes:
    """Keeps each request's scope, which the app fills in as it goes: the router writes
    `scope["router"]`, so a scope without it was answered without the router."""

    def __init__(self, app: ASGIApp, seen: list[Scope]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope)
        await self.app(scope, receive, send)


def ingest(
    publisher: FakePublisher, limiter: FakeRateLimiter, *, hot_path: bool = True
) -> tuple[FastAPI, list[Scope]]:
    settings = IngestSettings(
        ingest_api_keys=f"test={KEY},other=other-key", ingest_max_body_bytes=20_000
    )
    app = create_app(settings, fake_ingest_runtime(publisher, limiter))
    if not hot_path:
        # The twin: the same app, with every request going through FastAPI's router.
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HotPath]
    seen: list[Scope] = []
    app.add_middleware(SeenScopes, seen=seen)
    return app, seen


def routed(seen: list[Scope]) -> list[bool]:
    return ["router" in scope for scope in seen]


def post(client: TestClient, payload: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/v1/articles", json=payload, headers=headers if headers is not None else AUTH
    )


def what_a_client_sees(response: Any) -> tuple[int, list[tuple[str, str]], Any]:
    """Status, headers and body, less what differs on every request: trace and event ids."""
    headers = [
        (name, "<trace>" if name == "traceparent" and trace_id(value) else value)
        for name, value in response.headers.multi_items()
    ]
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json"):
        body = response.json()
        if isinstance(body, dict) and "event_id" in body:
            body["event_id"] = "<event>"
    return response.status_code, headers, body


def a_day_at_the_desk(
    client: TestClient, publisher: FakePublisher, limiter: FakeRateLimiter, story: dict[str, Any]
) -> list[Any]:
    """Every answer `POST /v1/articles` gives, then two requests that are not its own."""
    second = {**story, "uri": f"{story['uri']}-2"}
    third = {**story, "uri": f"{story['uri']}-3"}
    answers = [
        post(client, story),
        post(client, story),
        post(client, {**story, "headline": "Another change"}),
        post(client, story, headers={}),
        post(client, story, headers={"Authorization": "Bearer nope"}),
        client.post(
            "/v1/articles", content=b"uri=x", headers={**AUTH, "content-type": "text/plain"}
        ),
        post(client, {**story, "body_html": "<p>" + "x" * 30_000 + "</p>"}),
        client.post(
            "/v1/articles",
            content=b'{"uri": ',
            headers={**AUTH, "content-type": "application/json"},
        ),
        post(client, {**second, "headline": "", "urgency": 12}),
        post(client, {**second, "provider": "other"}),
        post(client, second, headers={**AUTH, "Idempotency-Key": "k" * 256}),
        post(client, second, headers={**AUTH, "Idempotency-Key": "edition-1"}),
        post(client, second, headers={**AUTH, "Idempotency-Key": "edition-1"}),
        post(client, third, headers={**AUTH, "Idempotency-Key": "edition-1"}),
    ]
    publisher.broker_down = True
    answers.append(post(client, third))
    publisher.broker_down = False
    limiter.limit = 0
    answers.append(post(client, third))
    answers.append(client.get("/v1/articles", headers=AUTH))
    answers.append(client.post("/v1/articles/", json=third, headers=AUTH, follow_redirects=False))
    return answers


def test_every_answer_is_the_one_the_router_gives() -> None:
    story = article_payload()
    seen_by: dict[bool, list[Scope]] = {}
    answers: dict[bool, list[Any]] = {}
    for hot_path in (True, False):
        publisher, limiter = FakePublisher(), FakeRateLimiter()
        app, seen_by[hot_path] = ingest(publisher, limiter, hot_path=hot_path)
        with TestClient(app) as client:
            answers[hot_path] = a_day_at_the_desk(client, publisher, limiter, story)

    hot = [what_a_client_sees(response) for response in answers[True]]
    assert hot == [what_a_client_sees(response) for response in answers[False]]
    statuses = [status for status, _, _ in hot]
    assert statuses == [202, 200, 409, 401, 401, 415, 413, 422, 422, 403, 422, 202, 202, 422,
                        503, 429, 405, 307]  # fmt: skip
    assert answers[True][11].headers.get("idempotent-replayed") is None
    assert answers[True][12].headers["idempotent-replayed"] == "true"
    assert answers[True][14].headers["retry-after"] == "5"
    assert answers[True][15].headers["retry-after"] == "8"
    assert answers[True][3].headers["www-authenticate"] == "Bearer"
    assert all(headers[-1] == ("traceparent", "<trace>") for _, headers, _ in hot)
    # Only the GET and the trailing-slash POST went through the router on the hot app.
    assert routed(seen_by[True]) == [False] * 16 + [True, True]
    assert routed(seen_by[False]) == [True] * 18


def test_hot_path_answers_carry_the_callers_trace_and_are_measured() -> None:
    publisher = FakePublisher()
    app, seen = ingest(publisher, FakeRateLimiter())
    caller = new_traceparent()
    with TestClient(app) as client:
        response = post(client, article_payload(), {**AUTH, "traceparent": caller})
        refused = post(client, article_payload(), {})
        metrics = client.get("/metrics").text

    assert response.status_code == 202
    assert routed(seen)[:2] == [False, False]
    assert trace_id(response.headers["traceparent"]) == trace_id(caller)
    assert trace_id(traceparent_of(publisher.published[0][1])) == trace_id(caller)
    assert trace_id(refused.headers["traceparent"]) not in (None, trace_id(caller))
    assert f'{LATENCY}{{method="POST",route="/v1/articles",status="202"}} 1.0' in metrics
    assert f'{LATENCY}{{method="POST",route="/v1/articles",status="401"}} 1.0' in metrics


def test_under_a_root_path_the_router_answers() -> None:
    app, seen = ingest(FakePublisher(), FakeRateLimiter())
    # Under the root path /v1, /v1/articles is /articles to the app: no such route.
    with TestClient(app, root_path="/v1") as client:
        response = post(client, article_payload())

    assert response.status_code == 404
    assert routed(seen) == [True]


class BrokenLimiter(FakeRateLimiter):
    async def hit(self, key_id: str, cost: int) -> float | None:
        raise RuntimeError("a bug in the limiter")


def test_an_unexpected_error_is_the_same_500_problem_and_reaches_the_server() -> None:
    story = article_payload()
    answers = []
    for hot_path in (True, False):
        app, seen = ingest(FakePublisher(), BrokenLimiter(), hot_path=hot_path)
        with TestClient(app, raise_server_exceptions=False) as client:
            answers.append(what_a_client_sees(post(client, story)))
            metrics = client.get("/metrics").text
        assert routed(seen)[0] is not hot_path
        assert f'{LATENCY}{{method="POST",route="/v1/articles",status="500"}} 1.0' in metrics

    assert answers[0] == answers[1]
    status, _, body = answers[0]
    assert status == 500
    assert body["code"] == "internal_error"
    # Raised on to the server, which logs it with its traceback, as on every other route.
    app, _ = ingest(FakePublisher(), BrokenLimiter())
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a bug in the limiter"):
        post(client, story)


def test_opentelemetry_spans_cover_the_hot_path() -> None:
    app, seen = ingest(FakePublisher(), FakeRateLimiter())
    exporter = InMemorySpanExporter()
    setup_opentelemetry(app, "ingest", enabled=True, exporter=exporter)
    with TestClient(app) as client:
        assert post(client, article_payload()).status_code == 202
    app.state.tracer_provider.force_flush()
    app.state.tracer_provider.shutdown()

    assert routed(seen) == [False]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["POST /v1/articles"].attributes is not None
    assert spans["POST /v1/articles"].attributes["http.status_code"] == 202
