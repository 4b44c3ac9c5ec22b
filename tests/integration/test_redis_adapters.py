"""The Redis-backed ingest ledger against a real Redis (delivery's: test_delivery_adapters)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.ingest.adapters import RedisLedger
from services.ingest.domain import LedgerEntry

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_ledger_round_trip(redis: Redis, prefix: str) -> None:
    ledger = RedisLedger(redis, prefix)
    entry = LedgerEntry(3, "evt-1", "newsflow.article.updated", "abc", '{"uri":"u"}')
    assert await ledger.get("urn:u") is None
    await ledger.put("urn:u", entry)
    assert await ledger.get("urn:u") == entry
