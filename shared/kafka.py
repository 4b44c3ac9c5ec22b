"""Kafka adapter shared by the services: producer/consumer set-up, topics, the consume loop, DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.producer.message_accumulator import BatchBuilder

from shared.events import EventMeta, Headers, InvalidEvent, TopicSpec, error_headers
from shared.logging import get_logger
from shared.metrics import ConsumerMetrics
from shared.settings import NewsflowSettings

log = get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36
# How long a service waits at shutdown for its producer to flush and close.
PRODUCER_STOP_WITHIN_S = 10.0


async def stop_producer(
    producer: AIOKafkaProducer, within_s: float = PRODUCER_STOP_WITHIN_S
) -> None:
    """Flush what is in flight and close; a stop still waiting after `within_s` is given up
    with a warning, so the service still stops (aiokafka's stop can wait forever on a broker
    that stopped answering, aio-libs/aiokafka#1101). Nothing accepted is lost by that: a record
    is reported stored only once acknowledged, and a consumer commits only after its acks.
    """
    try:
        await asyncio.wait_for(producer.stop(), within_s)
    except TimeoutError:
        log.warning("kafka producer did not stop in time; given up", within_s=within_s)


def make_producer(settings: NewsflowSettings, *, windows: bool = True) -> AIOKafkaProducer:
    """A producer that only reports success once every in-sync replica has the record, its
    partitions' batches lingering together (`linger_together`; `windows=False`: aiokafka's own
    per-partition linger, the baseline of `bench/linger.py`)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=settings.kafka_max_batch_bytes,
        compression_type=None
        if settings.kafka_compression == "none"
        else settings.kafka_compression,
        request_timeout_ms=15_000,
        partitioner=KeyPartitioner(),
    )
    if windows:
        linger_together(producer, settings.kafka_linger_ms / 1000)
    return producer


class KeyPartitioner:
    """aiokafka's default partitioner (a keyed record goes where the Java client would put it:
    murmur2 of the key), with the hash in half the time (`murmur2`); a record without a key
    goes to a random partition, as there."""

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


