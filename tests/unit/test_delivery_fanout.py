"""The story consumer's fan-out over in-memory fakes: which subscriptions get which story, and
what its log lines carry."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest
import structlog

from services.delivery.adapters import CachedStory
from services.delivery.app import DeliveryMetrics, Fanout, StoryConsumer
from services.delivery.domain import Job, Subscription, SubscriptionRequest
from shared.events import EventMeta, EventType, Story, new_traceparent, trace_id
from shared.kafka import DeadLetters, IncomingRecord
from shared.logging import CONTEXT_PROCESSORS
from tests.factories import article_payload
from tests.fakes import FakeSubscriptionStore

pytestmark = pytest.mark.unit


class Cache:
    def __init__(self, cached: dict[str, int] | None = None) -> None:
        self.cached = cached or {}
        self.applied: list[CachedStory] = []

    async def versions(self, uris: Sequence[str]) -> dict[str, int]:
        return {u: self.cached[u] for u in uris if u in self.cached}

    async def apply(self, stories: Sequence[CachedStory], along: Any = None) -> None:
        self.applied += stories


class State:
    def __init__(self, got: dict[str, set[str]] | None = None) -> None:
        self.got = got or {}
        self.queued: list[Job] = []

    def queued_ops(self, jobs: Sequence[Job]) -> Any:
        self.queued += jobs
        return None

    async def receivers(self, uri: str) -> set[str]:
        return self.got.get(uri, set())


def story(section: str, **fields: Any) -> Story:
    return Story.model_validate(
        {
            **article_payload(**fields),
            "enrichment": {"section": {"id": section, "name": section.title(),
                                       "confidence": 1, "method": "provider"}},
        }
    )  # fmt: skip


def fanout(
    store: FakeSubscriptionStore, state: State | None = None, cache: Cache | None = None
) -> Fanout:
    return Fanout(
        cache or Cache(), asyncio.Lock(), store, state or State(), None, DeliveryMetrics(),  # type: ignore[arg-type]
    )  # fmt: skip


async def test_each_story_goes_to_every_active_subscription_that_wants_it() -> None:
    from services.delivery.app import Outgoing

    store = FakeSubscriptionStore()
    requests = [
        SubscriptionRequest(url="https://p.example/1", sections=["world"]),
        SubscriptionRequest(url="https://p.example/2", sections=["world", "sport"]),
        SubscriptionRequest(url="https://p.example/3"),  # everything
        SubscriptionRequest(url="https://p.example/4", keywords=["ferry"]),  # any section
        SubscriptionRequest(url="https://p.example/5", sections=["sport"], max_urgency=2),
        SubscriptionRequest(url="https://p.example/6", event_types=["story.updated"]),
        SubscriptionRequest(url="https://p.example/7", sections=["World"]),  # normalised
    ]
    subscriptions = [Subscription.create(r) for r in requests]
    subscriptions.append(subscriptions[0].model_copy(update={"id": "sub_paused", "paused": True}))
    for subscription in subscriptions:
        await store.add(subscription)
    stories = [
        story(section, urgency=urgency, headline=headline)
        for section, urgency, headline in itertools.product(
            ["world", "sport", "business", "World"], [1, 5], ["A ferry sails", "Markets calm"]
        )
    ]
    items = [
        Outgoing(s, s.model_dump_json().encode(), event_type)
        for s in stories
        for event_type in (EventType.PUBLISHED, EventType.UPDATED)
    ]

    groups = await fanout(store).prepare(items)

    for item, jobs in zip(items, groups, strict=True):
        expected = sorted(
            s.id for s in subscriptions if s.active and s.wants(item.story, item.event_type)
        )
        assert [j.subscription_id for j in jobs] == expected
    assert {j.subscription_id for group in groups for j in group} == {
        s.id for s in subscriptions if s.active
    }


async def test_a_subscription_changed_between_batches_is_matched_as_it_is_now() -> None:
    """The fan-out works out its section map once per list the store answers; a pause, a new
    section or a new subscription shows in the next batch."""
    from services.delivery.app import Outgoing

    store = FakeSubscriptionStore()
    world = Subscription.create(SubscriptionRequest(url="https://p.example/1", sections=["world"]))
    await store.add(world)
    out = fanout(store)

    def batch() -> list[Outgoing]:
        s = story("world")
        return [Outgoing(s, s.model_dump_json().encode(), EventType.PUBLISHED)]

    async def targets() -> list[str]:
        [jobs] = await out.prepare(batch())
        return [j.subscription_id for j in jobs]

    assert await targets() == [world.id]
    assert await targets() == [world.id]  # nothing changed: the same map
    await store.add(world.model_copy(update={"paused": True}))
    assert await targets() == []
    sport = Subscription.create(SubscriptionRequest(url="https://p.example/2", sections=["sport"]))
    await store.add(sport)
    await store.add(world)  # resumed
    await store.add(sport.model_copy(update={"sections": ["sport", "world"]}))
    assert await targets() == sorted([world.id, sport.id])
    assert await store.remove(world.id)
    assert await targets() == [sport.id]


async def test_a_withdrawal_reaches_whoever_got_the_story_whatever_the_filters() -> None:
    from services.delivery.app import Outgoing

    store = FakeSubscriptionStore()
    sport = Subscription.create(SubscriptionRequest(url="https://p.example/1", sections=["sport"]))
    world = Subscription.create(SubscriptionRequest(url="https://p.example/2", sections=["world"]))
    for subscription in (sport, world):
        await store.add(subscription)
    killed = story("world", pubstatus="canceled", version=2)
    state = State({killed.uri: {sport.id}})
    item = Outgoing(killed, killed.model_dump_json().encode(), EventType.WITHDRAWN)

    [jobs] = await fanout(store, state, Cache({killed.uri: 1})).prepare([item])
    assert sorted(j.subscription_id for j in jobs) == sorted([sport.id, world.id])
    # Never released (e.g. withdrawn under embargo): only to whoever got it.
    [jobs] = await fanout(store, state).prepare([item])
    assert [j.subscription_id for j in jobs] == [sport.id]


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    async def send_and_wait(self, topic: str, value: bytes | None, **_: Any) -> None:
        self.sent.append(value)


def record(offset: int, value: bytes, event_type: EventType) -> IncomingRecord:
    meta = EventMeta.new(event_type.value, "urn:test", traceparent=new_traceparent())
    return IncomingRecord("stories", 0, offset, b"k", value, meta.to_headers(), meta, 0)


async def test_the_log_lines_of_a_record_carry_its_event_and_trace_and_nothing_leaks() -> None:
    good = story("world")
    records = [
        record(0, b'{"not": "a story"}', EventType.PUBLISHED),
        record(1, good.model_dump_json().encode(), EventType.PUBLISHED),
    ]
    producer = Producer()
    consumer = StoryConsumer(
        fanout(FakeSubscriptionStore()), None, DeadLetters(producer, lambda t: t + ".dlq"),  # type: ignore[arg-type]
        DeliveryMetrics(), 0.5,
    )  # fmt: skip

    with structlog.testing.capture_logs(CONTEXT_PROCESSORS) as logs:
        jobs = await consumer.handle(records)

    assert jobs == {(0, 1): []}
    assert producer.sent == [records[0].value]
    parked, received = logs
    assert parked["event"] == "record parked on DLQ" and parked["offset"] == 0
    assert received["event"] == "story received" and received["article_uri"] == good.uri
    for line, source in ((parked, records[0]), (received, records[1])):
        assert line["event_id"] == source.meta.id
        assert line["trace_id"] == trace_id(dict(source.meta.extensions)["traceparent"])
    assert structlog.contextvars.get_contextvars() == {}
