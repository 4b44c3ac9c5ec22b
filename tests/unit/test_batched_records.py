"""`BatchedRecords` with a broker that refuses, then recovers: nothing queued is lost, order is
kept, writers wait while too much is queued, and a stop says what it gave up."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from shared.kafka import BatchedRecords

pytestmark = pytest.mark.unit


class _Batch:
    def __init__(self, size: int) -> None:
        self.records: list[bytes] = []
        self._size = size

    def append(self, *, timestamp: Any, key: bytes, value: bytes, headers: Any) -> object:
        if len(self.records) >= self._size:
            return None
        self.records.append(value)
        return object()


class _Producer:
    """Keeps what it acknowledged per partition; refuses while `down`."""

    def __init__(self, batch_size: int = 100) -> None:
        self.stored: dict[int, list[bytes]] = {}
        self.down = False
        self.sets = 0
        self.batch_size = batch_size
        self.gate = asyncio.Event()
        self.gate.set()

    def create_batch(self) -> _Batch:
        return _Batch(self.batch_size)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.gate.wait()
        if self.down:
            ack.set_exception(KafkaConnectionError("broker away"))
        else:
            self.stored.setdefault(partition, []).extend(batch.records)
            ack.set_result(None)
        self.sets += 1
        return ack


def _records(fake: _Producer, **options: Any) -> BatchedRecords:
    return BatchedRecords(cast(AIOKafkaProducer, fake), "attempts", **options)


async def test_a_refused_set_is_sent_again_and_order_is_kept() -> None:
    fake = _Producer(batch_size=4)
    fake.down = True
    records = _records(fake, retry_s=0.01)
    with structlog.testing.capture_logs() as logs:
        for n in range(30):
            await records.append(n % 2, b"k", b"%d" % n, [])
        await asyncio.sleep(0.05)  # a few refusals
        assert records.waiting == 30
        fake.down = False
        await records.flush()
    assert records.waiting == 0
    for partition in (0, 1):
        # Refused sets may have been stored in part before; what counts is every record there,
        # in order after its last duplicate.
        values = [int(v) for v in fake.stored[partition]]
        assert values[-15:] == list(range(partition, 30, 2))
    assert any(e["event"] == "records not stored; sending them again" for e in logs)


async def test_writers_wait_while_too_much_is_queued() -> None:
    fake = _Producer()
    fake.gate.clear()  # the broker holds the first set
    records = _records(fake, max_queued=5)
    await records.append(0, b"k", b"0", [])
    await asyncio.sleep(0.01)  # the shipper takes it, and is held
    for n in range(1, 6):  # five queued: as many as may wait
        await records.append(0, b"k", b"%d" % n, [])
    late = asyncio.create_task(records.append(0, b"k", b"late", []))
    await asyncio.sleep(0.01)
    assert not late.done()
    fake.gate.set()
    await asyncio.wait_for(late, 1)
    await records.flush()
    assert fake.stored[0] == [b"%d" % n for n in range(6)] + [b"late"]


async def test_a_stop_with_the_broker_away_says_how_many_records_it_gave_up() -> None:
    fake = _Producer()
    fake.down = True
    records = _records(fake, retry_s=0.01)
    for n in range(3):
        await records.append(0, b"k", b"%d" % n, [])
    with structlog.testing.capture_logs() as logs:
        await records.close(within_s=0.05)
    given_up = [e for e in logs if e["event"] == "records not written before the stop"]
    assert given_up
    assert given_up[0]["lost"] == 3