_MURMUR_M = 0x5BD1E995
_WORD = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a record key (the Java client's `Utils.murmur2`), the same value
    as `aiokafka.partitioner.murmur2`: ~4.5 µs for a 40-byte key instead of ~8.5 (every record
    every service writes is hashed once), its 4-byte words unpacked at once, not byte by byte.
    """
    m, mask = _MURMUR_M, 0xFFFFFFFF
    length = len(data)
    h = 0x9747B28C ^ length
    end = length & ~3
    for (k,) in _WORD.iter_unpack(data[:end]):
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    extra = length & 3
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h = ((h ^ data[end]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def linger_together(producer: AIOKafkaProducer, linger_s: float) -> bool:
    """Makes every batch opened within one linger window ready at the window's end, whatever its
    partition; False (the client's own way kept) if this aiokafka's accumulator is not the one
    this was written for.

    aiokafka lingers each partition's batch from its own first record, and sends a batch once
    its own linger is over: a steady stream keyed over 6 partitions at 1,000 records a second
    went out in ~480 produce requests a second, of about two records each. The first record of
    a window now opens it for every partition (as the Java client drains all of a node's
    partitions once one is ready): ~170 requests a second, a quarter to a third less client CPU
    a record, nearly half less broker CPU, and a shorter wait on average (a record joining a
    window late waits only for the rest of it; `bench/linger.py`). A lone record still waits
    the whole linger, as before.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    append = getattr(accumulator, "_append_batch", None)
    if linger_s <= 0 or append is None:
        return False
    window_end = 0.0

    def append_in_window(builder: BatchBuilder, tp: TopicPartition) -> Any:
        nonlocal window_end
        batch = append(builder, tp)
        opened = getattr(batch, "_ctime", None)
        if isinstance(opened, float) and hasattr(batch, "_linger_time"):
            if opened >= window_end:
                window_end = opened + linger_s
            batch._linger_time = window_end - opened
        return batch

    accumulator._append_batch = append_in_window  # type: ignore[union-attr]
    return True


class BatchedRecords:
    """Records written to `topic` a batch per partition at a time, for records nobody waits on
    one by one (delivery's attempt log: one per webhook). `append` only queues a record: the
    client's `send` costs ~8 µs a record, a record appended to a batch ~2 µs.

    One set of batches is with the broker at a time, and acknowledged before the next is
    handed on, so each partition keeps its order; records appended meanwhile wait for the next
    set, which is how batches grow with the load. A set that fails is sent again after
    `retry_s` (duplicates are possible, as at-least-once allows). `append` waits while
    `max_queued` records wait (a broker away holds up the writers, not memory); `close` waits
    for everything queued, up to `within_s`, and says how many records it gave up.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        *,
        max_queued: int = 10_000,
        retry_s: float = 1.0,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._max_queued = max_queued
        self._retry_s = retry_s
        self._queued: list[tuple[int, bytes, bytes, Headers]] = []
        self._shipping: asyncio.Task[None] | None = None
        self._taken = asyncio.Event()  # set whenever the shipper takes what is queued
        self._in_flight = 0

    async def append(self, partition: int, key: bytes, value: bytes, headers: Headers) -> None:
        while len(self._queued) >= self._max_queued:
            self._taken.clear()
            await self._taken.wait()
        self._queued.append((partition, key, value, headers))
        if self._shipping is None:
            self._shipping = asyncio.create_task(self._ship(), name=f"write {self._topic}")

    @property
    def waiting(self) -> int:
        """Records not yet acknowledged by the broker."""
        return len(self._queued) + self._in_flight

    async def flush(self) -> None:
        """Waits until every record appended so far is acknowledged."""
        while self._shipping is not None:
            await asyncio.shield(self._shipping)

    async def close(self, within_s: float = PRODUCER_STOP_WITHIN_S) -> None:
        try:
            await asyncio.wait_for(self.flush(), within_s)
        except TimeoutError:
            log.error("records not written before the stop", topic=self._topic, lost=self.waiting)
            if self._shipping is not None:
                self._shipping.cancel()

    async def _ship(self) -> None:
        try:
            while self._queued:
                records, self._queued = self._queued, []
                self._in_flight = len(records)
                self._taken.set()
                while True:
                    try:
                        await self._send(records)
                        break
                    except Exception as exc:  # the broker away, or anything else: again
                        log.warning(
                            "records not stored; sending them again",
                            topic=self._topic,
                            records=len(records),
                            error=repr(exc),
                        )
                        await asyncio.sleep(self._retry_s)
                self._in_flight = 0
        finally:
            self._shipping = None

    async def _send(self, records: list[tuple[int, bytes, bytes, Headers]]) -> None:
        producer = self._producer
        batches: dict[int, BatchBuilder] = {}
        acks: list[asyncio.Future[Any]] = []
        for partition, key, value, headers in records:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                # Full: it goes now, and the record starts the partition's next batch (an
                # empty batch takes any record).
                acks.append(await producer.send_batch(batch, self._topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        for partition, batch in batches.items():
            acks.append(await producer.send_batch(batch, self._topic, partition=partition))
        await asyncio.gather(*acks)


class FetchSpacing:
    """At least `interval_s` between two fetches of a consumer's partitions while records keep
    coming: `after_fetch` pauses them, `before_fetch` waits out the rest of the interval and
    lets them be fetched again, so the client fetches nothing in between and the next fetch
    brings whatever came meanwhile, in one response. "Keep coming": the fetch brought records
    within the interval of its start; a quiet stream (records further apart than the interval)
    is fetched at once. An interval of 0 changes nothing."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._started = -1e9  # when the last fetch began (the loop's clock)
        self._paused: list[TopicPartition] = []
        self.resting = False  # paused until `before_fetch`: nothing can arrive meanwhile

    async def before_fetch(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        if self.resting:
            wait = self._started + self.interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            assigned = consumer.assignment()  # a rebalance meanwhile may have taken some away
            consumer.resume(*(tp for tp in self._paused if tp in assigned))
            self._paused = []
            self.resting = False
        self._started = loop.time()

    def after_fetch(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], records: int
    ) -> None:
        """`records`: how many the fetch brought; `partitions`: those to keep from being
        fetched until `before_fetch` (the caller's own pauses are its business: it resumes only
        these)."""
        if not self.interval_s or not records:
            return
        if asyncio.get_running_loop().time() - self._started >= self.interval_s:
            return  # records further apart than the interval: no rest
        already = consumer.paused()
        self._paused = [tp for tp in partitions if tp not in already]
        consumer.pause(*self._paused)
        self.resting = True


def leave_from_any_generation(consumer: AIOKafkaConsumer) -> bool:
    """Makes a started group member say it leaves when it stops, whatever its generation; False
    (the client's own way kept) if this aiokafka's coordinator is not the one this was written
    for.

    aiokafka leaves only from generation 1 on, Apache Kafka's first; the embedded broker (Tansu)
    numbers a group's first generation 0. A member of it stopped without a word, and the next
    member's join waited until the broker gave up on it: a restarted enrichment or delivery
    instance sat ~20 s without work, a second `dlq replay` as long. The request names only the
    group and the member, so the generation is set to what the client checks.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    leave = getattr(coordinator, "_maybe_leave_group", None)
    if leave is None or not isinstance(getattr(coordinator, "generation", None), int):
        return False

    async def leave_generation_zero_too() -> None:
        if coordinator.generation == 0 and coordinator.member_id:  # type: ignore[union-attr]
            coordinator.generation = 1  # type: ignore[union-attr]
        await leave()

    coordinator._maybe_leave_group = leave_generation_zero_too  # type: ignore[union-attr]
    return True


class GroupConsumer(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka is untyped
    """A consumer that leaves its group when it stops, from the first generation on."""

    async def start(self) -> None:
        await super().start()
        leave_from_any_generation(self)


def make_consumer(
    settings: NewsflowSettings, topic: str | None, group_id: str, **options: Any
) -> AIOKafkaConsumer:
    """A group member that commits by hand, only once its work is durable (`options` override
    the defaults, e.g. `fetch_max_wait_ms`). `topic` None: subscribe it after `start`."""
    return GroupConsumer(
        *([] if topic is None else [topic]),
        **{
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": 500,
            "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 3_000,
            **options,
        },
    )


async def ensure_topics(bootstrap_servers: str, specs: Sequence[TopicSpec]) -> None:
    """Create the topics that are missing; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs or None) for s in specs]
        response = await admin.create_topics(new)
        for topic, code, message in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {topic}: {code} {message}")
    finally:
        await admin.close()


