"""The sender's per-endpoint limit and circuit breaker, over in-memory fakes (no connections)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.delivery.app import DeliveryMetrics, Sender
from services.delivery.domain import Answer, Job, Subscription, SubscriptionRequest
from services.delivery.settings import DeliverySettings
from shared.events import EventType, Topics
from tests.fakes import FakeSubscriptionStore

pytestmark = pytest.mark.unit


class Recorder:
    """Stands in for the queue, attempt log, state and subscription events: keeps what it got."""

    def __init__(self) -> None:
        self.queued: list[Job] = []
        self.settled: list[tuple[str, bool]] = []

    async def put(self, jobs: list[Job]) -> None:
        self.queued.extend(jobs)

    async def record(self, *args: Any) -> None:
        return None

    async def settled_(self, job: Job, attempt: Any, delivered: bool, dead: bool) -> None:
        self.settled.append((job.message_id, delivered))

    async def attempted(self, *args: Any) -> None:
        return None

    async def oldest_pending(self, job: Job) -> int | None:
        return None


async def test_jobs_queued_for_an_endpoint_wait_once_its_breaker_opens() -> None:
    settings = DeliverySettings(
        delivery_per_endpoint_in_flight=1, delivery_breaker_failures=1,
        delivery_breaker_cooldown_s=30,
    )  # fmt: skip
    store = FakeSubscriptionStore()
    subscription = Subscription.create(SubscriptionRequest(url="https://partner.example/hook"))
    await store.add(subscription)
    posted: list[str] = []
    release = asyncio.Event()

    async def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
        posted.append(headers["webhook-id"])
        await release.wait()
        return Answer(503, "HTTP 503", 1.0)

    sender, recorder = make_sender(settings, store, post)
    jobs = [
        Job(subscription.id, f"urn:story:{i}", 1, EventType.PUBLISHED, 1, 0.0, b"{}")
        for i in range(3)
    ]
    settled: list[int] = []
    await sender.dispatch(jobs, lambda: settled.append(1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(posted) == 1  # the others wait for the endpoint's one slot
    release.set()
    await sender.drain()

    assert settled == [1]
    assert posted == [jobs[0].message_id]  # the failure opened the breaker: no more sent
    assert [j.story_uri for j in recorder.queued] == [
        jobs[0].story_uri,  # its retry
        jobs[1].story_uri,  # held until the breaker's cooldown is over
        jobs[2].story_uri,
    ]
    assert recorder.queued[0].attempt == 2
    assert all(j.attempt == 1 and j.due > 0 for j in recorder.queued[1:])


def make_sender(
    settings: DeliverySettings,
    store: FakeSubscriptionStore,
    post: Any,
    recorder: Recorder | None = None,
) -> tuple[Sender, Recorder]:
    recorder = recorder or Recorder()
    state: Any = type("State", (), {})()
    state.settled = recorder.settled_
    state.attempted = recorder.attempted
    state.oldest_pending = recorder.oldest_pending
    unused: Any = None
    sender = Sender(
        unused, Topics(""), store, state, recorder, post, recorder, recorder,  # type: ignore[arg-type]
        DeliveryMetrics(), settings, unused,
    )  # fmt: skip
    return sender, recorder


async def two_partners() -> tuple[FakeSubscriptionStore, list[Subscription]]:
    store = FakeSubscriptionStore()
    subscriptions = [
        Subscription.create(SubscriptionRequest(url=f"https://partner.example/{n}"))
        for n in range(2)
    ]
    for subscription in subscriptions:
        await store.add(subscription)
    return store, subscriptions


async def test_limits_hold_and_a_record_is_settled_once_all_its_jobs_are() -> None:
    settings = DeliverySettings(delivery_per_endpoint_in_flight=2, delivery_max_in_flight=3)
    store, subscriptions = await two_partners()
    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}
    release = asyncio.Event()

    async def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
        in_flight[url] = in_flight.get(url, 0) + 1
        most[url] = max(most.get(url, 0), in_flight[url])
        most["all"] = max(most.get("all", 0), sum(in_flight.values()))
        await release.wait()
        in_flight[url] -= 1
        return Answer(204, None, 1.0)

    sender, recorder = make_sender(settings, store, post)
    settled: list[str] = []
    for r in range(3):  # three records, each with a job for both subscriptions
        jobs = [
            Job(s.id, f"urn:story:{r}", 1, EventType.PUBLISHED, 1, 0.0, b"{}")
            for s in subscriptions
        ]
        await sender.dispatch(jobs, lambda r=r: settled.append(f"record {r}"))  # type: ignore[misc]
    for _ in range(10):
        await asyncio.sleep(0)
    assert sum(in_flight.values()) == 3 and settled == []  # the global cap
    release.set()
    await sender.drain()
    assert sorted(settled) == ["record 0", "record 1", "record 2"]
    assert len(recorder.settled) == 6 and all(delivered for _, delivered in recorder.settled)
    assert most["all"] == 3 and all(most[s.url] <= 2 for s in subscriptions)


async def test_a_cancelled_job_leaves_its_record_unsettled_and_frees_its_slots() -> None:
    settings = DeliverySettings(delivery_per_endpoint_in_flight=1, delivery_max_in_flight=1)
    store, subscriptions = await two_partners()
    posted: list[str] = []
    hanging: list[asyncio.Task[Any]] = []

    async def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
        posted.append(url)
        if len(posted) == 1:
            task = asyncio.current_task()
            assert task is not None
            hanging.append(task)
            await asyncio.Event().wait()
        return Answer(204, None, 1.0)

    sender, _ = make_sender(settings, store, post)
    settled: list[int] = []
    for n, subscription in enumerate(subscriptions):
        job = Job(subscription.id, "urn:story:a", 1, EventType.PUBLISHED, 1, 0.0, b"{}")
        await sender.dispatch([job], lambda n=n: settled.append(n))  # type: ignore[misc]
    for _ in range(5):
        await asyncio.sleep(0)
    assert posted == [subscriptions[0].url]  # the second waits for the one global slot
    hanging[0].cancel()  # e.g. shutdown while the first job was on the wire
    await sender.drain()
    assert settled == [1]  # the cancelled record is not marked settled; the slot went on
    assert posted == [s.url for s in subscriptions]


class PendingRecorder(Recorder):
    """Also keeps the order guard: a job is pending from dispatch until it is settled."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: set[tuple[str, int]] = set()

    async def settled_(self, job: Job, attempt: Any, delivered: bool, dead: bool) -> None:
        await super().settled_(job, attempt, delivered, dead)
        self.pending.discard((job.story_uri, job.version))

    async def oldest_pending(self, job: Job) -> int | None:
        earlier = [v for uri, v in self.pending if uri == job.story_uri and v < job.version]
        return min(earlier, default=None)


