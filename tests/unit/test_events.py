"""The contract: records we produce must be readable by the official CloudEvents SDK."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1 import kafka as ce_v1_kafka

from shared.events import (
    Article,
    Enrichment,
    Entities,
    EventMeta,
    EventType,
    InvalidEvent,
    RelatedStory,
    SectionAssignment,
    Story,
    Topics,
    decode_article,
    decode_story,
    encode,
    encode_enrichment,
    encode_story,
    event_type_for,
)
from tests.factories import article_payload

pytestmark = pytest.mark.unit


def record_of(article: Article, event_type: EventType) -> tuple[list[tuple[str, bytes]], bytes]:
    meta = EventMeta.new(event_type, "urn:newsflow:ingest")
    return meta.to_headers(), encode(article)


def test_official_sdk_reads_our_binary_mode_record() -> None:
    article = Article.model_validate(article_payload(uri="urn:newsflow:test:sdk"))
    headers, value = record_of(article, EventType.PUBLISHED)

    message = ce_kafka.KafkaMessage(headers=dict(headers), key=article.uri.encode(), value=value)
    event = ce_kafka.from_binary(message, JSONFormat())

    assert event.get_specversion() == "1.0"
    assert event.get_type() == "newsflow.article.published"
    assert event.get_source() == "urn:newsflow:ingest"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() is not None
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["uri"] == "urn:newsflow:test:sdk"
    assert data["headline"] == article.headline


def test_sdk_1x_api_reads_it_too() -> None:
    article = Article.model_validate(article_payload())
    headers, value = record_of(article, EventType.UPDATED)

    message = ce_v1_kafka.KafkaMessage(headers=dict(headers), key=article.uri, value=value)
    event = ce_v1_kafka.from_binary(message)

    assert event["type"] == "newsflow.article.updated"
    assert event["id"]
    data = event.get_data()
    assert (json.loads(data) if isinstance(data, bytes | str) else data)["uri"] == article.uri


def test_headers_round_trip_with_extensions() -> None:
    meta = EventMeta.new(EventType.WITHDRAWN, "urn:x", traceparent="00-abc-def-01")
    back = EventMeta.from_headers(meta.to_headers())
    assert back == meta


def test_event_ids_are_version_4_uuids_and_unique() -> None:
    ids = [EventMeta.new(EventType.PUBLISHED, "urn:x").id for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids[:1000]:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_missing_ce_headers_are_invalid() -> None:
    with pytest.raises(InvalidEvent, match="ce_id"):
        EventMeta.from_headers([("ce_specversion", b"1.0"), ("ce_type", b"t"), ("ce_source", b"s")])


@pytest.mark.parametrize(
    "headers",
    [
        [("ce_specversion", b"1.0"), ("ce_type", b"t"), ("ce_source", b"s")],
        [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_type", b"t"), ("ce_source", b"s")],
        [("ce_specversion", b"\xff"), ("ce_id", b"1"), ("ce_type", b"t"), ("ce_source", b"s")],
        [],
        EventMeta.new(EventType.PUBLISHED, "urn:x").to_headers(),
        [*EventMeta.new(EventType.PUBLISHED, "urn:x").to_headers(), ("ce_time", b"yesterday")],
    ],
)
def test_checking_headers_agrees_with_reading_them(headers: list[tuple[str, bytes]]) -> None:
    try:
        EventMeta.from_headers(headers)
    except InvalidEvent as exc:
        with pytest.raises(InvalidEvent, match=re.escape(str(exc))):
            EventMeta.check_headers(headers)
    else:
        EventMeta.check_headers(headers)


def test_topic_names_carry_the_prefix() -> None:
    topics = Topics("staging.")
    assert topics.ingested == "staging.articles.ingested.v1"
    assert topics.enriched == "staging.stories.enriched.v1"
    assert topics.attempts == "staging.deliveries.attempts.v1"
    assert topics.dlq(topics.ingested) == "staging.articles.ingested.dlq.v1"
    specs = {spec.name: spec for spec in topics.all()}
    assert specs[topics.enriched].configs == {"cleanup.policy": "compact"}
    assert all(spec.partitions >= 6 for spec in specs.values())


def test_event_type_of_each_version() -> None:
    article = Article.model_validate(article_payload())
    assert event_type_for(article, None) is EventType.PUBLISHED
    assert event_type_for(article, 1) is EventType.UPDATED
    killed = article.model_copy(update={"pubstatus": "canceled"})
    assert event_type_for(killed, 1) is EventType.WITHDRAWN
    assert EventType.WITHDRAWN.webhook_type == "story.withdrawn"


def test_undecodable_value_is_invalid_with_a_reason() -> None:
    with pytest.raises(InvalidEvent, match="not a valid Article"):
        decode_article(b"{not json")
    with pytest.raises(InvalidEvent, match="no value"):
        decode_article(None)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"url": "https://news.example/2026/harbour", "summary": None, "section": None},
        {"pubstatus": "canceled", "byline": None, "language": "fr"},
    ],
)
def test_a_story_is_encoded_from_its_article_and_enrichment_as_the_story_itself_is(
    overrides: dict[str, Any],
) -> None:
    article = Article.model_validate(article_payload(**overrides))
    enrichment = Enrichment(
        section=SectionAssignment(
            id="business", name="Business", confidence=1.0, method="provider"
        ),
        related=[
            RelatedStory(uri="urn:newsflow:test:1", headline="Ferry", url=None, score=0.5),
            RelatedStory.model_validate(
                {"uri": "urn:x:2", "headline": "Port", "url": "https://a.example/p", "score": 0.3}
            ),
        ],
        entities=Entities(people=["Irena Kass"], places=["Geneva"]),
        duplicate_of="urn:newsflow:test:0",
        enriched_at=datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
    )
    story = Story.model_validate({**article.model_dump(), "enrichment": enrichment.model_dump()})

    value = encode_story(article, enrichment)

    assert value == encode(story)
    assert decode_story(value) == story


LINKS = [
    ("urn:newsflow:test:1", "Ferry", None, 0.5),
    (" urn:x:2 ", " Port talks stall ", "https://a.example/p?q=1", 0.3333),
    ("urn:x:3", "Ünïcode “quoted” — headline", "https://xn--bcher-kva.example/", 1e-05),
]


@pytest.mark.parametrize(
    ("links", "entities", "duplicate_of"),
    [
        (LINKS, (["Irena Kass"], ["Geneva", " Zürich "], []), "urn:newsflow:test:0"),
        ([], ([], [], []), None),
        (LINKS[:1], ((), ("Oslo",), ("ACME Corp", "Øresund Line")), " urn:y "),
    ],
)
def test_an_enrichment_is_encoded_as_the_models_encode_it(
    links: list[tuple[str, str, str | None, float]],
    entities: tuple[list[str], list[str], list[str]],
    duplicate_of: str | None,
) -> None:
    section = SectionAssignment(id="world", name="World", confidence=0.873, method="classifier")
    enriched_at = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    people, places, organisations = entities
    model = Enrichment(
        section=section,
        related=[
            RelatedStory.model_validate(
                {"uri": uri, "headline": headline, "url": url, "score": score}
            )
            for uri, headline, url, score in links
        ],
        entities=Entities(
            people=list(people), places=list(places), organisations=list(organisations)
        ),
        duplicate_of=duplicate_of,
        enriched_at=enriched_at,
    )

    value = encode_enrichment(section, links, entities, duplicate_of, enriched_at)

    assert value == encode(model)
    assert Enrichment.model_validate_json(value) == model
    article = Article.model_validate(article_payload())
    assert encode_story(article, value) == encode_story(article, model)