@dataclass(frozen=True)
class IncomingRecord:
    """A consumed record with its CloudEvents attributes already read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    meta: EventMeta
    timestamp: int  # the record's Kafka timestamp, in ms


class DeadLetters:
    """Parks poison records on `<topic>.dlq.v1`: original key, value and headers plus the error."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        dlq_topic_of: Callable[[str], str],
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._producer = producer
        self._dlq_topic_of = dlq_topic_of
        self._metrics = metrics

    async def park(self, record: ConsumerRecord[bytes, bytes] | IncomingRecord, error: str) -> None:
        headers = list(record.headers) + error_headers(
            error, record.topic, record.partition, record.offset
        )
        await self._producer.send_and_wait(
            self._dlq_topic_of(record.topic), record.value, key=record.key, headers=headers
        )
        if self._metrics:
            self._metrics.parked.labels(record.topic).inc()
        log.warning(
            "record parked on DLQ",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=error,
        )


class GroupMember(Protocol):
    """What `consume_forever` needs of a consumer group member: an `AIOKafkaConsumer`, or one
    that takes its records from elsewhere (enrichment's `TableFedMember`)."""

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def position(self, partition: TopicPartition) -> int: ...


# Handles one batch; returns once it is handed on, with what completes once the batch's output
# is durable (the producer's acks), or None when it already is.
BatchHandler = Callable[[list[IncomingRecord]], Awaitable[asyncio.Future[Any] | None]]
Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


