"""The shared consume loop's pipeline, against a group member that hands out prepared batches:
the next batch is handled while the one before still waits for its acks (and no more), commits
go in order, and a commit the group refuses (a rebalance) sends reading back, not the loop down.
With a commit interval, durable batches are committed together: all of them once the stream is
quiet or the loop stops, none whose acks are still out, and a failure reads again from the
oldest batch not committed.
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


async def run_until(
    member: Member, handle: object, done: Callable[[], bool], commit_interval_s: float = 0.0
) -> None:
    parked = DeadLetters(None, lambda topic: topic)  # type: ignore[arg-type]  # nothing parked
    task = asyncio.create_task(
        consume_forever(
            member,  # type: ignore[arg-type]
            handle,  # type: ignore[arg-type]
            parked,
            retry_delay_s=0.01,
            commit_interval_s=commit_interval_s,
        )
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


@pytest.mark.parametrize("commit_interval_s", [0.0, 60.0])
async def test_a_refused_commit_reads_the_batch_again(commit_interval_s: float) -> None:
    handled: list[int] = []

    async def handle(records: list[IncomingRecord]) -> None:
        handled.extend(r.offset for r in records)

    member = Member(3, refuse_commits=1)
    await run_until(member, handle, lambda: member.commits[-1:] == [3], commit_interval_s)
    assert handled[0] == 0 and handled.count(0) == 2  # read again after the refusal
    assert sorted(set(handled)) == [0, 1, 2]
    assert member.commits == sorted(member.commits)


async def acknowledged() -> asyncio.Future[None]:
    acks: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    acks.set_result(None)
    return acks


async def test_with_an_interval_batches_are_committed_together_all_once_the_stream_is_quiet() -> (
    None
):
    handled: list[int] = []

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        handled.extend(r.offset for r in records)
        return await acknowledged()

    member = Member(20)  # one record a poll: 20 batches, then nothing
    await run_until(member, handle, lambda: member.commits[-1:] == [20], commit_interval_s=60)
    assert handled == list(range(20))
    assert member.commits == [20]  # all together once quiet, not one each
    assert member.commits == sorted(member.commits)


async def test_with_an_interval_stopping_commits_what_is_durable_and_not_what_is_not() -> None:
    loop = asyncio.get_running_loop()
    handled: list[int] = []

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        handled.extend(r.offset for r in records)
        if records[0].offset == 5:
            return loop.create_future()  # the last batch's acks: still out at the stop
        return await acknowledged()

    member = Member(6)
    # Stopped as soon as every batch is handed on: before the stream looks quiet.
    await run_until(member, handle, lambda: len(handled) == 6, commit_interval_s=60)
    assert member.commits[-1] == 5  # 0..4 durable, so a restart does not handle them again


async def test_with_an_interval_failed_acks_read_again_from_the_oldest_batch_not_committed() -> (
    None
):
    loop = asyncio.get_running_loop()
    handled: list[int] = []
    # What had been handled when each offset was committed.
    handled_by_commit: list[tuple[int, list[int]]] = []
    failed_once = False

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        nonlocal failed_once
        handled.extend(r.offset for r in records)
        if records[0].offset == 3 and not failed_once:
            failed_once = True
            acks: asyncio.Future[None] = loop.create_future()
            acks.set_exception(RuntimeError("broker gone"))
            return acks
        return await acknowledged()

    class Watched(Member):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            await super().commit(offsets)
            handled_by_commit.append((offsets[P0], list(handled)))

    member = Watched(6)
    await run_until(member, handle, lambda: member.commits[-1:] == [6], commit_interval_s=60)
    # 0..2 were durable, not yet committed: read again too.
    assert handled[:5] == [0, 1, 2, 3, 4]
    assert handled[5:] == [0, 1, 2, 3, 4, 5]
    # Nothing past the failed batch was committed before it was handled again.
    for offset, seen in handled_by_commit:
        assert offset <= 3 or seen.count(3) == 2


async def test_with_an_interval_a_partition_taken_away_meanwhile_is_not_committed_here() -> None:
    handled: list[int] = []

    class Revoked(Member):
        """Loses its partition to another member once every record is handed on."""

        quiet_polls = 0

        async def getmany(
            self, timeout_ms: int = 0, max_records: int | None = None
        ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
            found = await super().getmany(timeout_ms, max_records)
            self.quiet_polls += not found
            return found

        def assignment(self) -> set[TopicPartition]:
            return set() if len(handled) >= 3 else {P0}

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            assert set(offsets) <= self.assignment(), "not this member's partition any more"
            await super().commit(offsets)

    async def handle(records: list[IncomingRecord]) -> asyncio.Future[None]:
        handled.extend(r.offset for r in records)
        return await acknowledged()

    member = Revoked(3)
    # Two quiet polls: the first one's commit is made before the second poll.
    await run_until(member, handle, lambda: member.quiet_polls >= 2, commit_interval_s=60)
    assert member.commits == []  # the new owner reads them from the last commit
    assert handled == [0, 1, 2]  # and this member does not read them again either
