"""The DLQ commands against a broker that answers but stops sending records: a clear error."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from typer.testing import CliRunner

from ops import kafka_ops
from ops.cli import app

pytestmark = pytest.mark.unit


class SilentConsumer:
    """Knows of 5 records on partition 0 of every topic and never sends one."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def partitions_for_topic(self, _: str) -> set[int]:
        return {0}

    def assign(self, _: list[TopicPartition]) -> None:
        pass

    async def seek_to_beginning(self, *_: TopicPartition) -> None:
        pass

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 5)

    async def position(self, _: TopicPartition) -> int:
        return 0

    async def getmany(self, *_: TopicPartition, **__: Any) -> dict[TopicPartition, list[Any]]:
        return {}


class IdleProducer(SilentConsumer):
    pass


@pytest.mark.parametrize("command", [["list"], ["replay"], ["replay", "--dry-run"]])
def test_a_broker_that_stops_sending_is_reported_not_waited_on(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setattr(kafka_ops, "AIOKafkaConsumer", SilentConsumer)
    monkeypatch.setattr(kafka_ops, "AIOKafkaProducer", IdleProducer)
    monkeypatch.setattr(kafka_ops, "STALL_S", 0.2)

    result = CliRunner().invoke(app, ["dlq", *command, "articles.ingested.v1"])

    assert result.exit_code == 1
    assert "error: no records from articles.ingested.dlq.v1 for 0 s" in result.output
    assert "1 partition(s) not read to their end" in result.output