@dataclass
class _Handed:
    """A batch handed on and not yet committed."""

    fetched: Fetched
    records: list[IncomingRecord]
    durable: asyncio.Future[Any] | None

    def done_well(self) -> bool:
        """Its output is already acknowledged."""
        durable = self.durable
        return durable is None or (
            durable.done() and not durable.cancelled() and durable.exception() is None
        )


class _Commits:
    """The batches whose output is durable, committed together, in order, at most every
    `interval_s` (0: each as soon as it is durable)."""

    def __init__(
        self, consumer: GroupMember, interval_s: float, metrics: ConsumerMetrics | None
    ) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._metrics = metrics
        self._last = asyncio.get_running_loop().time()  # at the last commit (or the start)
        self.durable: list[_Handed] = []  # the oldest first

    async def once_durable(self, handed: _Handed) -> bool:
        """Waits for the batch's acks, then commits it with the durable batches before it if
        the interval has passed since the last commit. False when its acks failed or the group
        refused the commit (`CommitFailedError` in a rebalance): the caller reads again from
        the oldest batch not committed (`rewind`) rather than ending the loop."""
        try:
            if handed.durable is not None:
                await asyncio.shield(handed.durable)  # cancelling the wait leaves the acks be
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch output not acknowledged")
            return False
        self.durable.append(handed)
        if asyncio.get_running_loop().time() - self._last < self._interval_s:
            return True
        return await self.commit()

    async def commit(self) -> bool:
        """Commits every durable batch now; False when the group refused."""
        if not self.durable:
            return True
        try:
            await self._commit()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batches not committed")
            return False
        return True

    async def _commit(self) -> None:
        assigned = self._consumer.assignment()
        offsets = {
            tp: messages[-1].offset + 1
            for handed in self.durable
            for tp, messages in handed.fetched.items()
            if tp in assigned
        }
        if offsets:
            await self._consumer.commit(offsets)
        self._last = asyncio.get_running_loop().time()
        committed, self.durable = self.durable, []
        if self._metrics:
            self._metrics.count_consumed(r.topic for handed in committed for r in handed.records)
            # Only a metric: a lookup failing (in a rebalance, say) does not undo the commit.
            with contextlib.suppress(Exception):
                await observe_lag(self._consumer, self._metrics)

    async def rewind(self, *batches: Fetched, retry_delay_s: float) -> None:
        """Reads again from the oldest batch not committed: the durable ones and these."""
        older, self.durable = [handed.fetched for handed in self.durable], []
        await _rewind_to(self._consumer, _starts(*older, *batches), retry_delay_s)


