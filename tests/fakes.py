"""In-memory fakes of the services' ports, for fast tests of the apps (never mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from aiokafka.errors import KafkaConnectionError

from services.delivery.domain import Job, RecentDelivery, Subscription, Tagged, fingerprint
from services.ingest.app import IngestRuntime, IntakeFactory
from services.ingest.domain import Claim, Intake, LedgerEntry, StoredResponse
from services.ingest.feeds import FeedIn, FeedState, FeedStatus
from services.ingest.settings import IngestSettings
from shared.events import Article, EventMeta, decode_article


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[Article, EventMeta]] = []
        self.broker_down = False
        self.failures = 0  # the next `failures` publishes fail (after `ack_delay_s`)
        self.ack_delay_s = 0.0

    async def publish(self, article: Article, meta: EventMeta, value: bytes | None = None) -> None:
        if self.ack_delay_s:
            await asyncio.sleep(self.ack_delay_s)
        if self.broker_down or self.failures:
            self.failures = max(0, self.failures - 1)
            raise KafkaConnectionError("broker unreachable")
        self.published.append((article if value is None else decode_article(value), meta))


class FakeLedger:
    """The ledger's rules in memory: claims are taken only for versions newer than recorded."""

    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}
        self.claims: dict[tuple[str, int], tuple[str, str]] = {}  # -> (fingerprint, token)

    async def get(self, uri: str, with_article: bool = True) -> LedgerEntry | None:
        return self.entries.get(uri)

    async def claim(
        self, uri: str, version: int, fingerprint: str, token: str, ttl_s: float
    ) -> Claim:
        previous = self.entries.get(uri)
        if previous is not None and previous.version >= version:
            return Claim(previous, won=False)
        holder = self.claims.setdefault((uri, version), (fingerprint, token))
        won = holder[1] == token
        return Claim(previous, won=won, held_by=None if won else holder[0])

    async def put(self, uri: str, entry: LedgerEntry) -> None:
        recorded = self.entries.get(uri)
        if recorded is None or recorded.version < entry.version:
            self.entries[uri] = entry
        self.claims.pop((uri, entry.version), None)

    async def release(self, uri: str, version: int, token: str) -> None:
        if self.claims.get((uri, version), ("", ""))[1] == token:
            del self.claims[(uri, version)]


class FakeSubscriptionStore:
    """`all` answers the same object until a subscription changes, as the Kafka store does."""

    def __init__(self) -> None:
        self.items: dict[str, Subscription] = {}
        self._all: tuple[Subscription, ...] | None = None

    async def add(self, subscription: Subscription) -> None:
        self.items[subscription.id] = subscription
        self._all = None

    async def remove(self, subscription_id: str) -> bool:
        self._all = None
        return self.items.pop(subscription_id, None) is not None

    async def get(self, subscription_id: str) -> Subscription | None:
        return self.items.get(subscription_id)

    async def latest(self, subscription_id: str) -> Subscription | None:
        return self.items.get(subscription_id)

    async def read_to_now(self) -> None:
        return None  # held in memory: always up to now

    async def all(self) -> tuple[Subscription, ...]:
        if self._all is None:
            self._all = tuple(self.items.values())
        return self._all

    async def reseal(self) -> int:
        return 0  # held in memory: nothing sealed


class FakeStoryCache:
    """delivery's StoryCache port: stories by uri, newest-first by insertion."""

    def __init__(self) -> None:
        self.stories: dict[str, bytes] = {}

    async def latest(
        self, section_id: str | None, limit: int, before: float | None = None
    ) -> tuple[list[bytes], float | None]:
        values = list(reversed(self.stories.values()))
        start = 0 if before is None else int(before)
        page = values[start : start + limit]
        more = start + limit < len(values)
        return page, float(start + limit) if more else None

    async def latest_tagged(
        self, section_id: str | None, limit: int, before: float | None = None
    ) -> tuple[list[Tagged], float | None]:
        page, cursor = await self.latest(section_id, limit, before)
        return [Tagged(body, fingerprint(body)) for body in page], cursor

    async def story(self, uri: str) -> bytes | None:
        return self.stories.get(uri)

    async def story_tagged(self, uri: str) -> Tagged | None:
        body = self.stories.get(uri)
        return None if body is None else Tagged(body, fingerprint(body))

    async def sections(self) -> list[dict[str, Any]]:
        return [{"id": "world", "name": "International", "stories": len(self.stories)}]


