"""The Redis-backed cache, subscription store and ingest ledger against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.delivery.adapters import CachedStory, RedisStoryCache, RedisSubscriptionStore
from services.delivery.domain import Subscription, SubscriptionRequest
from services.ingest.adapters import RedisLedger
from services.ingest.domain import LedgerEntry

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def cached(uri: str, section: str, at: float, withdrawn: bool = False) -> CachedStory:
    return CachedStory(uri, section, at, withdrawn, f'{{"uri":"{uri}","at":{at}}}'.encode())


async def test_latest_is_newest_first_per_section_and_capped(redis: Redis, prefix: str) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=3)
    await cache.apply([cached(f"urn:w{i}", "world", 1000 + i) for i in range(5)])
    await cache.apply([cached("urn:s1", "sport", 2000)])

    world = await cache.latest("world", 10)
    assert [b'"urn:w4"' in v for v in world] == [True, False, False]
    assert len(world) == 3
    assert len(await cache.latest(None, 10)) == 3
    assert (await cache.latest(None, 1))[0].startswith(b'{"uri":"urn:s1"')
    assert await cache.story("urn:w4") is not None


async def test_withdrawn_story_leaves_every_list(redis: Redis, prefix: str) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=10)
    await cache.apply([cached("urn:a", "world", 1), cached("urn:b", "world", 2)])
    await cache.apply([cached("urn:a", "world", 3, withdrawn=True)])

    assert await cache.story("urn:a") is None
    assert [b'"urn:a"' in v for v in await cache.latest("world", 10)] == [False]
    assert [b'"urn:a"' in v for v in await cache.latest(None, 10)] == [False]


async def test_a_story_moving_section_leaves_the_old_list(redis: Redis, prefix: str) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=10)
    await cache.apply([cached("urn:a", "world", 1)])
    await cache.apply([cached("urn:a", "politics", 2)])
    assert await cache.latest("world", 10) == []
    assert len(await cache.latest("politics", 10)) == 1


async def test_subscriptions_are_shared_through_redis(redis: Redis, prefix: str) -> None:
    store = RedisSubscriptionStore(redis, prefix)
    other_instance = RedisSubscriptionStore(redis, prefix)
    subscription = Subscription.create(SubscriptionRequest(url="https://p.example/h"))
    await store.add(subscription)

    assert await other_instance.get(subscription.id) == subscription
    assert [s.id for s in await other_instance.all()] == [subscription.id]
    assert await other_instance.remove(subscription.id)
    assert await store.all() == []


async def test_ledger_round_trip(redis: Redis, prefix: str) -> None:
    ledger = RedisLedger(redis, prefix)
    entry = LedgerEntry(3, "evt-1", "newsflow.article.updated", "abc", '{"uri":"u"}')
    assert await ledger.get("urn:u") is None
    await ledger.put("urn:u", entry)
    assert await ledger.get("urn:u") == entry