async def consume_forever(
    consumer: GroupMember,
    handle: BatchHandler,
    dead_letters: DeadLetters,
    *,
    retry_delay_s: float = 1.0,
    commit_interval_s: float = 0.0,
    metrics: ConsumerMetrics | None = None,
) -> None:
    """Poll in batches, hand each batch to `handle`, commit it only once its output is durable.

    The next batch is fetched and handled while the one before waits for its acks and its
    commit (a task of its own), so those round trips are off the records' path; batches are
    still committed in order, each only once durable, and together at most every
    `commit_interval_s` (0: each as soon as it is durable); when the stream goes quiet (a poll
    brings nothing), what is durable is committed at once. Records without valid CloudEvents
    headers go to the DLQ. If anything raises (broker or Redis down, a commit refused in a
    rebalance), reading goes back to the oldest batch not committed and tries again: nothing is
    committed that was not done. Stopping, what is durable is committed.
    """
    commits = _Commits(consumer, commit_interval_s, metrics)
    # The batch before the one being handled, with its commit: a task that waits for the
    # batch's acks, then commits it with the durable ones before it once the interval has
    # passed, while the loop fetches and handles the next batch.
    before: tuple[_Handed, asyncio.Task[bool]] | None = None
    try:
        while True:
            fetched: Fetched = await consumer.getmany(timeout_ms=500, max_records=500)
            if not fetched:
                # Quiet: what is durable is committed now, not an interval later.
                older = before[0].fetched if before is not None else {}
                done = before is None or await before[1]
                if not (done and await commits.commit()):
                    await commits.rewind(older, retry_delay_s=retry_delay_s)
                before = None
                continue
            try:
                records = await read_batch(fetched, dead_letters)
                durable = await handle(records)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch failed; rewinding to retry it")
                older = {}
                if before is not None:
                    older = before[0].fetched
                    with contextlib.suppress(Exception):
                        if await asyncio.shield(before[1]) and await commits.commit():
                            older = {}  # committed after all
                await commits.rewind(older, fetched, retry_delay_s=retry_delay_s)
                before = None
                continue
            if before is not None and not await before[1]:
                log.error("a batch was not committed; rewinding to retry it")
                await commits.rewind(before[0].fetched, fetched, retry_delay_s=retry_delay_s)
                before = None
                continue
            handed = _Handed(fetched, records, durable)
            before = (handed, asyncio.create_task(commits.once_durable(handed)))
    finally:
        # Stopping: commit what is already durable, so a restart does not handle it again.
        if before is not None:
            handed, committing = before
            if not handed.done_well():  # its acks are still out: not committed (they go on)
                committing.cancel()
            await asyncio.gather(committing, return_exceptions=True)
        with contextlib.suppress(Exception):
            await commits.commit()


def _starts(*fetches: Fetched) -> dict[TopicPartition, int]:
    """Per partition, the first offset fetched in any of these batches."""
    starts: dict[TopicPartition, int] = {}
    for fetched in fetches:
        for tp, messages in fetched.items():
            starts[tp] = min(starts.get(tp, messages[0].offset), messages[0].offset)
    return starts


async def _rewind_to(
    consumer: GroupMember, starts: dict[TopicPartition, int], retry_delay_s: float
) -> None:
    assigned = consumer.assignment()
    for tp, offset in starts.items():
        if tp in assigned:
            consumer.seek(tp, offset)
    await asyncio.sleep(retry_delay_s)


async def read_batch(batches: Fetched, dead_letters: DeadLetters) -> list[IncomingRecord]:
    """The records of one poll with their CloudEvents metadata; records without valid headers
    go to the DLQ. Partition order is kept; across partitions, the batch runs in time order."""
    records: list[IncomingRecord] = []
    for message in heapq.merge(*batches.values(), key=lambda m: m.timestamp):
        try:
            meta = EventMeta.from_headers(message.headers)
        except InvalidEvent as exc:
            await dead_letters.park(message, str(exc))
            continue
        records.append(_incoming(message, meta))
    return records


async def rewind(consumer: GroupMember, *batches: Fetched, retry_delay_s: float) -> None:
    """A batch failed (broker or Redis away): seek back to the start of these batches and pause
    before reading them again, so nothing is committed that was not done."""
    log.exception("batch failed; rewinding to retry it")
    await _rewind_to(consumer, _starts(*batches), retry_delay_s)


async def observe_lag(consumer: GroupMember, metrics: ConsumerMetrics) -> None:
    """Lag per assigned partition: the broker's high watermark minus our position."""
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            position = await consumer.position(tp)
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))


def _incoming(message: ConsumerRecord[bytes, bytes], meta: EventMeta) -> IncomingRecord:
    return IncomingRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers),
        meta=meta,
        timestamp=message.timestamp,
    )
