"""delivery's entrypoints: the story consumer (cache + fan-out into durable jobs), the sender
(jobs -> signed webhooks, retries on Kafka tiers), the embargo and cache-rebuild loops, the API."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from fastapi import Body, Depends, FastAPI, Header, Query, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from services.delivery.adapters import (
    CachedStory,
    KafkaAttemptLog,
    KafkaJobQueue,
    KafkaSubscriptionEvents,
    Poster,
    RedisDeliveryState,
    RedisStoryCache,
    scan_topic,
)
from services.delivery.domain import (
    Breaker,
    Job,
    RecentDelivery,
    RotationRequest,
    StoryCache,
    Subscription,
    SubscriptionRequest,
    SubscriptionStore,
    SubscriptionUpdate,
    endpoint_of,
    fingerprint,
    judge,
    new_secret,
    page_fingerprint,
    ping_body,
    render,
    should_hop,
    webhook_headers,
)
from services.delivery.ops_page import add_ops_routes, sample_forever
from services.delivery.reads import (
    CacheReads,
    cache_headers,
    latest_body,
    matches,
    sections_body,
)
from services.delivery.settings import DeliverySettings
from services.delivery.status_page import Pulse
from shared.events import (
    RETRY_TIERS_S,
    EventType,
    InvalidEvent,
    Story,
    Topics,
    decode_story,
    encode_attempt,
)
from shared.http import (
    NO_NATIVE_TELEMETRY,
    BearerTokens,
    Problem,
    add_health_routes,
    install_problem_handlers,
)
from shared.kafka import (
    DeadLetters,
    FetchSpacing,
    IncomingRecord,
    observe_lag,
    read_batch,
    rewind,
)
from shared.logging import get_logger
from shared.metrics import ConsumerMetrics
from shared.serve import background
from shared.ssrf import Resolver, TargetRefused, vet_target
from shared.tracing import record_context

log = get_logger(__name__)


class DeliveryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "newsflow_delivery_webhooks",
            "Webhook attempts, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "newsflow_delivery_webhook_seconds", "Webhook attempt duration", registry=self.registry
        )
        self.cached = Counter(
            "newsflow_delivery_cache_writes", "Stories written to the cache", registry=self.registry
        )
        self.cache_reads = Counter(
            "newsflow_delivery_cache_reads",
            "Story lookups on the read API, by result (hit ratio = hit / all)",
            ["result"],
            registry=self.registry,
        )
        # Lag of the story topic, and of the outbox and each retry tier: the retry backlog.
        self.consumer = ConsumerMetrics(self.registry, "delivery")
        self.deferred = Counter(
            "newsflow_delivery_deferred_jobs",
            "Jobs put back without an attempt, by reason",
            ["reason"],
            registry=self.registry,
        )


@dataclass(frozen=True)
class Outgoing:
    story: Story
    story_json: bytes
    event_type: EventType


def _cached(item: Outgoing) -> CachedStory:
    story = item.story
    return CachedStory(
        uri=story.uri,
        section_id=story.enrichment.section.id,
        # First publication time, so a correction keeps its place in the lists.
        versioncreated=(story.firstcreated or story.versioncreated).timestamp(),
        withdrawn=story.is_withdrawn or item.event_type is EventType.WITHDRAWN,
        story_json=item.story_json,
        section_name=story.enrichment.section.name,
        version=story.version,
    )


def _by_section(subscriptions: Sequence[Subscription]) -> dict[str | None, list[Subscription]]:
    """The subscriptions that may want a story of each section: those naming it, and those with
    no section filter (also under None), so a story is matched against a few, not all."""
    anyone = [s for s in subscriptions if not s.sections]
    found: dict[str | None, list[Subscription]] = {None: anyone}
    for subscription in subscriptions:
        for section_id in subscription.sections:
            found.setdefault(section_id, list(anyone)).append(subscription)
    return found


def _under_embargo(item: Outgoing, now: datetime) -> bool:
    embargo = item.story.embargoed
    return embargo is not None and embargo > now and item.event_type is not EventType.WITHDRAWN


class Fanout:
    """Turns story versions into cache writes and one durable job per matching subscription."""

    def __init__(
        self,
        cache: RedisStoryCache,
        cache_lock: asyncio.Lock,
        subscriptions: SubscriptionStore,
        state: RedisDeliveryState,
        queue: KafkaJobQueue,
        metrics: DeliveryMetrics,
    ) -> None:
        self._cache = cache
        self._cache_lock = cache_lock
        self._subscriptions = subscriptions
        self._state = state
        self._queue = queue
        self._metrics = metrics
        self._held: Sequence[Subscription] | None = None
        self._active: tuple[frozenset[str], dict[str | None, list[Subscription]]] = (
            frozenset(),
            {},
        )

    def _targets(
        self, held: Sequence[Subscription]
    ) -> tuple[frozenset[str], dict[str | None, list[Subscription]]]:
        """The active subscriptions' ids and `_by_section` of them, worked out again only when
        the store holds a new list (it keeps one until a subscription changes)."""
        if held is not self._held:
            active = [s for s in held if s.active]
            self._held, self._active = held, (frozenset(s.id for s in active), _by_section(active))
        return self._active

    async def publish(self, items: Sequence[Outgoing]) -> None:
        """Cache, then hand jobs to the outbox; returns once both are durable."""
        await self._queue.put_fanout([group for group in await self.prepare(items) if group])

    async def prepare(self, items: Sequence[Outgoing]) -> list[list[Job]]:
        """Caches the versions and marks their jobs queued (the order guard); returns each
        item's jobs, one per matching subscription, for the caller to send or hand on."""
        if not items:
            return []
        # Stories that were ever released (a withdrawal of one never released, e.g. still
        # under embargo, goes only to who got it: nobody, so nothing leaks). Looked up before
        # this batch is cached, and only for withdrawals: nothing else needs it.
        withdrawals = [i.story.uri for i in items if i.event_type is EventType.WITHDRAWN]
        released = set(await self._cache.versions(withdrawals))
        released |= {i.story.uri for i in items if i.event_type is not EventType.WITHDRAWN}
        active_ids, candidates = self._targets(await self._subscriptions.all())
        anyone = candidates.get(None, [])
        now = time.time()
        groups: list[list[Job]] = []
        for item in items:
            story, event_type = item.story, item.event_type
            targets = {
                s.id
                for s in candidates.get(story.enrichment.section.id, anyone)
                if s.wants(story, event_type)
            }
            if item.event_type is EventType.WITHDRAWN:
                # Everyone who got the story hears of its withdrawal, whatever the filters.
                got = await self._state.receivers(item.story.uri)
                if item.story.uri not in released:
                    targets = set()
                targets |= got.intersection(active_ids)  # O(who got it), not O(subscriptions)
            groups.append([
                Job(sub_id, item.story.uri, item.story.version, item.event_type, 1, now,
                    item.story_json)
                for sub_id in sorted(targets)
            ])  # fmt: skip
        # The versions cached and their jobs marked queued (the order guard): one round trip.
        queued = self._state.queued_ops([job for group in groups for job in group])
        async with self._cache_lock:
            await self._cache.apply([_cached(o) for o in items], along=queued)
        self._metrics.cached.inc(len(items))
        return groups

    async def not_overtaken(self, items: Sequence[Outgoing]) -> list[Outgoing]:
        """Drops versions older than what the cache already holds (e.g. a story withdrawn while
        it was under embargo is never released)."""
        cached = await self._cache.versions([i.story.uri for i in items])
        return [i for i in items if i.story.version >= cached.get(i.story.uri, 0)]

    async def schedule_embargoed(self, items: Sequence[Outgoing]) -> None:
        for item in items:
            assert item.story.embargoed is not None
            record = json.dumps({"type": item.event_type.value, "story": item.story_json.decode()})
            await self._state.embargo(record.encode(), item.story.embargoed.timestamp())


