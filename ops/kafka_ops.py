"""What the ops CLI reads from and does to Kafka: consumer lag, DLQ contents and replay."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
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


class BrokerSilent(RuntimeError):
    """The broker sent none of the records a topic holds for `STALL_S`."""


STALL_S = 10.0


async def _batches_to_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], limit: int
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The records from each assigned partition's position up to its end as of the call, a
    fetch at a time, at most `limit` of them: done when every partition is read to that end,
    not after a quiet spell (records parked meanwhile wait for the next run)."""
    ends = await consumer.end_offsets(tps)
    behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
    left = limit
    heard = time.monotonic()
    while behind and left > 0:
        batches = await consumer.getmany(*behind, timeout_ms=500, max_records=left)
        if batches:
            heard = time.monotonic()
        elif time.monotonic() - heard > STALL_S:
            raise BrokerSilent(
                f"no records from {tps[0].topic} for {STALL_S:.0f} s, "
                f"{len(behind)} partition(s) not read to their end"
            )
        for records in batches.values():
            left -= len(records)
            yield records
        behind = [tp for tp in behind if await consumer.position(tp) < ends[tp]]


async def read_all(bootstrap: str, topic: str, limit: int) -> list[ConsumerRecord[bytes, bytes]]:
    """A topic's records from the beginning to its end (or the first `limit`), oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = _partitions(consumer, topic)
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            async for records in _batches_to_end(consumer, tps, limit):
                found.extend(records)
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
    records parked since the first. The partitions are assigned, not joined through the group:
    a join takes ~5 s on the embedded broker, and a second replay's waited ~20 s for the first
    (which never said it left: see `shared.kafka.leave_from_any_generation`).
    """
    consumer = AIOKafkaConsumer(
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
        tps = _partitions(consumer, dlq_topic)
        if not tps:
            return 0
        consumer.assign(tps)
        async for records in _batches_to_end(consumer, tps, limit):
            for record in records:
                on_record(parked(record))
                if not dry_run:
                    await _send_back(producer, record)
                replayed += 1
            if records and not dry_run:
                last = records[-1]
                await consumer.commit({TopicPartition(last.topic, last.partition): last.offset + 1})
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
