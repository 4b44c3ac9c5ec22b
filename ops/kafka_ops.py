"""What the ops CLI reads from and does to Kafka: consumer lag, DLQ contents and replay."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

DLQ_HEADER_PREFIX = "newsflow_"
REPLAY_GROUP = "newsflow-dlq-replay"


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


@dataclass(frozen=True)
class ParkedRecord:
    partition: int
    offset: int
    key: str
    error: str
    original: str
    size: int


def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def group_lag(bootstrap: str, group: str, topic: str) -> GroupLag:
    """Committed offsets read with a consumer of that group (the admin call breaks on Tansu)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = _partitions(consumer, topic)
        ends = await consumer.end_offsets(tps) if tps else {}
        committed = 0
        for tp in tps:
            committed += await consumer.committed(tp) or 0
        return GroupLag(group, topic, committed, sum(ends.values()))
    finally:
        await consumer.stop()


async def topic_size(bootstrap: str, topic: str) -> int:
    """Records currently held (end minus beginning offsets, over all partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = _partitions(consumer, topic)
        if not tps:
            return 0
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


async def read_all(
    bootstrap: str, topic: str, limit: int, idle_s: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Reads a topic from the beginning until `limit` records or `idle_s` without new ones."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        quiet_since = time.monotonic()
        while len(found) < limit and time.monotonic() - quiet_since < idle_s:
            batches = await consumer.getmany(timeout_ms=300, max_records=limit - len(found))
            for records in batches.values():
                found.extend(records)
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return sorted(found, key=lambda r: (r.timestamp, r.partition, r.offset))


def parked(record: ConsumerRecord[bytes, bytes]) -> ParkedRecord:
    headers = {name: value.decode(errors="replace") for name, value in record.headers}
    original = (
        f"{headers.get('newsflow_original_topic', '?')}"
        f"[{headers.get('newsflow_original_partition', '?')}]"
        f"@{headers.get('newsflow_original_offset', '?')}"
    )
    return ParkedRecord(
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode(errors="replace") if record.key else "",
        error=headers.get("newsflow_error", ""),
        original=original,
        size=len(record.value or b""),
    )


async def replay(
    bootstrap: str,
    dlq_topic: str,
    *,
    limit: int,
    dry_run: bool,
    on_record: Callable[[ParkedRecord], None] = lambda _: None,
) -> int:
    """Puts parked records back on their original topic, without the DLQ headers.

    Progress is committed in the `newsflow-dlq-replay` group, so a second replay only sends
    records parked since the first.
    """
    consumer = AIOKafkaConsumer(
        dlq_topic,
        bootstrap_servers=bootstrap,
        group_id=REPLAY_GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    replayed = 0
    try:
        quiet_since = time.monotonic()
        while replayed < limit and time.monotonic() - quiet_since < 3.0:
            batches = await consumer.getmany(timeout_ms=500, max_records=limit - replayed)
            for records in batches.values():
                quiet_since = time.monotonic()
                for record in records:
                    on_record(parked(record))
                    if not dry_run:
                        await _send_back(producer, record)
                    replayed += 1
            if batches and not dry_run:
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    return replayed


async def _send_back(producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes]) -> None:
    headers = dict(record.headers)
    target = headers.get("newsflow_original_topic")
    if not target:
        raise ValueError(f"DLQ record {record.partition}@{record.offset} names no original topic")
    original_headers = [
        (name, value) for name, value in record.headers if not name.startswith(DLQ_HEADER_PREFIX)
    ]
    await producer.send_and_wait(
        target.decode(), record.value, key=record.key, headers=original_headers
    )
