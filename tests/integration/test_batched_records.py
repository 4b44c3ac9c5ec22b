"""The attempt log's writer against the real broker: what an internal team reading
`deliveries.attempts.v1` sees, written a batch per partition at a time."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2

from services.delivery.adapters import KafkaAttemptLog
from shared.events import Topics
from shared.kafka import BatchedRecords, make_producer
from shared.settings import NewsflowSettings
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration


async def test_every_record_arrives_in_order_per_partition(
    kafka_bootstrap: str, topics: Topics
) -> None:
    producer = make_producer(NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap))
    await producer.start()
    try:
        # Small batches: a full batch goes at once and the next record starts another.
        records = BatchedRecords(producer, topics.attempts, max_queued=50)
        for n in range(600):
            headers = [("ce_id", f"id-{n}".encode())]
            await records.append(n % 3, f"sub-{n % 7}".encode(), b"x" * n, headers)
        await records.flush()
        assert records.waiting == 0
        await records.close()
    finally:
        await producer.stop()

    found = await read_records(kafka_bootstrap, topics.attempts, 600)
    assert len(found) == 600
    for partition in range(3):
        numbers = [
            int(dict(r.headers)["ce_id"].decode()[3:]) for r in found if r.partition == partition
        ]
        assert numbers == list(range(partition, 600, 3))
    by_number = {int(dict(r.headers)["ce_id"].decode()[3:]): r for r in found}
    assert by_number[42].key == b"sub-0"
    assert by_number[599].value == b"x" * 599


async def test_the_attempt_log_is_keyed_and_partitioned_like_a_keyed_send(
    kafka_bootstrap: str, topics: Topics
) -> None:
    producer = make_producer(NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap))
    await producer.start()
    try:
        log = KafkaAttemptLog(producer, topics.attempts, "test:delivery")
        for n in range(40):
            await log.record(f"sub_{n % 4}", b'{"n": %d}' % n)
        await log.flush()
        await log.close()
        partitions = len(await producer.partitions_for(topics.attempts))
    finally:
        await producer.stop()

    found = await read_records(kafka_bootstrap, topics.attempts, 40)
    assert len(found) == 40
    for record in found:
        headers = dict(record.headers)
        assert headers["ce_type"] == b"newsflow.delivery.attempted"
        assert headers["ce_source"] == b"test:delivery"
        # Where a plain keyed send would put it (the Java client's murmur2 partitioner).
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % partitions
    assert sorted(int(r.value[6:-1]) for r in found) == list(range(40))
