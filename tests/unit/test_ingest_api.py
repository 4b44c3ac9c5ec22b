"""ingest's HTTP API as a newsroom sees it, over in-memory fakes of Kafka and the ledger."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.factories import article_payload
from tests.fakes import (
    FakePublisher,
    FakeRateLimiter,
    fake_ingest_runtime,
)

pytestmark = pytest.mark.unit

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def limiter() -> FakeRateLimiter:
    return FakeRateLimiter()


@pytest.fixture
def client(publisher: FakePublisher, limiter: FakeRateLimiter) -> Iterator[TestClient]:
    settings = IngestSettings(
        ingest_api_keys=f"test={KEY},other=other-key,internal-key",
        ingest_max_body_bytes=20_000,
        ingest_max_headline_chars=120,
    )
    with TestClient(create_app(settings, fake_ingest_runtime(publisher, limiter))) as test_client:
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
    unknown = client.post(
        "/v1/articles/urn%3Anewsflow%3Atest%3Anope/withdraw", json={"reason": "x"}, headers=AUTH
    )
    assert unknown.status_code == 404


def test_broker_down_is_503_with_retry_after(client: TestClient, publisher: FakePublisher) -> None:
    publisher.broker_down = True
    response = post(client, article_payload())

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["code"] == "broker_unavailable"


def at_once(client: TestClient, payloads: list[dict[str, Any]]) -> list[int]:
    """Posts every payload at the same moment; the answers' statuses, sorted."""
    start = threading.Barrier(len(payloads) + 1)

    def send(payload: dict[str, Any]) -> Any:
        start.wait()
        return post(client, payload)

    with ThreadPoolExecutor(len(payloads)) as pool:
        pending = [pool.submit(send, payload) for payload in payloads]
        start.wait()
        return sorted(p.result().status_code for p in pending)


def test_a_failed_publish_lets_its_waiting_twin_publish(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload()
    publisher.ack_delay_s = 0.2
    publisher.failures = 1

    # The first publish fails (503); its twin, waiting on the claim, then publishes it itself.
    assert at_once(client, [payload, payload]) == [202, 503]
    assert len(publisher.published) == 1


def test_other_content_for_a_version_being_published_is_409(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload()
    publisher.ack_delay_s = 0.2

    assert at_once(client, [payload, {**payload, "headline": "Other"}]) == [202, 409]
    assert len(publisher.published) == 1


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    post(client, article_payload())
    assert 'newsflow_ingest_articles_total{outcome="accepted"} 1.0' in client.get("/metrics").text


def test_batch_gives_each_item_its_own_result(client: TestClient, publisher: FakePublisher) -> None:
    good = article_payload()
    items = [good, article_payload(headline=""), article_payload(), good]
    response = client.post("/v1/articles/batch", json={"articles": items}, headers=AUTH)

    assert response.status_code == 200
    body = response.json()
    assert [r["status"] for r in body["results"]] == [
        "accepted", "rejected", "accepted", "duplicate",
    ]  # fmt: skip
    assert body["results"][1]["errors"][0]["field"] == "headline"
    assert body["results"][3]["event_id"] == body["results"][0]["event_id"]
    assert (body["accepted"], body["rejected"], body["failed"]) == (3, 1, 0)
    assert len(publisher.published) == 2


def test_batch_over_the_limit_is_413(client: TestClient, publisher: FakePublisher) -> None:
    items = [{} for _ in range(501)]
    response = client.post("/v1/articles/batch", json={"articles": items}, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["code"] == "batch_too_large"
    assert publisher.published == []


def test_long_headline_is_413_naming_the_field(client: TestClient) -> None:
    response = post(client, article_payload(headline="h" * 121))
    assert response.status_code == 413
    assert response.json()["errors"][0]["field"] == "headline"


def test_idempotency_key_replays_the_first_answer(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload()
    headers = {**AUTH, "Idempotency-Key": "req-1"}
    first = post(client, payload, headers)
    again = post(client, payload, headers)
    other_body = post(client, article_payload(), headers)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"
    assert len(publisher.published) == 1


def test_a_key_writes_only_its_own_provider_and_namespace(
    client: TestClient, publisher: FakePublisher
) -> None:
    other_provider = post(client, article_payload(provider="other"))
    other_namespace = post(client, article_payload(uri="urn:newsflow:other:1"))
    unscoped = post(
        client,
        article_payload(provider="other", uri="urn:newsflow:other:2"),
        {"Authorization": "Bearer internal-key"},
    )

    assert other_provider.status_code == other_namespace.status_code == 403
    assert other_provider.json()["code"] == "forbidden"
    assert unscoped.status_code == 202
    assert len(publisher.published) == 1


def test_over_the_rate_limit_is_429_with_retry_after(
    client: TestClient, limiter: FakeRateLimiter, publisher: FakePublisher
) -> None:
    limiter.limit = 1
    assert post(client, article_payload()).status_code == 202
    response = post(client, article_payload())

    assert response.status_code == 429
    assert response.headers["retry-after"] == "8"
    assert response.json()["code"] == "rate_limited"
    assert len(publisher.published) == 1


def test_control_characters_are_cleaned_and_plain_text_is_kept(
    client: TestClient, publisher: FakePublisher
) -> None:
    payload = article_payload(
        headline="Tram\x00 line\x1b approved\u200b",
        body_html="<p>First &amp; foremost.</p><ul><li>One</li></ul><p>Last\u0085 line</p>",
    )
    assert post(client, payload).status_code == 202
    # json.dumps escapes a lone surrogate as \ud800, as a careless client would send it.
    surrogate = client.post(
        "/v1/articles",
        content=json.dumps(article_payload(headline="Tram \ud800")),
        headers={**AUTH, "content-type": "application/json"},
    )

    assert surrogate.status_code == 422
    assert surrogate.json()["code"] == "invalid_json"
    article, _ = publisher.published[0]
    assert article.headline == "Tram line approved\u200b"
    assert article.body_text == "First & foremost.\nOne\nLast line"


def test_invalid_utf8_and_naive_datetimes_are_422(client: TestClient) -> None:
    bad_bytes = client.post(
        "/v1/articles",
        content=b'{"headline": "\xff\xfe"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    naive = post(client, article_payload(embargoed="2030-01-01T10:00:00", language="english"))

    assert bad_bytes.status_code == 422
    assert bad_bytes.json()["code"] == "invalid_json"
    assert naive.status_code == 422
    assert {e["field"] for e in naive.json()["errors"]} == {"language"}
    zoned_wrong = post(client, article_payload(embargoed="2030-01-01T10:00:00"))
    assert zoned_wrong.json()["errors"] == [
        {"field": "embargoed", "message": "needs a UTC offset, e.g. 2026-11-25T09:30:00Z"}
    ]


def test_embargoed_article_is_accepted_and_carried(
    client: TestClient, publisher: FakePublisher
) -> None:
    assert post(client, article_payload(embargoed="2030-01-01T10:00:00Z")).status_code == 202
    article, _ = publisher.published[0]
    assert article.embargoed is not None and article.embargoed.year == 2030
