"""`FetchSpacing`: while records keep coming, nothing is fetched between two spaced fetches; a
quiet stream is fetched at once; the caller's own pauses and a rebalance are left alone."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import FetchSpacing

pytestmark = pytest.mark.unit

P0, P1, P2 = (TopicPartition("stories", p) for p in range(3))


class _Consumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.held: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def paused(self) -> set[TopicPartition]:
        return set(self.held)

    def pause(self, *partitions: TopicPartition) -> None:
        self.held.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        assert set(partitions) <= self.assigned, "resumed a partition it no longer has"
        self.held.difference_update(partitions)


async def _fetched(
    spacing: FetchSpacing,
    fake: _Consumer,
    records: int,
    partitions: list[TopicPartition],
    takes_s: float = 0.0,
) -> float:
    """One fetch through the spacing, whose records come `takes_s` after it began; returns how
    long `before_fetch` waited."""
    consumer: AIOKafkaConsumer = fake
    loop = asyncio.get_running_loop()
    started = loop.time()
    await spacing.before_fetch(consumer)
    waited = loop.time() - started
    assert not fake.held - {P2}, "a fetch while the partitions rest"
    await asyncio.sleep(takes_s)
    spacing.after_fetch(consumer, partitions, records)
    return waited


async def test_a_steady_stream_is_fetched_once_an_interval_and_the_callers_pause_stays() -> None:
    fake = _Consumer({P0, P1, P2})
    fake.held = {P2}  # the caller's own pause
    spacing = FetchSpacing(0.05)
    assert await _fetched(spacing, fake, 3, [P0, P1, P2]) < 0.01  # the first: at once
    assert spacing.resting and fake.held == {P0, P1, P2}  # records came at once: rest
    assert await _fetched(spacing, fake, 4, [P0, P1, P2]) >= 0.045  # waited out the interval
    assert fake.held == {P0, P1, P2}  # resting again; P2 stays the caller's
    await spacing.before_fetch(fake)
    assert fake.held == {P2}


async def test_a_quiet_stream_is_fetched_at_once() -> None:
    fake = _Consumer({P0})
    spacing = FetchSpacing(0.01)
    # Its records come further apart than the interval: no rest.
    assert await _fetched(spacing, fake, 1, [P0], takes_s=0.03) < 0.005
    assert not spacing.resting and not fake.held
    assert await _fetched(spacing, fake, 1, [P0], takes_s=0.03) < 0.005
    await _fetched(spacing, fake, 0, [P0])  # an empty fetch never rests
    assert not spacing.resting


async def test_a_partition_taken_away_meanwhile_is_not_resumed() -> None:
    fake = _Consumer({P0, P1})
    spacing = FetchSpacing(0.001)
    await _fetched(spacing, fake, 1, [P0, P1])
    assert spacing.resting
    fake.assigned = {P1}  # a rebalance
    fake.held &= fake.assigned
    await spacing.before_fetch(fake)
    assert fake.held == set()


async def test_no_interval_changes_nothing() -> None:
    fake = _Consumer({P0})
    spacing = FetchSpacing(0)
    for _ in range(3):
        assert await _fetched(spacing, fake, 5, [P0]) < 0.01
    assert fake.held == set() and not spacing.resting
