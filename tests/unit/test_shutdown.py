"""Shutdown: a service stops even when its Kafka producer would wait forever."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer

from shared.kafka import stop_producer

pytestmark = pytest.mark.unit


class StuckProducer:
    """A producer whose stop waits for a broker that never answers (aio-libs/aiokafka#1101)."""

    def __init__(self) -> None:
        self.stop_cancelled = False

    async def stop(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stop_cancelled = True
            raise


async def test_a_producer_stop_that_never_ends_is_given_up_after_the_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    producer = StuckProducer()
    # Without the bound this would wait forever (here: fail after 10 s).
    await asyncio.wait_for(stop_producer(cast(AIOKafkaProducer, cast(Any, producer)), 0.2), 10)
    assert producer.stop_cancelled
    assert "did not stop in time" in capsys.readouterr().out