class StoryConsumer:
    """Reads `stories.enriched.v1`: embargoed stories wait on a durable schedule, the rest are
    cached and their first attempts start at once, in this process (no hop through the outbox).
    A record's offset is committed once every job of it is settled (delivered, dead-lettered,
    or handed on to a retry tier), so a crash re-sends (same `webhook-id`) rather than loses."""

    def __init__(
        self,
        fanout: Fanout,
        sender: Sender,
        dead_letters: DeadLetters,
        metrics: DeliveryMetrics,
        commit_interval_s: float,
        fetch_interval_s: float = 0.0,
    ) -> None:
        self._fanout = fanout
        self._sender = sender
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._commit_interval_s = commit_interval_s
        self._spacing = FetchSpacing(fetch_interval_s)

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        progress = _Progress(consumer)
        last_commit = time.monotonic()
        try:
            while True:
                await self._spacing.before_fetch(consumer)
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                self._spacing.after_fetch(
                    consumer, consumer.assignment(), sum(map(len, batches.values()))
                )
                if batches:
                    await self._take(consumer, progress, batches)
                if time.monotonic() - last_commit >= self._commit_interval_s:
                    await progress.commit()
                    await observe_lag(consumer, self._metrics.consumer)
                    last_commit = time.monotonic()
        finally:
            await self._sender.drain()
            await progress.commit()

    async def _take(
        self,
        consumer: AIOKafkaConsumer,
        progress: _Progress,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        try:
            records = await read_batch(batches, self._dead_letters)
            jobs_of = await self.handle(records)
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis or the broker away: nothing was sent, read the batch again
            await rewind(consumer, batches, retry_delay_s=1.0)
            return
        for tp, messages in batches.items():
            for message in messages:
                jobs = jobs_of.get((tp.partition, message.offset))
                if jobs:
                    await self._sender.dispatch(jobs, progress.started(tp, message.offset))
                else:
                    progress.passed(tp, message.offset)
        self._metrics.consumer.count_consumed(record.topic for record in records)

    async def handle(self, records: list[IncomingRecord]) -> dict[tuple[int, int], list[Job]]:
        """The jobs of each record, by (partition, offset); returns once they are marked
        queued and the versions cached."""
        now = datetime.now(UTC)
        ready: list[tuple[IncomingRecord, Outgoing]] = []
        held: list[Outgoing] = []
        # The record's context (trace, event id) is bound only around what logs: binding it
        # for every record cost ~6 µs a story, and nothing else in here reads it.
        debug = log.is_enabled_for(logging.DEBUG)
        for record in records:
            try:
                item = _outgoing(record.value, record.meta.type)
            except (InvalidEvent, ValueError) as exc:
                with record_context(record.meta):
                    await self._dead_letters.park(record, str(exc))
                continue
            if _under_embargo(item, now):
                held.append(item)
            else:
                ready.append((record, item))
            if debug:
                with record_context(record.meta):
                    log.debug(
                        "story received", article_uri=item.story.uri, version=item.story.version
                    )
        await self._fanout.schedule_embargoed(held)
        groups = await self._fanout.prepare([item for _, item in ready])
        return {
            (record.partition, record.offset): jobs
            for (record, _), jobs in zip(ready, groups, strict=True)
        }


def _outgoing(value: bytes | None, event_type: str) -> Outgoing:
    story = decode_story(value)
    assert value is not None
    return Outgoing(story, value, EventType(event_type))


async def release_embargoes(
    fanout: Fanout, state: RedisDeliveryState, poll_s: float, stop: asyncio.Event | None = None
) -> None:
    """Polls the embargo schedule; a story is cached and sent once its time has come."""
    while stop is None or not stop.is_set():
        try:
            due = await state.due_embargoes(time.time())
            if due:
                items = []
                for record in due:
                    found = json.loads(record)
                    items.append(_outgoing(found["story"].encode(), found["type"]))
                await fanout.publish(await fanout.not_overtaken(items))
                await state.released(due)
                log.info("embargo lifted", stories=len(items))
                continue
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis or the broker away: the schedule is still there, try again
            log.exception("embargo release failed; trying again")
        await asyncio.sleep(poll_s)


async def rebuild_cache(
    cache: RedisStoryCache, state: RedisDeliveryState, bootstrap: str, topic: str
) -> int:
    """Rebuilds the cache from the compacted story topic (last version of each uri wins);
    stories still under embargo go back on the embargo schedule instead."""
    latest: dict[str, Outgoing] = {}
    async for _, _, value, headers in scan_topic(bootstrap, topic):
        meta = dict(headers).get("ce_type")
        try:
            item = _outgoing(value, meta.decode() if meta else "")
        except (InvalidEvent, ValueError):
            continue
        seen = latest.get(item.story.uri)
        if seen is None or item.story.version >= seen.story.version:
            latest[item.story.uri] = item
    now = datetime.now(UTC)
    items = list(latest.values())
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        for item in chunk:
            if _under_embargo(item, now):
                assert item.story.embargoed is not None
                record = json.dumps(
                    {"type": item.event_type.value, "story": item.story_json.decode()}
                )
                await state.embargo(record.encode(), item.story.embargoed.timestamp())
        await cache.apply([_cached(i) for i in chunk if not _under_embargo(i, now)])
    return len(items)


async def keep_cache_built(
    cache: RedisStoryCache,
    lock: asyncio.Lock,
    rebuild: Callable[[], Awaitable[int]],
    interval_s: float,
    built: asyncio.Event,
) -> None:
    """Rebuilds the cache whenever it is found empty (at start, or Redis flushed/replaced)."""
    while True:
        try:
            if not await cache.is_built():
                async with lock:
                    started = time.perf_counter()
                    count = await rebuild()
                    await cache.mark_built()
                seconds = round(time.perf_counter() - started, 2)
                log.info("cache rebuilt", stories=count, seconds=seconds)
            built.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis or the broker away: keep checking
            log.exception("cache check failed; trying again")
        await asyncio.sleep(interval_s)


# --- The sender ----------------------------------------------------------------------------


@dataclass
class _Offsets:
    """Offsets of one partition: which are in flight, and where to resume after them."""

    in_flight: set[int] = field(default_factory=set)
    next: int = -1
    committed: int = -1

    def committable(self) -> int:
        return min(self.in_flight) if self.in_flight else self.next


class _Progress:
    """Which records of one consumer are still being worked on; commits the offsets behind
    the oldest of them (offsets behind a job still in flight wait for it)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._offsets: dict[TopicPartition, _Offsets] = {}

    def passed(self, tp: TopicPartition, offset: int) -> None:
        """Nothing (more) to do for this record."""
        self._offsets.setdefault(tp, _Offsets()).next = offset + 1

    def started(self, tp: TopicPartition, offset: int) -> Callable[[], None]:
        """The record is being worked on; call what this returns once it is settled."""
        offsets = self._offsets.setdefault(tp, _Offsets())
        offsets.in_flight.add(offset)
        offsets.next = offset + 1
        return functools.partial(offsets.in_flight.discard, offset)

    async def commit(self) -> None:
        assigned = self._consumer.assignment()
        ready = {}
        for tp, offsets in list(self._offsets.items()):
            if tp not in assigned:
                del self._offsets[tp]
                continue
            position = offsets.committable()
            if position > offsets.committed and position >= 0:
                ready[tp] = position
        if not ready:
            return
        try:
            await self._consumer.commit(ready)
        except Exception as exc:  # a rebalance: the new owner resends what was not committed
            log.warning("commit failed", error=str(exc))
            return
        for tp, position in ready.items():
            self._offsets[tp].committed = position


class _Slots:
    """A counting semaphore without a coroutine on the free path: `take()` is a plain call
    that succeeds when a slot is free (and nobody queues); otherwise `wait()` queues in FIFO
    order and `give()` hands the slot straight to the first waiter. (asyncio.Semaphore costs
    a coroutine and Python bookkeeping per acquire, and every webhook takes one.)"""

    __slots__ = ("_waiters", "free")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Until a slot is handed over (call after `take()` failed)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot, then cancelled: pass it on
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


@dataclass
class _Record:
    """The jobs of one record still running; `settled` once all are (unless one was cancelled)."""

    left: int
    settled: Callable[[], None]
    cancelled: bool = False


@dataclass(frozen=True)
class _Queued:
    """A job in an endpoint's queue: its record, the event set once it is settled, and those of
    the earlier versions of its story to the same subscription queued before it."""

    job: Job
    record: _Record
    settled: asyncio.Event
    ahead: list[asyncio.Event]


@dataclass
class _Lane:
    """One endpoint: its jobs waiting for a slot, served in order by at most the per-endpoint
    limit of worker tasks (a waiting job is an entry here, not a task of its own)."""

    queue: collections.deque[_Queued] = field(default_factory=collections.deque)
    workers: int = 0


class Sender:
    """Consumes the outbox and the retry tiers. Jobs queue per endpoint and are served by at
    most the per-endpoint limit of worker tasks (global cap, circuit breaker), so a slow
    endpoint never holds up the others; an offset is committed once every job up to it was
    settled or handed on to a retry tier."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Topics,
        subscriptions: SubscriptionStore,
        state: RedisDeliveryState,
        queue: KafkaJobQueue,
        post: Poster,
        attempt_log: KafkaAttemptLog,
        events: KafkaSubscriptionEvents,
        metrics: DeliveryMetrics,
        settings: DeliverySettings,
        dead_letters: DeadLetters,
    ) -> None:
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._subscriptions = subscriptions
        self._state = state
        self._queue = queue
        self._post = post
        self._attempt_log = attempt_log
        self._events = events
        self._metrics = metrics
        self._settings = settings
        self._schedule = settings.delivery_retry_delays_s
        self._tier_of: dict[str, int | None] = {topics.outbox: None}
        self._tier_of.update({topics.retry(t): t for t in RETRY_TIERS_S})
        self._slots = _Slots(settings.delivery_max_in_flight)
        self._records = asyncio.Semaphore(settings.delivery_max_records_in_flight)
        self._lanes: dict[str, _Lane] = {}
        # Versions of each (subscription, story) in this process's lanes, each with the event
        # set once it is settled: a correction queued behind its story waits for it here.
        self._in_lanes: dict[tuple[str, str], list[tuple[int, asyncio.Event]]] = {}
        self._endpoint_of: dict[str, str] = {}  # subscription URL -> endpoint
        self._breaker = Breaker(
            settings.delivery_breaker_failures, settings.delivery_breaker_cooldown_s
        )
        self._progress = _Progress(consumer)
        self._paused_until: dict[TopicPartition, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._marked_failing: set[str] = set()
        # Subscriptions being disabled here: attempts failing together disable one once.
        self._disabling: set[str] = set()
        self._outcomes = {
            outcome: metrics.webhooks.labels(outcome)
            for outcome in ("delivered", "failed", "gave_up")
        }

    @property
    def topics(self) -> list[str]:
        return list(self._tier_of)

    async def run(self) -> None:
        last_commit = time.monotonic()
        try:
            while True:
                self._resume_due()
                batches = await self._consumer.getmany(timeout_ms=100, max_records=1000)
                for tp, messages in batches.items():
                    await self._take(tp, messages)
                if time.monotonic() - last_commit >= self._settings.delivery_commit_interval_s:
                    await self._progress.commit()
                    await observe_lag(self._consumer, self._metrics.consumer)
                    last_commit = time.monotonic()
        finally:
            await self.drain()
            await self._progress.commit()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Gives the jobs in flight a moment to settle (at shutdown)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    async def dispatch(
        self, jobs: list[Job], settled: Callable[[], None], requeue: bool = False
    ) -> None:
        """Starts one record's jobs, one task each (waits while too many records are in
        flight); `settled` is called once every job is settled (not if one was cancelled)."""
        await self._records.acquire()
        if not jobs:
            self._records.release()
            settled()
            return
        if requeue:  # not due yet: the record's jobs go on to a slower tier together
            record = _Record(1, settled)
            self._spawn(self._settle(jobs[0], hop=jobs), record)
            return
        record = _Record(len(jobs), settled)
        limit = self._settings.delivery_per_endpoint_in_flight
        for job in jobs:
            subscription = await self._subscriptions.get(job.subscription_id)
            if subscription is None or not subscription.active:
                self._spawn(self._settle(job), record)  # settled at once, not sent
                continue
            endpoint = self._endpoint(subscription.url)
            lane = self._lanes.get(endpoint)
            if lane is None:
                lane = self._lanes[endpoint] = _Lane()
            if (
                lane.workers >= limit
                and len(lane.queue) >= self._settings.delivery_per_endpoint_queue
            ):
                # A backlog for this endpoint: park the job on a retry tier.
                self._spawn(self._settle(job, busy=True), record)
                continue
            versions = self._in_lanes.setdefault((job.subscription_id, job.story_uri), [])
            ahead = [settled for version, settled in versions if version < job.version]
            queued = _Queued(job, record, asyncio.Event(), ahead)
            versions.append((job.version, queued.settled))
            lane.queue.append(queued)
            if lane.workers < limit:
                lane.workers += 1
                task = asyncio.create_task(self._serve(endpoint, lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _endpoint(self, url: str) -> str:
        """The endpoint (breaker and lane key) of a subscription URL, parsed once per URL."""
        endpoint = self._endpoint_of.get(url)
        if endpoint is None:
            if len(self._endpoint_of) > 100_000:
                self._endpoint_of.clear()
            endpoint = self._endpoint_of[url] = endpoint_of(url)
        return endpoint

    def _spawn(self, work: Coroutine[Any, Any, None], record: _Record) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, record))

    async def _serve(self, endpoint: str, lane: _Lane) -> None:
        """One of an endpoint's workers: its jobs in order, one at a time. Cancelled only at
        shutdown (jobs still queued then are not settled: their offsets stay uncommitted)."""
        try:
            while lane.queue:
                queued = lane.queue.popleft()
                try:
                    await self._settle(queued.job, ahead=queued.ahead)
                except asyncio.CancelledError:
                    queued.record.cancelled = True
                    raise
                finally:
                    self._left_lane(queued)
                    self._job_settled(queued.record)
        finally:
            lane.workers -= 1
            if not lane.workers and not lane.queue and self._lanes.get(endpoint) is lane:
                del self._lanes[endpoint]

    def _left_lane(self, queued: _Queued) -> None:
        queued.settled.set()
        key = (queued.job.subscription_id, queued.job.story_uri)
        versions = [
            entry for entry in self._in_lanes.get(key, []) if entry[1] is not queued.settled
        ]
        if versions:
            self._in_lanes[key] = versions
        else:
            self._in_lanes.pop(key, None)

    def _resume_due(self) -> None:
        now = time.time()
        assigned = self._consumer.assignment()
        for tp, until in list(self._paused_until.items()):
            if tp not in assigned:
                del self._paused_until[tp]
            elif until <= now:
                self._consumer.resume(tp)
                del self._paused_until[tp]

    async def _take(self, tp: TopicPartition, messages: list[Any]) -> None:
        tier = self._tier_of.get(tp.topic)
        for message in messages:
            try:
                jobs = Job.from_record(message.headers, message.value)
            except (KeyError, ValueError) as exc:
                jobs = []
                await self._dead_letters.park(message, f"unreadable job: {exc}")
            if not jobs:
                self._progress.passed(tp, message.offset)
                continue
            due = jobs[0].due
            wait = due - time.time()
            if wait > 0 and not should_hop(tier, wait):
                # Not due yet: wait here without reading on (the tier is ordered by due time).
                self._consumer.seek(tp, message.offset)
                self._consumer.pause(tp)
                self._paused_until[tp] = due
                return
            await self.dispatch(jobs, self._progress.started(tp, message.offset), wait > 0)

    async def _settle(
        self,
        job: Job,
        hop: list[Job] | None = None,
        busy: bool = False,
        ahead: Sequence[asyncio.Event] = (),
    ) -> None:
        """Until the job is settled (sent, or handed on to a slower tier when `hop` or `busy`):
        if Redis or the broker is down, try again. The offset stays uncommitted meanwhile, so a
        crash here means the job is sent again after restart."""
        while True:
            try:
                if hop is not None:
                    await self._queue.put(hop)
                    return
                if busy:
                    await self._defer(job, 1.0, "endpoint_busy")
                    return
                await self._handle(job, ahead)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job not settled; trying again", webhook_id=job.message_id)
                await asyncio.sleep(1.0)

    def _done(self, record: _Record, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            record.cancelled = True
        self._job_settled(record)

    def _job_settled(self, record: _Record) -> None:
        record.left -= 1
        if record.left == 0:
            self._records.release()
            if not record.cancelled:
                record.settled()

    async def _defer(self, job: Job, wait_s: float, reason: str) -> None:
        self._metrics.deferred.labels(reason).inc()
        await self._queue.put([replace(job, due=time.time() + wait_s)])

    async def _handle(self, job: Job, ahead: Sequence[asyncio.Event] = ()) -> None:
        """`ahead`: the events of earlier versions of the story to this subscription queued
        before this job in this process (FIFO, so they are served first: waiting cannot
        deadlock)."""
        subscription = await self._subscriptions.get(job.subscription_id)
        if subscription is None or not subscription.active:
            # Deleted, paused or disabled: not sent; `recover` re-sends what was missed.
            await self._state.settled(job, None, delivered=False, dead=False)
            return
        # Version 1 has nothing before it; later versions wait for any older one still queued.
        oldest = None if job.version <= 1 else await self._state.oldest_pending(job)
        if oldest is not None and oldest < job.version and ahead:
            for settled in ahead:
                await settled.wait()
            oldest = await self._state.oldest_pending(job)  # sent by now, unless it failed
        if oldest is not None and oldest < job.version:
            # Still queued elsewhere (a retry tier, another instance): look again later.
            await self._defer(job, self._settings.delivery_order_recheck_s, "order")
            return
        endpoint = self._endpoint(subscription.url)
        open_until = self._breaker.open_until(endpoint, time.time())
        if open_until is not None:
            await self._defer(job, open_until - time.time(), "breaker")
            return
        # This runs in one of the endpoint's workers (at most the per-endpoint limit of them,
        # so the breaker is checked right before each job gets its endpoint slot). The global
        # cap counts requests on the wire, not jobs queued for a slow endpoint.
        if not self._slots.take():
            await self._slots.wait()
        try:
            await self._attempt(subscription, job, endpoint)
        finally:
            self._slots.give()

    async def _attempt(self, subscription: Subscription, job: Job, endpoint: str) -> None:
        now = datetime.now(UTC)
        body = render(subscription.format, job.event_type, now, job.story_json)
        headers = webhook_headers(subscription, job.message_id, now, body)
        answer = await self._post(subscription.url, body, headers)
        verdict = judge(
            answer,
            job.attempt,
            self._schedule,
            now,
            self._settings.delivery_retry_jitter,
            self._settings.delivery_max_retry_after_s,
        )
        delivered = verdict.outcome == "delivered"
        self._breaker.record(endpoint, delivered, time.time())
        next_at = (
            now + timedelta(seconds=verdict.delay_s)
            if verdict.outcome == "retry" and verdict.delay_s is not None
            else None
        )
        outcome: Literal["delivered", "failed", "gave_up"] = (
            "delivered" if delivered else "failed" if verdict.outcome == "retry" else "gave_up"
        )
        # Encoded once, for the attempt log and the Redis copy.
        record = encode_attempt(
            subscription_id=subscription.id,
            webhook_id=job.message_id,
            story_uri=job.story_uri,
            story_version=job.version,
            event_type=job.event_type.webhook_type,
            url=subscription.url,
            attempt=job.attempt,
            status_code=answer.status,
            outcome=outcome,
            duration_ms=answer.duration_ms,
            error=answer.error,
            attempted_at=now,
            next_retry_at=next_at,
            response_body=answer.body,
        )
        self._outcomes[outcome].inc()
        self._metrics.webhook_latency.observe(answer.duration_ms / 1000)
        await self._attempt_log.record(job.subscription_id, record)
        if delivered:
            await self._state.settled(job, record, delivered=True, dead=False)
            await self._succeeded(subscription)
            return
        with structlog.contextvars.bound_contextvars(
            subscription_id=subscription.id, article_uri=job.story_uri, webhook_id=job.message_id
        ):
            log.warning("webhook attempt failed", attempt=job.attempt, error=answer.error)
            if verdict.outcome == "retry":
                assert next_at is not None
                await self._queue.put(
                    [replace(job, attempt=job.attempt + 1, due=next_at.timestamp())]
                )
                await self._state.attempted(job.subscription_id, record)
                await self._failed(subscription, now)
                return
            await self._state.settled(job, record, delivered=False, dead=True)
            if verdict.outcome == "gone":
                await self._disable(subscription.id, "the endpoint answered 410 Gone", "gone")
            else:
                await self._failed(subscription, now)

    async def _succeeded(self, subscription: Subscription) -> None:
        if subscription.failing_since is None and subscription.id not in self._marked_failing:
            return
        self._marked_failing.discard(subscription.id)
        current = await self._subscriptions.get(subscription.id)
        if current is not None and current.failing_since is not None:
            current = await self._subscriptions.latest(subscription.id)
            if current is not None and current.failing_since is not None:
                await self._subscriptions.add(current.model_copy(update={"failing_since": None}))

    async def _failed(self, subscription: Subscription, now: datetime) -> None:
        # Decided on what this instance holds (a failing endpoint fails often); written from
        # the latest record, so an admin's change of a moment ago is not undone.
        current = await self._subscriptions.get(subscription.id)
        if current is None or not current.active:
            return
        if current.failing_since is None:
            if current.id not in self._marked_failing:
                self._marked_failing.add(current.id)
                current = await self._subscriptions.latest(subscription.id)
                if current is not None and current.active and current.failing_since is None:
                    marked = current.model_copy(update={"failing_since": now})
                    await self._subscriptions.add(marked)
            return
        failing_for = (now - current.failing_since).total_seconds()
        if failing_for >= self._settings.delivery_auto_disable_after_s:
            await self._disable(
                current.id,
                f"every attempt failed for {failing_for:.0f} s "
                f"(since {current.failing_since.isoformat()})",
                "disabled",
            )

    async def _disable(self, subscription_id: str, reason: str, kind: str) -> None:
        current = await self._subscriptions.get(subscription_id)
        if current is None or current.disabled_at is not None or subscription_id in self._disabling:
            return
        self._disabling.add(subscription_id)
        try:
            current = await self._subscriptions.latest(subscription_id)
            if current is None or current.disabled_at is not None:
                return
            disabled = current.model_copy(
                update={"disabled_at": datetime.now(UTC), "disabled_reason": reason}
            )
            await self._subscriptions.add(disabled)
            self._marked_failing.discard(subscription_id)
            await self._events.record(kind, disabled, reason)
        finally:
            self._disabling.discard(subscription_id)
        log.warning("subscription disabled", subscription_id=subscription_id, reason=reason)


# --- Operations the admin API calls --------------------------------------------------------


class Operations(Protocol):
    async def ping(self, subscription: Subscription) -> dict[str, Any]: ...

    async def attempts(self, subscription_id: str, limit: int) -> list[dict[str, Any]]: ...

    async def recover(self, subscription: Subscription, since: datetime) -> int: ...

    async def dead_letters(self, subscription_id: str) -> list[Job]: ...

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]: ...

    async def resend(self, subscription_id: str, message_ids: list[str] | None) -> int: ...

    async def record_event(self, kind: str, subscription: Subscription, reason: str) -> None: ...


class DeliveryOperations:
    def __init__(
        self,
        post: Poster,
        state: RedisDeliveryState,
        queue: KafkaJobQueue,
        events: KafkaSubscriptionEvents,
        bootstrap: str,
        stories_topic: str,
    ) -> None:
        self._post = post
        self._state = state
        self._queue = queue
        self._events = events
        self._bootstrap = bootstrap
        self._stories_topic = stories_topic

    async def ping(self, subscription: Subscription) -> dict[str, Any]:
        now = datetime.now(UTC)
        message_id = f"msg_ping_{int(now.timestamp() * 1000)}"
        body = ping_body(subscription.id, now)
        answer = await self._post(
            subscription.url, body, webhook_headers(subscription, message_id, now, body)
        )
        return {
            "webhook_id": message_id,
            "status_code": answer.status,
            "error": answer.error,
            "duration_ms": answer.duration_ms,
            "response_body": answer.body,
        }

    async def attempts(self, subscription_id: str, limit: int) -> list[dict[str, Any]]:
        return await self._state.attempts(subscription_id, limit)

    async def recover(self, subscription: Subscription, since: datetime) -> int:
        """Every story version recorded since `since` that the subscription wants, in topic
        order (one story's versions share a partition, so they go out oldest first)."""
        now = time.time()
        jobs = []
        since_ms = int(since.timestamp() * 1000)
        async for _, _, value, headers in scan_topic(
            self._bootstrap, self._stories_topic, since_ms
        ):
            meta = dict(headers).get("ce_type")
            try:
                item = _outgoing(value, meta.decode() if meta else "")
            except (InvalidEvent, ValueError):
                continue
            if subscription.wants(item.story, item.event_type):
                jobs.append(
                    Job(subscription.id, item.story.uri, item.story.version, item.event_type, 1,
                        now, item.story_json)
                )  # fmt: skip
        await self._state.queued(jobs)
        await self._queue.put(jobs)
        return len(jobs)

    async def dead_letters(self, subscription_id: str) -> list[Job]:
        return await self._state.dead_letters(subscription_id)

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]:
        return await self._state.recent(subscription_ids, limit)

    async def resend(self, subscription_id: str, message_ids: list[str] | None) -> int:
        dead = await self._state.dead_letters(subscription_id)
        chosen = [j for j in dead if message_ids is None or j.message_id in message_ids]
        jobs = [replace(j, attempt=1, due=time.time()) for j in chosen]
        await self._state.queued(jobs)
        await self._queue.put(jobs)
        await self._state.forget_dead(subscription_id, [j.message_id for j in jobs])
        return len(jobs)

    async def record_event(self, kind: str, subscription: Subscription, reason: str) -> None:
        await self._events.record(kind, subscription, reason)