class FakeDeliveryOperations:
    """delivery's Operations port: records what the API asked for."""

    def __init__(self) -> None:
        self.pinged: list[str] = []
        self.recovered: list[tuple[str, datetime]] = []
        self.events: list[tuple[str, str]] = []

    async def ping(self, subscription: Subscription) -> dict[str, Any]:
        self.pinged.append(subscription.id)
        return {"webhook_id": "msg_ping", "status_code": 204, "error": None}

    async def attempts(self, subscription_id: str, limit: int) -> list[dict[str, Any]]:
        return []

    async def recover(self, subscription: Subscription, since: datetime) -> int:
        self.recovered.append((subscription.id, since))
        return 3

    async def dead_letters(self, subscription_id: str) -> list[Job]:
        return []

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]:
        return [
            RecentDelivery(await self.attempts(s, limit), len(await self.dead_letters(s)))
            for s in subscription_ids
        ]

    async def resend(self, subscription_id: str, message_ids: list[str] | None) -> int:
        return 0

    async def record_event(self, kind: str, subscription: Subscription, reason: str) -> None:
        self.events.append((kind, subscription.id))


class FakeRateLimiter:
    """Counts articles per key with no window: over `limit` every hit waits `wait_s`."""

    def __init__(self, limit: int = 1_000_000, wait_s: float = 7.0) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.counts: dict[str, int] = {}

    async def hit(self, key_id: str, cost: int) -> float | None:
        self.counts[key_id] = self.counts.get(key_id, 0) + cost
        return self.wait_s if self.counts[key_id] > self.limit else None


class FakeIdempotencyStore:
    def __init__(self) -> None:
        self.items: dict[str, StoredResponse] = {}

    async def get(self, scope: str) -> StoredResponse | None:
        return self.items.get(scope)

    async def put(self, scope: str, response: StoredResponse) -> None:
        self.items[scope] = response


class FakeFeedRegistry:
    def __init__(self) -> None:
        self.feeds: dict[str, FeedIn] = {}
        self.states: dict[str, FeedState] = {}

    async def add(self, feed: FeedIn) -> None:
        self.feeds[feed.id] = feed

    async def remove(self, feed_id: str) -> bool:
        self.states.pop(feed_id, None)
        return self.feeds.pop(feed_id, None) is not None

    async def all(self) -> list[FeedStatus]:
        return [
            FeedStatus(id=i, feed=f, state=self.states.get(i, FeedState()))
            for i, f in sorted(self.feeds.items())
        ]

    async def save_state(self, feed_id: str, state: FeedState) -> None:
        if feed_id in self.feeds:
            self.states[feed_id] = state

    async def claim(self, feed_id: str, for_s: float) -> bool:
        return True


def fake_ingest_runtime(
    publisher: FakePublisher | None = None, limiter: FakeRateLimiter | None = None
) -> IntakeFactory:
    """ingest's runtime over these fakes (what `create_app` opens in its lifespan)."""

    @asynccontextmanager
    async def open_runtime(_: IngestSettings) -> AsyncIterator[IngestRuntime]:
        async def ready() -> bool:
            return True

        async def vet(url: str) -> None:
            return None

        yield IngestRuntime(
            intake=Intake(publisher or FakePublisher(), FakeLedger(), "urn:newsflow:ingest"),
            ready=ready,
            rate_limiter=limiter or FakeRateLimiter(),
            idempotency=FakeIdempotencyStore(),
            feeds=FakeFeedRegistry(),
            vet_feed_url=vet,
        )

    return open_runtime
