"""In-memory fakes of the services' ports, for fast tests of the apps (never mocks)."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError

from services.delivery.domain import Subscription
from services.ingest.domain import LedgerEntry, StoredResponse
from services.ingest.feeds import FeedIn, FeedState, FeedStatus
from shared.events import Article, EventMeta


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[Article, EventMeta]] = []
        self.broker_down = False

    async def publish(self, article: Article, meta: EventMeta) -> None:
        if self.broker_down:
            raise KafkaConnectionError("broker unreachable")
        self.published.append((article, meta))


class FakeLedger:
    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}

    async def get(self, uri: str, with_article: bool = True) -> LedgerEntry | None:
        return self.entries.get(uri)

    async def put(self, uri: str, entry: LedgerEntry) -> None:
        self.entries[uri] = entry


class FakeSubscriptionStore:
    def __init__(self) -> None:
        self.items: dict[str, Subscription] = {}

    async def add(self, subscription: Subscription) -> None:
        self.items[subscription.id] = subscription

    async def remove(self, subscription_id: str) -> bool:
        return self.items.pop(subscription_id, None) is not None

    async def get(self, subscription_id: str) -> Subscription | None:
        return self.items.get(subscription_id)

    async def all(self) -> list[Subscription]:
        return list(self.items.values())


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
