"""Partitions added to the ingested topic while enrichment runs: the story table reads them too,
from the beginning, once the group hands one to its member or a record of one is to be enriched,
and goes on with the others where it was (nothing read twice, nothing skipped).

The embedded broker cannot add partitions to a topic (no CreatePartitions), so the table starts
believing the topic has only its first three: what it sees on Apache Kafka after
`kafka-topics --alter --partitions 6`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from services.enrichment.adapters import KafkaStoryTable
from services.enrichment.index import Features
from shared.events import Article, EventMeta, EventType, Topics, encode
from shared.kafka import IncomingRecord
from tests.factories import article_payload

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
FIRST_PARTITIONS = {0, 1, 2}


async def publish(producer: AIOKafkaProducer, topic: str, partition: int, n: int) -> IncomingRecord:
    article = Article.model_validate(
        article_payload(uri=f"urn:test:p{partition}:{n}", versioncreated=T0 + timedelta(minutes=n))
    )
    meta = EventMeta.new(EventType.PUBLISHED, "urn:test")
    value = encode(article)
    sent = await producer.send_and_wait(
        topic, value, key=article.uri.encode(), partition=partition, headers=meta.to_headers()
    )
    return IncomingRecord(
        topic, partition, sent.offset, article.uri.encode(), value, meta.to_headers(), meta, 0
    )


async def test_partitions_added_while_running_are_read_from_the_beginning(
    kafka_bootstrap: str, topics: Topics
) -> None:
    observed: Counter[str] = Counter()

    def observe(article: Article, features: Features | None) -> None:
        observed[article.uri] += 1

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    table = KafkaStoryTable(kafka_bootstrap, topics.ingested, observe, fetch_max_wait_ms=10)

    async def partitions_of_topic() -> set[int]:  # 3 at the start, 6 once grown
        return FIRST_PARTITIONS if not table.rebuilt else set(range(6))

    table._partitions_of_topic = partitions_of_topic  # type: ignore[method-assign]
    reader: asyncio.Task[None] | None = None
    try:
        for n in range(6):
            await publish(producer, topics.ingested, n % 6, n)  # one on each partition
        await table.start()
        reader = asyncio.create_task(table.run())
        await asyncio.wait_for(table.wait_rebuilt(), 20)
        await asyncio.sleep(0.5)
        assert set(observed) == {f"urn:test:p{p}:{p}" for p in FIRST_PARTITIONS}

        # A story arrives on partition 4, which the table has never read, and is to be enriched.
        later = await publish(producer, topics.ingested, 4, 10)
        await publish(producer, topics.ingested, 0, 11)

        async def enrich_when_read() -> list[IncomingRecord]:
            return [record async for record in table.each_once_read([later])]

        assert await asyncio.wait_for(enrich_when_read(), 20) == [later]
        await asyncio.sleep(0.5)
        # Every new partition (3 to 5) from its beginning; 0 to 2 went on where they were.
        expected = {f"urn:test:p{n % 6}:{n}" for n in range(6)} | {
            "urn:test:p4:10",
            "urn:test:p0:11",
        }
        assert set(observed) == expected
        assert set(observed.values()) == {1}

        # The group hands partition 5 to this instance's member: the table already reads it.
        table.follow([5])
        assert table._to_follow == set()
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await table.stop()
        await producer.stop()
