"""Redis flushed, then killed and restarted empty, mid-stream: the cache is rebuilt from the
enriched topic, the read API agrees with the topic, and no story is lost."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from ops.devrun import http_json
from tests.faults.harness import (
    ADMIN_TOKEN,
    Infra,
    Partner,
    Sent,
    Stack,
    cache_mismatches,
    enriched_stories,
    latest_versions,
    post_stories,
    stories,
)

pytestmark = pytest.mark.faults


def test_redis_flushed_and_restarted_mid_stream(infra: Infra, partner: Partner) -> None:
    stack = Stack(infra).start()
    try:
        subscription = stack.subscribe(partner.url("all"), [])
        sent = Sent()
        events: list[str] = []

        def trouble() -> None:
            time.sleep(4)
            client = redis.Redis.from_url(infra.redis.address)
            client.flushall()
            client.close()
            events.append("flushed")
            time.sleep(4)
            infra.restart_redis()
            events.append("killed and restarted empty")

        thread = threading.Thread(target=trouble)
        thread.start()
        payloads = stories("redis", 500, corrections=50)
        asyncio.run(post_stories(stack.url("ingest"), payloads, sent, rate=40, concurrency=8))
        thread.join()
        print(f"\n{events}; answers: {sent.answers}")
        assert len(sent.accepted) == len(payloads)
        for name in ("ingest", "enrichment", "delivery"):
            stack.wait_ready(name, timeout=60)
        _, listed = http_json("GET", f"{stack.url('delivery')}/v1/subscriptions", token=ADMIN_TOKEN)
        assert subscription["id"] in [s["id"] for s in listed["items"]], "subscription lost"

        partner.wait(
            lambda: {(h.uri, h.version) for h in partner.delivered("all")} >= set(sent.accepted),
            within_s=120,
            what="every accepted version delivered",
        )
        enriched = enriched_stories(stack)
        assert {(e.uri, e.version) for e in enriched} == set(sent.accepted)
        latest = latest_versions(enriched)
        try:
            partner.wait(
                lambda: cache_mismatches(stack, latest) == [],
                within_s=60,
                what="the cache rebuilt to match the topic",
            )
        except AssertionError:
            wrong = cache_mismatches(stack, latest)
            raise AssertionError(f"{len(wrong)} stories differ, e.g. {wrong[:5]}") from None
        status, page = http_json("GET", f"{stack.url('delivery')}/v1/latest?limit=100")
        assert status == 200
        items = page["items"]
        assert len(items) == 100
        assert len({i["uri"] for i in items}) == len(items)
        assert all(i["version"] == latest[i["uri"]].version for i in items)
    finally:
        stack.stop()