# --- HTTP ----------------------------------------------------------------------------------


class SubscriptionCreated(BaseModel):
    id: str
    url: str
    sections: list[str]
    event_types: list[str]
    keywords: list[str]
    languages: list[str]
    max_urgency: int | None
    format: str
    secret: str
    created_at: datetime
    status: str


class SubscriptionView(BaseModel):
    """A subscription as listed: never with its secret."""

    id: str
    url: str
    sections: list[str]
    event_types: list[str]
    keywords: list[str]
    languages: list[str]
    max_urgency: int | None
    format: str
    description: str | None
    created_at: datetime
    status: str
    active: bool
    paused: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None


def etag_of(subscription: Subscription) -> str:
    return f'"{subscription.revision}"'


def still_as_seen(subscription: Subscription, if_match: str) -> bool:
    """Whether an `If-Match` names the subscription as stored (`*`: any; a weak tag never
    matches, RFC 9110 13.1.1)."""
    tags = {tag.strip() for tag in if_match.split(",")}
    return "*" in tags or etag_of(subscription) in tags


_ETAG = {"ETag": {"description": "The subscription's ETag now", "schema": {"type": "string"}}}
# The OpenAPI answers of the calls about one subscription (all problem+json but the 2xx).
ABOUT_ONE: dict[int | str, dict[str, Any]] = {
    200: {"headers": _ETAG},
    404: {"description": "No such subscription (`unknown_subscription`)"},
}
CHANGING_ONE: dict[int | str, dict[str, Any]] = {
    **ABOUT_ONE,
    412: {
        "description": "`If-Match` names none of the subscription's ETags: it changed since "
        "(`subscription_changed`; nothing was changed, the answer's ETag is the current one)",
        "headers": _ETAG,
    },
}

