"""The shared consume loop's pipeline, against a group member that hands out prepared batches:
the next batch is handled while the one before still waits for its acks (and no more), commits
go in order, and a commit the group refuses (a rebalance) sends reading back, not the loop down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from shared.events import EventMeta, EventType
from shared.kafka import DeadLetters, IncomingRecord, consume_forever

pytestmark = pytest.mark.unit

P0 = TopicPartition("articles.ingested.v1", 0)
HEADERS = tuple(EventMeta.new(EventType.PUBLISHED, "urn:test").to_headers())


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(P0.topic, 0, offset, offset, 0, b"k", b"{}", None, 0, 0, HEADERS)


class Member:
    """Hands out one record a poll from its position; remembers the commits."""

    def __init__(self, records: int, refuse_commits: int = 0) -> None:
        self.log = [record(o) for o in range(records)]
        self.at = 0
        self.commits: list[int] = []
        self.refuse_commits = refuse_commits

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        await asyncio.sleep(0)
        if self.at >= len(self.log):
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.at += 1
        return {P0: [self.log[self.at - 1]]}

    def assignment(self) -> set[TopicPartition]:
        return {P0}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        if self.refuse_commits:
            self.refuse_commits -= 1
            raise RuntimeError("CommitFailedError: the group has rebalanced")
        self.commits.append(offsets[P0])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.at = offset

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.log)

    async def position(self, partition: TopicPartition) -> int:
        return self.at


async def run_until(member: Member, handle: object, done: Callable[[], bool]) -> None:
    parked = DeadLetters(None, lambda topic: topic)  # type: ignore[arg-type]  # nothing parked
    task = asyncio.create_task(
        consume_forever(member, handle, parked, retry_delay_s=0.01)  # type: ignore[arg-type]
    )
    try:
        for _ in range(2000):
            if done():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("not done in time")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_next_batch_is_handled_while_the_first_waits_for_its_acks() -> None:
    loop = asyncio.get_running_loop()
    first_acks: asyncio.Future[None] = loop.create_future()
    handled: list[int] = []

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        handled.extend(r.offset for r in records)
        if records[0].offset == 0:
            return first_acks
        acks: asyncio.Future[None] = loop.create_future()
        acks.set_result(None)
        return acks

    member = Member(6)

    async def scenario() -> None:
        for _ in range(50):
            await asyncio.sleep(0.001)
        assert handled == [0, 1]  # and no more while the first is not durable
        assert member.commits == []
        first_acks.set_result(None)

    checker = asyncio.create_task(scenario())
    await run_until(member, handle, lambda: checker.done() and member.commits[-1:] == [6])
    await checker
    assert handled == [0, 1, 2, 3, 4, 5]
    assert member.commits == sorted(member.commits)  # in order


async def test_a_refused_commit_reads_the_batch_again() -> None:
    handled: list[int] = []

    async def handle(records: list[IncomingRecord]) -> None:
        handled.extend(r.offset for r in records)

    member = Member(3, refuse_commits=1)
    await run_until(member, handle, lambda: member.commits[-1:] == [3])
    assert handled[0] == 0 and handled.count(0) == 2  # read again after the refusal
    assert sorted(set(handled)) == [0, 1, 2]
    assert member.commits == sorted(member.commits)
