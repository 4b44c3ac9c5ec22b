"""ingest's HTTP API as a newsroom sees it, over in-memory fakes of Kafka and the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from services.ingest.app import Ready, create_app
from services.ingest.domain import Intake
from services.ingest.settings import IngestSettings
from tests.factories import article_payload
from tests.fakes import FakeLedger, FakePublisher

pytestmark = pytest.mark.unit

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def client(publisher: FakePublisher) -> Iterator[TestClient]:
    ledger = FakeLedger()

    @asynccontextmanager
    async def fake_intake(_: IngestSettings) -> AsyncIterator[tuple[Intake, Ready]]:
        async def ready() -> bool:
            return True

        yield Intake(publisher, ledger, "urn:newsflow:ingest"), ready

    settings = IngestSettings(ingest_api_keys=f"{KEY},other-key", ingest_max_body_bytes=20_000)
    with TestClient(create_app(settings, fake_intake)) as test_client:
        yield test_client


def post(client: TestClient, payload: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/v1/articles", json=payload, headers=headers if headers is not None else AUTH
    )


def test_accepted_article_is_published_and_acknowledged(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload()
    response = post(client, payload)

    assert response.status_code == 202
    body = response.json()
    assert body["uri"] == payload["uri"]
    assert body["version"] == 1
    assert body["type"] == "newsflow.article.published"
    article, meta = publisher.published[0]
    assert meta.id == body["event_id"]
    assert article.headline == payload["headline"]


def test_missing_and_wrong_keys_are_401(client: TestClient, publisher: FakePublisher) -> None:
    missing = post(client, article_payload(), headers={})
    wrong = post(client, article_payload(), headers={"Authorization": "Bearer nope"})

    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "unauthenticated"
    assert wrong.json()["code"] == "invalid_token"
    assert "nope" not in wrong.text
    assert publisher.published == []


def test_invalid_fields_are_named(client: TestClient) -> None:
    response = post(client, article_payload(headline="", urgency=12, bogus=1))

    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "invalid_request"
    fields = {error["field"] for error in problem["errors"]}
    assert {"headline", "urgency", "bogus"} <= fields


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/v1/articles", content=b"uri=x", headers={**AUTH, "content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_oversized_body_is_413(client: TestClient) -> None:
    response = post(client, article_payload(body_html="<p>" + "x" * 30_000 + "</p>"))
    assert response.status_code == 413


def test_body_html_is_sanitised(client: TestClient, publisher: FakePublisher) -> None:
    html = '<p onclick="steal()">Hello <script>alert(1)</script><a href="javascript:x">l</a></p>'
    assert post(client, article_payload(body_html=html)).status_code == 202

    stored = publisher.published[0][0].body_html
    assert "script" not in stored
    assert "onclick" not in stored
    assert "javascript" not in stored
    assert "Hello" in stored


def test_identical_repost_is_idempotent(client: TestClient, publisher: FakePublisher) -> None:
    payload = article_payload()
    first = post(client, payload)
    again = post(client, payload)

    assert again.status_code == 200
    assert again.json()["event_id"] == first.json()["event_id"]
    assert len(publisher.published) == 1


def test_correction_is_an_update_and_stale_change_is_409(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload()
    post(client, payload)
    corrected = post(client, {**payload, "version": 2, "headline": "Corrected headline"})
    stale = post(client, {**payload, "version": 2, "headline": "Another change"})

    assert corrected.status_code == 202
    assert corrected.json()["type"] == "newsflow.article.updated"
    assert stale.status_code == 409
    assert stale.json()["code"] == "version_conflict"
    assert len(publisher.published) == 2


def test_withdraw_publishes_a_canceled_next_version(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload(uri="urn:newsflow:test:to/withdraw")
    post(client, payload)
    url = f"/v1/articles/{quote(payload['uri'], safe='')}/withdraw"
    response = client.post(url, json={"reason": "legal request"}, headers=AUTH)

    assert response.status_code == 202
    assert response.json()["type"] == "newsflow.article.withdrawn"
    killed, _ = publisher.published[-1]
    assert killed.pubstatus == "canceled"
    assert killed.version == 2
    again = client.post(url, json={"reason": "legal request"}, headers=AUTH)
    assert again.status_code == 200
    unknown = client.post("/v1/articles/urn%3Anope/withdraw", json={"reason": "x"}, headers=AUTH)
    assert unknown.status_code == 404


def test_broker_down_is_503_with_retry_after(client: TestClient, publisher: FakePublisher) -> None:
    publisher.broker_down = True
    response = post(client, article_payload())

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["code"] == "broker_unavailable"


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    post(client, article_payload())
    assert 'newsflow_ingest_articles_total{outcome="accepted"} 1.0' in client.get("/metrics").text
