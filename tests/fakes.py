"""In-memory fakes of the services' ports, for fast tests of the apps (never mocks)."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError

from services.delivery.domain import Subscription
from services.ingest.domain import LedgerEntry
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

    async def get(self, uri: str) -> LedgerEntry | None:
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