IfMatch = Annotated[
    str | None,
    Header(
        description="ETags from an earlier answer about this subscription: the change is made "
        "only if it is still as it was then (412 `subscription_changed` otherwise)."
    ),
]


def _view(subscription: Subscription, response: Response | None = None) -> dict[str, Any]:
    if response is not None:
        response.headers["ETag"] = etag_of(subscription)
    return {
        **subscription.model_dump(),
        "status": subscription.status,
        "active": subscription.active,
    }


class ResendRequest(BaseModel):
    webhook_ids: list[str] | None = None


@dataclass
class DeliveryDeps:
    cache: StoryCache
    subscriptions: SubscriptionStore
    resolve: Resolver
    operations: Operations
    background: list[Awaitable[None]]
    ready: Callable[[], Awaitable[bool]]


DepsFactory = Callable[[DeliveryMetrics], AbstractAsyncContextManager[DeliveryDeps]]


class DepsStatus:
    """What the /ops page reads, from the service's own ports."""

    def __init__(self, deps: DeliveryDeps) -> None:
        self._deps = deps

    async def subscriptions(self) -> Sequence[Subscription]:
        return await self._deps.subscriptions.all()

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]:
        # Dead letters counted, not read: a partner down for a day has thousands, each with its
        # story; all subscriptions in a round trip or a few, where each took two.
        return await self._deps.operations.recent(subscription_ids, limit)

    async def sections(self) -> list[str]:
        return [str(section["id"]) for section in await self._deps.cache.sections()]

    async def latest(self, section_id: str, limit: int) -> list[bytes]:
        stories, _ = await self._deps.cache.latest(section_id, limit, None)
        return stories


