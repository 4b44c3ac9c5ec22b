"""ingest over the real broker and Redis: HTTP in, records read back from the topic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ops.embedded import start_kafka
from services.ingest.app import create_app
from services.ingest.main import open_runtime
from services.ingest.settings import IngestSettings
from shared.events import Topics
from shared.kafka import ensure_topics
from tests.factories import article_payload
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer acme-key"}


def settings_for(kafka: str, redis_url: str, prefix: str, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka,
        "redis_url": redis_url,
        "topic_prefix": prefix,
        "redis_key_prefix": prefix,
        "ingest_api_keys": "test=acme-key",
        "ingest_ack_timeout_s": 3.0,
        "ingest_rate_limit": 1_000,
        **overrides,
    }
    return IngestSettings(**values)


@contextmanager
def running(settings: IngestSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, open_runtime)) as client:
        yield client


def test_articles_reach_the_topic_and_reposts_do_not(
    kafka_bootstrap: str, redis_url: str, prefix: str, topics: Topics
) -> None:
    payload = article_payload()
    batch = [article_payload(), article_payload(headline=""), article_payload()]
    with running(settings_for(kafka_bootstrap, redis_url, prefix)) as client:
        first = client.post("/v1/articles", json=payload, headers=AUTH)
        again = client.post("/v1/articles", json=payload, headers=AUTH)
        fixed = client.post(
            "/v1/articles", json={**payload, "version": 2, "headline": "Fixed"}, headers=AUTH
        )
        batched = client.post("/v1/articles/batch", json={"articles": batch}, headers=AUTH)
        killed = client.post(
            f"/v1/articles/{payload['uri']}/withdraw", json={"reason": "legal"}, headers=AUTH
        )

    assert (first.status_code, again.status_code, fixed.status_code) == (202, 200, 202)
    assert [r["status"] for r in batched.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert killed.status_code == 202
    records = asyncio.run(read_records(kafka_bootstrap, topics.ingested, 5))
    mine = [r for r in records if r.key == payload["uri"].encode()]
    types = [dict(r.headers)["ce_type"].decode() for r in sorted(mine, key=lambda r: r.offset)]
    assert types == [
        "newsflow.article.published",
        "newsflow.article.updated",
        "newsflow.article.withdrawn",
    ]
    assert len(records) == 5
    data = json.loads(mine[0].value or b"")
    assert data["body_text"]


def test_one_version_posted_at_once_to_two_replicas_is_published_once(
    kafka_bootstrap: str, redis_url: str, prefix: str, topics: Topics
) -> None:
    payload = article_payload()
    rival = {**payload, "headline": "A different story under the same version"}
    posts = 24
    start = threading.Barrier(posts + 1)
    settings = settings_for(kafka_bootstrap, redis_url, prefix)
    with running(settings) as one, running(settings) as two:

        def post(i: int) -> Any:
            start.wait()
            return (one if i % 2 else two).post("/v1/articles", json=payload, headers=AUTH)

        with ThreadPoolExecutor(posts) as pool:
            pending = [pool.submit(post, i) for i in range(posts)]
            start.wait()
            answers = [p.result() for p in pending]
        late_rival = one.post("/v1/articles", json=rival, headers=AUTH)

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * (posts - 1) + [202]
    assert len({a.json()["event_id"] for a in answers}) == 1
    assert late_rival.status_code == 409
    # Nothing else goes to this test's topic: read until the timeout to see any extra record.
    records = asyncio.run(read_records(kafka_bootstrap, topics.ingested, 2, within_s=5))
    assert [r.key for r in records] == [payload["uri"].encode()]
    assert dict(records[0].headers)["ce_id"].decode() == answers[0].json()["event_id"]


def test_rate_limit_is_shared_by_replicas(
    kafka_bootstrap: str, redis_url: str, prefix: str, topics: Topics
) -> None:
    settings = settings_for(kafka_bootstrap, redis_url, prefix, ingest_rate_limit=3)
    with running(settings) as one, running(settings) as two:
        answers = [
            (one if i % 2 else two).post("/v1/articles", json=article_payload(), headers=AUTH)
            for i in range(5)
        ]

    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_a_paused_broker_gets_503_and_never_202(redis_url: str, prefix: str) -> None:
    broker = start_kafka()
    try:
        topics = Topics(prefix)
        asyncio.run(ensure_topics(broker.address, topics.all()))
        settings = settings_for(broker.address, redis_url, prefix, ingest_ack_timeout_s=1.5)
        payload = article_payload()
        with running(settings) as client:
            assert (
                client.post("/v1/articles", json=article_payload(), headers=AUTH).status_code == 202
            )
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                paused = client.post("/v1/articles", json=payload, headers=AUTH)
                waited = time.monotonic() - started
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            retried = client.post("/v1/articles", json=payload, headers=AUTH)

        assert paused.status_code == 503
        assert paused.headers["retry-after"] == "5"
        assert paused.json()["code"] == "broker_unavailable"
        assert waited < 5
        assert retried.status_code == 202
        records = asyncio.run(read_records(broker.address, topics.ingested, 2))
        assert payload["uri"].encode() in {r.key for r in records}
    finally:
        broker.stop()


def test_versions_up_to_the_largest_exact_json_integer_order_and_larger_are_422(
    kafka_bootstrap: str, redis_url: str, prefix: str
) -> None:
    """Past 2^53 a JSON reader (and the ledger's Lua) rounds integers: 2^53 + 1 reads as 2^53,
    so a correction numbered so would be refused as a repeat, and a partner site in JavaScript
    would see the wrong version. ingest takes versions up to 2^53 - 1 and names the field for
    any larger; within the range, every version orders exactly (a withdrawal of the largest is
    2^53, still exact)."""
    largest = 2**53 - 1
    payload = article_payload()
    with running(settings_for(kafka_bootstrap, redis_url, prefix)) as client:
        near = client.post("/v1/articles", json={**payload, "version": largest - 1}, headers=AUTH)
        top = client.post(
            "/v1/articles", json={**payload, "version": largest, "headline": "Fixed"}, headers=AUTH
        )
        past = client.post(
            "/v1/articles",
            json={**payload, "version": largest + 2, "headline": "Again"},
            headers=AUTH,
        )
        killed = client.post(
            f"/v1/articles/{payload['uri']}/withdraw", json={"reason": "legal"}, headers=AUTH
        )

    assert (near.status_code, top.status_code) == (202, 202)
    assert top.json()["type"] == "newsflow.article.updated"
    assert past.status_code == 422
    assert past.json()["errors"] == [
        {
            "field": "version",
            "message": f"at most {largest} (2^53 - 1), the largest integer "
            "every JSON reader keeps exactly",
        }
    ]
    assert killed.status_code == 202
    assert (killed.json()["version"], killed.json()["type"]) == (
        2**53,
        "newsflow.article.withdrawn",
    )
