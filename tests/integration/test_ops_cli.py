"""The ops CLI as on-call uses it: DLQ list and replay, and status, against the real broker."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.embedded import free_port
from ops.kafka_ops import topic_size
from shared.events import EventMeta, EventType, Topics
from shared.kafka import DeadLetters, IncomingRecord, make_producer
from shared.settings import NewsflowSettings
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration


def park_one(
    kafka_bootstrap: str, topics: Topics, partition: int = 2, key: bytes = b"urn:poison"
) -> EventMeta:
    meta = EventMeta.new(EventType.PUBLISHED, "urn:test")

    async def park() -> None:
        producer = make_producer(NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap))
        await producer.start()
        try:
            record = IncomingRecord(
                topics.ingested, partition, 41, key, b'{"uri": 42}', meta.to_headers(), meta, 0
            )
            await DeadLetters(producer, topics.dlq).park(record, "not a valid Article: uri")
        finally:
            await producer.stop()

    asyncio.run(park())
    return meta


@pytest.fixture
def cli_env(kafka_bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "NEWSFLOW_TOPIC_PREFIX": prefix,
        "COLUMNS": "200",
    }


def test_dlq_list_and_replay(kafka_bootstrap: str, topics: Topics, cli_env: dict[str, str]) -> None:
    meta = park_one(kafka_bootstrap, topics)
    runner = CliRunner()

    listed = runner.invoke(app, ["dlq", "list", "articles.ingested.v1"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    assert "1 record(s)" in listed.output
    assert "urn:poison" in listed.output
    assert "not a valid Article: uri" in listed.output
    assert f"{topics.ingested}[2]@41" in listed.output

    replayed = runner.invoke(app, ["dlq", "replay", "articles.ingested.v1"], env=cli_env)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 record(s)" in replayed.output
    [back] = asyncio.run(read_records(kafka_bootstrap, topics.ingested, 1))
    assert back.key == b"urn:poison"
    assert dict(back.headers)["ce_id"] == meta.id.encode()
    assert not [name for name, _ in back.headers if name.startswith("newsflow_")]

    again = runner.invoke(app, ["dlq", "replay", "articles.ingested.v1"], env=cli_env)
    assert "replayed 0 record(s)" in again.output


def test_replay_resumes_where_the_last_one_stopped(
    kafka_bootstrap: str, topics: Topics, cli_env: dict[str, str]
) -> None:
    for partition, key in ((1, b"urn:first"), (4, b"urn:second"), (4, b"urn:third")):
        park_one(kafka_bootstrap, topics, partition, key)
    runner = CliRunner()

    listed = runner.invoke(app, ["dlq", "list", "articles.ingested.v1"], env=cli_env)
    assert "3 record(s)" in listed.output
    dry = runner.invoke(app, ["dlq", "replay", "articles.ingested.v1", "--dry-run"], env=cli_env)
    assert "would replay 3 record(s)" in dry.output

    replays = [
        runner.invoke(app, ["dlq", "replay", "articles.ingested.v1", *limit], env=cli_env)
        for limit in (["--limit", "2"], [], [])
    ]

    assert [result.exit_code for result in replays] == [0, 0, 0]
    assert "replayed 2 record(s)" in replays[0].output
    assert "replayed 1 record(s)" in replays[1].output
    assert "replayed 0 record(s)" in replays[2].output
    back = asyncio.run(read_records(kafka_bootstrap, topics.ingested, 3))
    assert sorted(record.key for record in back) == [b"urn:first", b"urn:second", b"urn:third"]
    assert asyncio.run(topic_size(kafka_bootstrap, topics.ingested)) == 3  # each once


def test_status_reports_down_services_and_dlq_sizes(
    kafka_bootstrap: str, topics: Topics, cli_env: dict[str, str]
) -> None:
    park_one(kafka_bootstrap, topics)
    nowhere = f"http://127.0.0.1:{free_port()}"

    result = CliRunner().invoke(
        app,
        ["status", "--ingest-url", nowhere, "--enrichment-url", nowhere, "--delivery-url", nowhere],
        env=cli_env,
    )

    assert result.exit_code == 1
    assert result.output.count("NOT READY") == 3
    assert f"{topics.dlq(topics.ingested)} │ 1" in result.output
    assert "newsflow-enrichment" in result.output
