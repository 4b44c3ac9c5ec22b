"""The shared consume loop: poison records go to the DLQ with the error, the rest is handled."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from shared.events import EventMeta, EventType, Topics
from shared.kafka import DeadLetters, IncomingRecord, consume_forever, make_consumer, make_producer
from shared.metrics import ConsumerMetrics
from shared.settings import NewsflowSettings
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration


async def test_poison_goes_to_dlq_and_good_records_are_handled_and_committed(
    kafka_bootstrap: str, topics: Topics, prefix: str
) -> None:
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    producer = make_producer(settings)
    await producer.start()
    good = EventMeta.new(EventType.PUBLISHED, "urn:test")
    await producer.send_and_wait(
        topics.ingested, b'{"ok":1}', key=b"urn:a", headers=good.to_headers()
    )
    await producer.send_and_wait(
        topics.ingested, b"garbage", key=b"urn:b", headers=[("x-origin", b"someone")]
    )
    handled: list[IncomingRecord] = []
    done = asyncio.Event()

    async def handle(records: list[IncomingRecord]) -> None:
        handled.extend(records)
        done.set()

    consumer = make_consumer(settings, topics.ingested, f"{prefix}group")
    await consumer.start()
    task = asyncio.create_task(consume_forever(consumer, handle, DeadLetters(producer, topics.dlq)))
    try:
        parked = await read_records(kafka_bootstrap, topics.dlq(topics.ingested), 1, within_s=30)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        partitions = consumer.assignment()
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        await consumer.stop()
        await producer.stop()

    assert [r.meta.id for r in handled] == [good.id]
    [poison] = parked
    headers = dict(poison.headers)
    assert poison.value == b"garbage"
    assert poison.key == b"urn:b"
    assert headers["x-origin"] == b"someone"
    assert b"missing CloudEvents headers" in headers["newsflow_error"]
    assert headers["newsflow_original_topic"] == topics.ingested.encode()
    assert sum(offset or 0 for offset in committed.values()) == 2


async def test_a_batch_is_committed_only_once_durable_and_read_again_when_it_is_not(
    kafka_bootstrap: str, topics: Topics, prefix: str
) -> None:
    # The loop hands on the next batch while the one before waits for its acks; a batch whose
    # acks fail is read again (with everything after it), and nothing is committed before.
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    producer = make_producer(settings)
    await producer.start()
    loop = asyncio.get_running_loop()
    first_acks: asyncio.Future[None] = loop.create_future()
    handled: list[list[bytes | None]] = []
    calls = asyncio.Queue[int]()

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        handled.append([r.key for r in records])
        calls.put_nowait(len(handled))
        if len(handled) == 1:
            return first_acks  # the first batch's acks: still out
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        return done

    async def publish(key: bytes) -> None:
        meta = EventMeta.new(EventType.PUBLISHED, "urn:test")
        await producer.send_and_wait(topics.ingested, b"{}", key=key, headers=meta.to_headers())

    async def committed() -> int:
        return sum([await consumer.committed(tp) or 0 for tp in consumer.assignment()])

    consumer = make_consumer(settings, topics.ingested, f"{prefix}group")
    await consumer.start()
    task = asyncio.create_task(
        consume_forever(consumer, handle, DeadLetters(producer, topics.dlq), retry_delay_s=0.1)
    )
    try:
        await publish(b"urn:a")
        assert await asyncio.wait_for(calls.get(), 30) == 1
        await publish(b"urn:b")
        # The second batch is handled while the first still waits for its acks ...
        assert await asyncio.wait_for(calls.get(), 30) == 2
        await asyncio.sleep(1.0)
        # ... and nothing is committed meanwhile.
        assert await committed() == 0
        first_acks.set_exception(RuntimeError("broker gone"))
        while sum(len(keys) for keys in handled) < 4:
            await asyncio.wait_for(calls.get(), 30)
        await asyncio.sleep(1.0)  # the next poll commits the last batch
        assert await committed() == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()
        await producer.stop()

    assert handled[:2] == [[b"urn:a"], [b"urn:b"]]
    # Read again from the failed batch on: both stories, in order.
    assert [key for keys in handled[2:] for key in keys] == [b"urn:a", b"urn:b"]


async def test_with_a_commit_interval_what_is_durable_is_committed_when_quiet_and_at_stop(
    kafka_bootstrap: str, topics: Topics, prefix: str
) -> None:
    # An interval far longer than the test: every commit seen here is one the loop makes when
    # the stream goes quiet or when it stops, and a restart reads on from there.
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    producer = make_producer(settings)
    await producer.start()
    loop = asyncio.get_running_loop()
    handled: list[bytes | None] = []
    more = asyncio.Event()

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        handled.extend(r.key for r in records)
        more.set()
        acks: asyncio.Future[None] = loop.create_future()
        acks.set_result(None)
        return acks

    async def publish(*keys: bytes) -> None:
        for key in keys:
            meta = EventMeta.new(EventType.PUBLISHED, "urn:test")
            await producer.send_and_wait(topics.ingested, b"{}", key=key, headers=meta.to_headers())

    async def handled_up_to(count: int) -> None:
        while len(handled) < count:
            more.clear()
            await asyncio.wait_for(more.wait(), 30)

    async def committed(consumer: AIOKafkaConsumer) -> int:
        return sum([await consumer.committed(tp) or 0 for tp in consumer.assignment()])

    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, "test")

    async def started(group_member: AIOKafkaConsumer) -> asyncio.Task[None]:
        await group_member.start()
        dead_letters = DeadLetters(producer, topics.dlq)
        return asyncio.create_task(
            consume_forever(
                group_member, handle, dead_letters, commit_interval_s=3600, metrics=metrics
            )
        )

    def consumed() -> float | None:
        labels = {"topic": topics.ingested}
        return registry.get_sample_value("newsflow_test_records_consumed_total", labels)

    group = f"{prefix}group"
    consumer = make_consumer(settings, topics.ingested, group)
    task = await started(consumer)
    try:
        await publish(b"urn:a", b"urn:b")
        await handled_up_to(2)
        for _ in range(300):  # the stream is quiet now: committed within a poll or two
            if await committed(consumer) == 2:
                break
            await asyncio.sleep(0.1)
        assert await committed(consumer) == 2
        await publish(b"urn:c", b"urn:d")
        await handled_up_to(4)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await committed(consumer) == 4
    assert consumed() == 4  # counted as committed
    await consumer.stop()

    # Started again: from what was committed, nothing handled a second time.
    restarted = make_consumer(settings, topics.ingested, group)
    task = await started(restarted)
    try:
        await publish(b"urn:e")
        await handled_up_to(5)
        await asyncio.sleep(1.0)  # time enough to read anything not committed again
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await restarted.stop()
        await producer.stop()
    assert handled == [b"urn:a", b"urn:b", b"urn:c", b"urn:d", b"urn:e"]
    assert consumed() == 5


async def test_a_member_that_stops_leaves_so_the_next_takes_every_partition_before_its_session_ends(
    kafka_bootstrap: str, topics: Topics, prefix: str
) -> None:
    """Not timed out by the broker: told. (The embedded broker's first generation is 0, from
    which aiokafka alone would not say it leaves: the next member waited ~20 s.)"""
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    session_s = 10.0  # make_consumer's session timeout

    async def member_with_partitions() -> AIOKafkaConsumer:
        consumer = make_consumer(settings, topics.ingested, f"{prefix}leaving")
        await consumer.start()
        for _ in range(400):
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        return consumer

    first = await member_with_partitions()
    assert len(first.assignment()) == 6
    await first.stop()
    stopped = time.monotonic()

    second = await member_with_partitions()
    try:
        assert len(second.assignment()) == 6
        assert time.monotonic() - stopped < session_s
    finally:
        await second.stop()
