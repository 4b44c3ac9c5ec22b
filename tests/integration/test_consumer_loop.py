"""The shared consume loop: poison records go to the DLQ with the error, the rest is handled."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.events import EventMeta, EventType, Topics
from shared.kafka import DeadLetters, IncomingRecord, consume_forever, make_consumer, make_producer
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
