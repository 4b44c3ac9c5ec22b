"""The services' producer against the real broker: records opened on several partitions within
one linger window go out together, in one produce request (aiokafka alone sends each
partition's batch when its own linger is over)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from bench.linger import produce_requests
from shared.events import Topics
from shared.kafka import linger_together, make_producer
from shared.settings import NewsflowSettings
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration

LINGER_MS = 300
PARTITIONS = 6


async def one_record_a_partition(producer: AIOKafkaProducer, topic: str) -> None:
    """A record on each partition, a few milliseconds apart, all within one linger."""
    acks = []
    for partition in range(PARTITIONS):
        acks.append(await producer.send(topic, b"story %d" % partition, partition=partition))
        await asyncio.sleep(0.01)
    await asyncio.gather(*acks)


async def test_batches_of_one_window_go_in_one_request(
    kafka_bootstrap: str, topics: Topics
) -> None:
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap, kafka_linger_ms=LINGER_MS)
    ours = make_producer(settings)
    plain = make_producer(settings, windows=False)
    for producer in (ours, plain):
        await producer.start()
    try:
        ours_sent, plain_sent = produce_requests(ours), produce_requests(plain)
        await one_record_a_partition(ours, topics.ingested)
        await one_record_a_partition(plain, topics.enriched)
    finally:
        for producer in (ours, plain):
            await producer.stop()

    assert ours_sent == [PARTITIONS]
    assert len(plain_sent) > 1, "aiokafka alone sent them together: nothing left to show"
    stored = await read_records(kafka_bootstrap, topics.ingested, PARTITIONS)
    assert sorted((r.partition, r.value) for r in stored) == [
        (n, b"story %d" % n) for n in range(PARTITIONS)
    ]


async def test_a_lone_record_still_waits_its_linger(kafka_bootstrap: str, topics: Topics) -> None:
    """Each window starts with its first record: records further apart than the linger are
    each sent on their own, as without windows."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    assert linger_together(producer, 0.02)
    await producer.start()
    try:
        sent = produce_requests(producer)
        for partition in range(3):
            await (await producer.send(topics.ingested, b"alone", partition=partition))
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    assert sent == [1, 1, 1]


async def test_without_a_linger_nothing_changes() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", linger_ms=0)
    try:
        assert not linger_together(producer, 0.0)
    finally:
        await producer.stop()
