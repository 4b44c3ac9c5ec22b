"""The Redis-backed ingest ledger against a real Redis (delivery's: test_delivery_adapters)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

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


async def test_ledger_never_records_a_lower_version_over_a_higher_one(
    redis: Redis, prefix: str
) -> None:
    ledger = RedisLedger(redis, prefix)
    newer = LedgerEntry(3, "evt-3", "newsflow.article.updated", "c", '{"version":3}')
    older = LedgerEntry(2, "evt-2", "newsflow.article.updated", "b", '{"version":2}')
    await ledger.put("urn:u", newer)
    await ledger.put("urn:u", older)
    assert await ledger.get("urn:u") == newer


async def test_one_claim_per_version_until_recorded_or_released(redis: Redis, prefix: str) -> None:
    ledger = RedisLedger(redis, prefix)
    first, twin, rival = await asyncio.gather(
        ledger.claim("urn:u", 1, "fp-a", "t1", 30),
        ledger.claim("urn:u", 1, "fp-a", "t2", 30),
        ledger.claim("urn:u", 1, "fp-b", "t3", 30),
    )
    assert [first.won, twin.won, rival.won] == [True, False, False]
    assert (twin.held_by, rival.held_by) == ("fp-a", "fp-a")

    await ledger.release("urn:u", 1, "t2")  # not the holder: nothing happens
    assert not (await ledger.claim("urn:u", 1, "fp-a", "t4", 30)).won
    await ledger.release("urn:u", 1, "t1")
    assert (await ledger.claim("urn:u", 1, "fp-a", "t5", 30)).won

    entry = LedgerEntry(1, "evt-1", "newsflow.article.published", "fp-a", "{}")
    await ledger.put("urn:u", entry)
    after = await ledger.claim("urn:u", 1, "fp-a", "t6", 30)
    assert (after.won, after.previous) == (False, replace(entry, article_json=""))
    assert (await ledger.claim("urn:u", 2, "fp-c", "t7", 30)).won


async def test_a_claim_expires(redis: Redis, prefix: str) -> None:
    ledger = RedisLedger(redis, prefix)
    assert (await ledger.claim("urn:u", 1, "fp", "t1", 0.05)).won
    await asyncio.sleep(0.1)
    assert (await ledger.claim("urn:u", 1, "fp", "t2", 30)).won


async def test_any_version_and_uri_go_through_claim_record_and_release_exactly(
    redis: Redis, prefix: str
) -> None:
    """Versions have no upper bound (none is rounded, e.g. to 1e+20), and uris may hold any
    text: each keeps its own claim and ledger entry."""
    ledger = RedisLedger(redis, prefix)
    uri = 'urn:ü:"quoted" \\ 😀'
    huge = 10**20 + 1
    claim = await ledger.claim(uri, huge, "fp-a", "t1", 30)
    assert claim.won and claim.previous is None
    assert await redis.exists(f"{prefix}ingest:claim:{uri}:{huge}")
    await ledger.release(uri, huge, "t1")
    assert not await redis.exists(f"{prefix}ingest:claim:{uri}:{huge}")

    assert (await ledger.claim(uri, huge, "fp-a", "t2", 30)).won
    entry = LedgerEntry(huge, "evt-1", "newsflow.article.updated", "fp-a", '{"ü":"😀"}')
    await ledger.put(uri, entry)
    assert await ledger.get(uri) == entry
    assert not await redis.exists(f"{prefix}ingest:claim:{uri}:{huge}")  # dropped on record
    lower = await ledger.claim(uri, huge - 1, "fp-b", "t3", 30)
    assert not lower.won and lower.previous == replace(entry, article_json="")