async def story_and_correction() -> tuple[FakeSubscriptionStore, PendingRecorder, Job, Job]:
    """One partner, and a story's jobs for it: the original and its correction, both pending."""
    store = FakeSubscriptionStore()
    subscription = Subscription.create(SubscriptionRequest(url="https://partner.example/hook"))
    await store.add(subscription)
    original, correction = (
        Job(subscription.id, "urn:story:dam", version, event, 1, 0.0, b"{}")
        for version, event in ((1, EventType.PUBLISHED), (2, EventType.UPDATED))
    )
    recorder = PendingRecorder()
    recorder.pending |= {(original.story_uri, 1), (correction.story_uri, 2)}
    return store, recorder, original, correction


@pytest.mark.parametrize("first_answer", [204, 503])
async def test_a_correction_behind_its_original_waits_for_it_in_process(first_answer: int) -> None:
    settings = DeliverySettings(delivery_per_endpoint_in_flight=4)
    store, recorder, original, correction = await story_and_correction()
    posted: list[str] = []
    release = asyncio.Event()

    async def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
        posted.append(headers["webhook-id"])
        await release.wait()
        return Answer(first_answer if len(posted) == 1 else 204, None, 1.0)

    sender, _ = make_sender(settings, store, post, recorder)
    settled: list[int] = []
    for n, job in enumerate((original, correction)):
        await sender.dispatch([job], lambda n=n: settled.append(n))  # type: ignore[misc]
    for _ in range(10):
        await asyncio.sleep(0)
    assert posted == [original.message_id]  # a free worker, but the correction waits its turn
    release.set()
    await sender.drain()

    assert sorted(settled) == [0, 1]
    if first_answer == 204:  # the original went out: the correction follows at once
        assert posted == [original.message_id, correction.message_id]
        assert recorder.queued == []
    else:  # the original waits on a retry tier: so does the correction, behind it
        assert posted == [original.message_id]
        assert [(j.version, j.attempt) for j in recorder.queued] == [(1, 2), (2, 1)]


async def test_a_later_version_queued_before_its_story_is_put_back_not_left_waiting() -> None:
    # E.g. a correction due from its retry tier just before the story's own retry: with one
    # worker for the endpoint, waiting for the story queued behind it would never end.
    settings = DeliverySettings(delivery_per_endpoint_in_flight=1)
    store, recorder, original, correction = await story_and_correction()
    posted: list[str] = []

    async def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
        posted.append(headers["webhook-id"])
        return Answer(204, None, 1.0)

    sender, _ = make_sender(settings, store, post, recorder)
    settled: list[int] = []
    for n, job in enumerate((correction, original)):
        await sender.dispatch([job], lambda n=n: settled.append(n))  # type: ignore[misc]
    await asyncio.wait_for(sender.drain(), 5)

    assert sorted(settled) == [0, 1]
    assert posted == [original.message_id]
    assert [(j.version, j.due > 0) for j in recorder.queued] == [(2, True)]  # looks again later


class SlowStore(FakeSubscriptionStore):
    """Its writes take a round trip, as the topic's do."""

    async def add(self, subscription: Subscription) -> None:
        await asyncio.sleep(0.01)
        await super().add(subscription)


class EventRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def record(self, *args: Any) -> None:
        if args and args[0] in ("disabled", "gone"):
            self.events.append(args[0])


async def test_attempts_failing_together_disable_their_subscription_once() -> None:
    settings = DeliverySettings(
        delivery_per_endpoint_in_flight=8, delivery_breaker_failures=100,
        delivery_auto_disable_after_s=1,
    )  # fmt: skip
    store = SlowStore()
    failing = Subscription.create(SubscriptionRequest(url="https://partner.example/hook"))
    failing = failing.model_copy(update={"failing_since": datetime.now(UTC) - timedelta(hours=1)})
    await store.add(failing)

    async def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
        await asyncio.sleep(0)
        return Answer(500, "HTTP 500", 1.0)

    sender, recorder = make_sender(settings, store, post, EventRecorder())
    jobs = [
        Job(failing.id, f"urn:story:{i}", 1, EventType.PUBLISHED, 1, 0.0, b"{}") for i in range(8)
    ]
    await sender.dispatch(jobs, lambda: None)
    await sender.drain()

    stored = await store.get(failing.id)
    assert stored is not None and stored.status == "disabled"
    assert isinstance(recorder, EventRecorder) and recorder.events == ["disabled"]
