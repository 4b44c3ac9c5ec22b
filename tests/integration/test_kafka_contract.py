"""What an internal team sees on the topics, read with plain aiokafka and the CloudEvents SDK."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from services.ingest.adapters import KafkaArticlePublisher
from shared.events import Article, EventMeta, EventType, Topics
from shared.kafka import make_producer
from shared.settings import NewsflowSettings
from tests.factories import article_payload
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration


async def test_published_article_is_a_binary_mode_cloudevent_keyed_by_uri(
    kafka_bootstrap: str, topics: Topics
) -> None:
    settings = NewsflowSettings(kafka_bootstrap_servers=kafka_bootstrap)
    producer: AIOKafkaProducer = make_producer(settings)
    await producer.start()
    try:
        article = Article.model_validate(article_payload())
        meta = EventMeta.new(EventType.PUBLISHED, "urn:newsflow:ingest")
        await KafkaArticlePublisher(producer, topics.ingested).publish(article, meta)
    finally:
        await producer.stop()

    [record] = await read_records(kafka_bootstrap, topics.ingested, 1)

    assert record.key == article.uri.encode()
    event = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
        JSONFormat(),
    )
    assert event.get_id() == meta.id
    assert event.get_type() == "newsflow.article.published"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["uri"] == article.uri


async def test_topics_have_six_partitions_and_the_story_topic_is_compacted(
    kafka_bootstrap: str, topics: Topics
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([spec.name for spec in topics.all()])
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        spec.name: 6 for spec in topics.all()
    }