def deps_of(request: Request) -> DeliveryDeps:
    deps: DeliveryDeps = request.app.state.deps
    return deps


async def get_deps(request: Request) -> DeliveryDeps:
    # async: a plain `def` dependency would cost every request a hop through the thread pool.
    return deps_of(request)


def admin_only(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    admin: BearerTokens = request.app.state.admin
    admin.check(authorization)


Deps = Annotated[DeliveryDeps, Depends(get_deps)]


def _etagged(body: bytes, etag: str, if_none_match: str | None, max_age: int) -> Response:
    headers = cache_headers(etag, max_age)
    if matches(etag, if_none_match):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@contextmanager
def read_from_the_broker() -> Iterator[None]:
    """503 (retry later) when the subscriptions cannot be read up to now: the broker away."""
    try:
        yield
    except (TimeoutError, KafkaError) as exc:
        raise Problem(
            503,
            "unavailable",
            "the subscriptions cannot be read from the broker now; retry later",
            headers={"Retry-After": "5"},
        ) from exc


def create_app(settings: DeliverySettings, open_deps: DepsFactory) -> FastAPI:
    metrics = DeliveryMetrics()
    tasks: list[asyncio.Task[None]] = []
    admin = [Depends(admin_only)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_deps(metrics) as deps, AsyncExitStack() as stack:
            app.state.deps = deps
            for i, work in enumerate(deps.background):
                tasks.append(await stack.enter_async_context(background(work, f"delivery-{i}")))
            sampler = sample_forever(pulse, metrics.registry, "delivery")
            await stack.enter_async_context(background(sampler, "status-sampler"))
            yield

    app = FastAPI(
        title="newsflow delivery",
        version="1",
        description="Subscriptions for signed webhooks, and the latest-news cache.",
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    install_problem_handlers(app)
    app.state.admin = BearerTokens([settings.admin_token])
    # Added before the health routes' request metrics, so it runs inside them.
    app.add_middleware(
        CacheReads,
        max_age=settings.cache_max_age_s,
        on_story_hit=metrics.cache_reads.labels("hit").inc,
        on_story_miss=metrics.cache_reads.labels("miss").inc,
    )

    async def is_ready() -> bool:
        deps: DeliveryDeps | None = getattr(app.state, "deps", None)
        running = bool(tasks) and not any(t.done() for t in tasks)
        return deps is not None and running and await deps.ready()

    add_health_routes(app, metrics.registry, is_ready, topics=settings.topics)
    pulse = Pulse()
    add_ops_routes(app, settings.admin_token, lambda r: DepsStatus(deps_of(r)), pulse)

    async def vetted(url: str, deps: DeliveryDeps) -> None:
        try:
            await vet_target(url, deps.resolve, settings.delivery_allow_private_targets)
        except TargetRefused as exc:
            raise Problem(
                422, "webhook_url_refused", str(exc), errors=[{"field": "url", "message": str(exc)}]
            ) from exc

    async def found(
        subscription_id: str, deps: DeliveryDeps, if_match: str | None = None
    ) -> Subscription:
        """The subscription as stored now: one created or changed through another instance a
        moment ago is found as it is, and a change made from it undoes nothing. `if_match`:
        the ETags the caller's change was made against (412 if none is the stored one)."""
        with read_from_the_broker():
            subscription = await deps.subscriptions.latest(subscription_id)
        if subscription is None:
            raise Problem(404, "unknown_subscription", f"no subscription {subscription_id}")
        if if_match is not None and not still_as_seen(subscription, if_match):
            raise Problem(
                412,
                "subscription_changed",
                f"{subscription_id} changed since that ETag was given: read it again "
                "(the answer's ETag is the current one) and make the change against that",
                headers={"ETag": etag_of(subscription)},
            )
        return subscription

    @app.post(
        "/v1/subscriptions", status_code=201, response_model=SubscriptionCreated,
        dependencies=admin,
    )  # fmt: skip
    async def create_subscription(
        body: SubscriptionRequest, deps: Deps, response: Response
    ) -> dict[str, Any]:
        """Subscribe a webhook endpoint; the answer holds the signing secret (shown once)."""
        await vetted(body.url, deps)
        subscription = Subscription.create(body)
        await deps.subscriptions.add(subscription)
        log.info("subscription created", subscription_id=subscription.id)
        return _view(subscription, response)

    @app.get(
        "/v1/subscriptions",
        response_model=dict[str, list[SubscriptionView]],
        dependencies=admin,
    )
    async def list_subscriptions(deps: Deps) -> dict[str, Any]:
        with read_from_the_broker():  # those created through another instance a moment ago too
            await deps.subscriptions.read_to_now()
        return {"items": [_view(s) for s in await deps.subscriptions.all()]}

    @app.post("/v1/subscriptions/reseal", dependencies=admin)
    async def reseal(deps: Deps) -> dict[str, int]:
        """Writes again every subscription whose signing secrets are stored in plain text or
        sealed with an older key, sealed with the first key of NEWSFLOW_DELIVERY_SECRETS_KEY:
        after a key rotation, the old key can be dropped once this has run (the next start
        logs how many are left, if any). It starts from the topic as it is when called; run it
        while no one else changes subscriptions (a change at that very moment could be lost)."""
        with read_from_the_broker():
            resealed = await deps.subscriptions.reseal()
        log.info("subscriptions resealed", subscriptions=resealed)
        return {"resealed": resealed}

    @app.get(
        "/v1/subscriptions/{subscription_id}",
        response_model=SubscriptionView,
        dependencies=admin,
        responses=ABOUT_ONE,
    )
    async def get_subscription(
        subscription_id: str, deps: Deps, response: Response
    ) -> dict[str, Any]:
        """The subscription, with its ETag: send it back as `If-Match` with a change to have
        the change refused (412) if someone else changed the subscription meanwhile."""
        return _view(await found(subscription_id, deps), response)

    @app.patch(
        "/v1/subscriptions/{subscription_id}",
        response_model=SubscriptionView,
        dependencies=admin,
        responses=CHANGING_ONE,
    )
    async def update_subscription(
        subscription_id: str,
        change: SubscriptionUpdate,
        deps: Deps,
        response: Response,
        if_match: IfMatch = None,
    ) -> dict[str, Any]:
        """Changes the fields sent, the others stay as they are."""
        subscription = await found(subscription_id, deps, if_match)
        if change.url is not None:
            await vetted(change.url, deps)
        updated = subscription.updated(change)
        await deps.subscriptions.add(updated)
        return _view(updated, response)

    @app.delete(
        "/v1/subscriptions/{subscription_id}",
        status_code=204,
        dependencies=admin,
        responses={k: v for k, v in CHANGING_ONE.items() if k != 200},
    )
    async def delete_subscription(
        subscription_id: str, deps: Deps, if_match: IfMatch = None
    ) -> Response:
        if if_match is not None:
            await found(subscription_id, deps, if_match)
        with read_from_the_broker():
            removed = await deps.subscriptions.remove(subscription_id)
        if not removed:
            raise Problem(404, "unknown_subscription", f"no subscription {subscription_id}")
        return Response(status_code=204)

    @app.post(
        "/v1/subscriptions/{subscription_id}/pause",
        response_model=SubscriptionView,
        dependencies=admin,
        responses=CHANGING_ONE,
    )
    async def pause(
        subscription_id: str, deps: Deps, response: Response, if_match: IfMatch = None
    ) -> dict[str, Any]:
        """Stop sending; what is published meanwhile can be re-sent with `recover`."""
        subscription = await found(subscription_id, deps, if_match)
        paused = subscription.model_copy(update={"paused": True})
        await deps.subscriptions.add(paused)
        return _view(paused, response)

    @app.post(
        "/v1/subscriptions/{subscription_id}/resume",
        response_model=SubscriptionView,
        dependencies=admin,
        responses=CHANGING_ONE,
    )
    async def resume(
        subscription_id: str, deps: Deps, response: Response, if_match: IfMatch = None
    ) -> dict[str, Any]:
        """Send again; also re-enables a subscription that was disabled."""
        subscription = await found(subscription_id, deps, if_match)
        resumed = subscription.model_copy(
            update={"paused": False, "disabled_at": None, "disabled_reason": None,
                    "failing_since": None}
        )  # fmt: skip
        await deps.subscriptions.add(resumed)
        if subscription.disabled_at is not None:
            await deps.operations.record_event("enabled", resumed, "re-enabled by an admin")
        return _view(resumed, response)

    @app.post(
        "/v1/subscriptions/{subscription_id}/rotate-secret",
        dependencies=admin,
        responses=CHANGING_ONE,
    )
    async def rotate_secret(
        subscription_id: str,
        deps: Deps,
        response: Response,
        body: Annotated[RotationRequest | None, Body()] = None,
        if_match: IfMatch = None,
    ) -> dict[str, Any]:
        """A new secret; the old one keeps signing (both signatures sent) during the overlap."""
        request = body or RotationRequest()
        subscription = await found(subscription_id, deps, if_match)
        overlap = request.overlap_s
        if overlap is None:
            overlap = settings.delivery_rotation_overlap_s
        now = datetime.now(UTC)
        rotated = subscription.rotated(
            request.secret or new_secret(), timedelta(seconds=overlap), now
        )
        await deps.subscriptions.add(rotated)
        response.headers["ETag"] = etag_of(rotated)
        return {
            "id": rotated.id,
            "secret": rotated.secret,
            "previous_secret_expires_at": rotated.previous_secret_expires_at,
        }

    @app.post("/v1/subscriptions/{subscription_id}/test", dependencies=admin)
    async def test_ping(subscription_id: str, deps: Deps) -> dict[str, Any]:
        """Sends a signed `ping` now and says what the endpoint answered."""
        return await deps.operations.ping(await found(subscription_id, deps))

    @app.get("/v1/subscriptions/{subscription_id}/attempts", dependencies=admin)
    async def attempts(
        subscription_id: str, deps: Deps, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        """The latest attempts, newest first (the full log is `deliveries.attempts.v1`)."""
        await found(subscription_id, deps)
        return {"items": await deps.operations.attempts(subscription_id, limit)}

    @app.post("/v1/subscriptions/{subscription_id}/recover", status_code=202, dependencies=admin)
    async def recover(subscription_id: str, since: datetime, deps: Deps) -> dict[str, Any]:
        """Re-sends every matching story version published since `since` (ISO 8601)."""
        subscription = await found(subscription_id, deps)
        if not subscription.active:
            raise Problem(
                409, "subscription_not_active", f"resume {subscription_id} before recovering"
            )
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return {"queued": await deps.operations.recover(subscription, since)}

    @app.get("/v1/subscriptions/{subscription_id}/dead-letters", dependencies=admin)
    async def dead_letters(subscription_id: str, deps: Deps) -> dict[str, Any]:
        """Messages whose every attempt failed (or that met a 410)."""
        await found(subscription_id, deps)
        jobs = await deps.operations.dead_letters(subscription_id)
        return {
            "items": [
                {"webhook_id": j.message_id, "story_uri": j.story_uri, "version": j.version,
                 "type": j.event_type.webhook_type, "attempts": j.attempt}
                for j in jobs
            ]
        }  # fmt: skip

    @app.post(
        "/v1/subscriptions/{subscription_id}/dead-letters/resend",
        status_code=202,
        dependencies=admin,
    )
    async def resend(
        subscription_id: str, deps: Deps, body: Annotated[ResendRequest | None, Body()] = None
    ) -> dict[str, Any]:
        """Queues dead letters again with a fresh attempt schedule (all, or the ids given)."""
        await found(subscription_id, deps)
        ids = body.webhook_ids if body else None
        return {"queued": await deps.operations.resend(subscription_id, ids)}

    @app.get("/v1/latest", responses={200: {"description": '`{"items": [Story], "next": …}`'}})
    async def latest(
        deps: Deps,
        section: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        before: Annotated[float | None, Query(description="`next` of the previous page")] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        """The newest stories first, across all sections or in one section (its taxonomy id)."""
        stories, cursor = await deps.cache.latest_tagged(
            section.lower() if section else None, limit, before
        )
        body = latest_body([s.body for s in stories], cursor)
        etag = page_fingerprint(stories, cursor)
        return _etagged(body, etag, if_none_match, settings.cache_max_age_s)

    @app.get("/v1/sections")
    async def sections(
        deps: Deps, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        """Sections that have stories in the cache, with how many."""
        body = sections_body(await deps.cache.sections())
        return _etagged(body, fingerprint(body), if_none_match, settings.cache_max_age_s)

    @app.get("/v1/stories/{uri:path}", responses={200: {"description": "A Story"}})
    async def story(
        uri: str, deps: Deps, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        """One story by its uri (URL-encoded); 404 when unknown or withdrawn."""
        found = await deps.cache.story_tagged(uri)
        metrics.cache_reads.labels("miss" if found is None else "hit").inc()
        if found is None:
            raise Problem(404, "unknown_story", f"no live story with uri {uri}")
        return _etagged(found.body, found.etag, if_none_match, settings.cache_max_age_s)

    return app
