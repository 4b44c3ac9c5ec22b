"""`FetchSpacing`: nothing fetched between two spaced fetches, and the caller's own pauses and a
rebalance left alone."""

from __future__ import annotations

import asyncio
from typing import Any, cast

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


def _as_consumer(fake: _Consumer) -> AIOKafkaConsumer:
    return cast(AIOKafkaConsumer, fake)


async def test_partitions_rest_between_fetches_for_the_interval() -> None:
    fake = _Consumer({P0, P1, P2})
    fake.held = {P2}  # the caller's own pause
    spacing = FetchSpacing(0.05)
    consumer = _as_consumer(fake)
    await spacing.before_fetch(consumer)  # the first fetch: no wait
    spacing.after_fetch(consumer, [P0, P1, P2])
    assert fake.held == {P0, P1, P2}
    loop = asyncio.get_running_loop()
    started = loop.time()
    await spacing.before_fetch(consumer)
    assert loop.time() - started >= 0.045
    assert fake.held == {P2}  # its own pause stays


async def test_a_partition_taken_away_meanwhile_is_not_resumed() -> None:
    fake = _Consumer({P0, P1})
    spacing = FetchSpacing(0.001)
    consumer = _as_consumer(fake)
    spacing.after_fetch(consumer, [P0, P1])
    fake.assigned = {P1}  # a rebalance
    fake.held &= fake.assigned
    await spacing.before_fetch(consumer)
    assert fake.held == set()


async def test_no_interval_changes_nothing() -> None:
    fake: Any = _Consumer({P0})
    spacing = FetchSpacing(0)
    await spacing.before_fetch(fake)
    spacing.after_fetch(fake, [P0])
    assert fake.held == set()
