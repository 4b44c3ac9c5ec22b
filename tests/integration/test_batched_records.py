"""The attempt log's writer against the real broker: what an internal team reading
`deliveries.attempts.v1` sees, written a batch per partition at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from services.delivery.adapters import KafkaAttemptLog
from shared.events import Topics
from shared.kafka import BatchedRecords, make_producer
from shared.settings import NewsflowSettings
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """The services' producer, with 4 KiB batches: a set of records fills several."""
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap, kafka_max_batch_bytes=4096)
    producer = make_producer(settings)
    await producer.start()
    yield producer
    await producer.stop()


async def test_every_record_arrives_in_order_per_partition(
    kafka_bootstrap: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    # A full batch goes at once and the record starts the partition's next one; at most 50
    # records wait while a set is with the broker.
    records = BatchedRecords(producer, topics.attempts, max_queued=50)
    for n in range(600):
        headers = [("ce_id", f"id-{n}".encode())]
        await records.append(n % 3, f"sub-{n % 7}".encode(), b"x" * n, headers)
    await records.flush()
    assert records.waiting == 0
    await records.close()

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
    kafka_bootstrap: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    log = KafkaAttemptLog(producer, topics.attempts, "test:delivery")
    for n in range(40):
        await log.record(f"sub_{n % 4}", b'{"n": %d}' % n)
    await log.flush()
    await log.close()
    partitions = len(await producer.partitions_for(topics.attempts))

    found = await read_records(kafka_bootstrap, topics.attempts, 40)
    assert len(found) == 40
    for record in found:
        headers = dict(record.headers)
        assert headers["ce_type"] == b"newsflow.delivery.attempted"
        assert headers["ce_source"] == b"test:delivery"
        # Where a plain keyed send would put it (the Java client's murmur2 partitioner).
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % partitions
    assert sorted(int(r.value[6:-1]) for r in found) == list(range(40))


async def test_attempts_still_lingering_at_the_stop_are_written_in_order(
    kafka_bootstrap: str, topics: Topics, producer: AIOKafkaProducer
) -> None:
    log = KafkaAttemptLog(producer, topics.attempts, "test:delivery", linger_s=5.0)
    for n in range(30):
        await log.record("sub_0", b'{"n": %d}' % n)
    await log.close()  # long before the linger is over

    found = await read_records(kafka_bootstrap, topics.attempts, 30)
    assert [int(r.value[6:-1]) for r in found] == list(range(30))  # one key: one partition
