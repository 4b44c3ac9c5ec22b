"""enrichment over the real broker: two instances in one group link like one, a restarted
instance rebuilds its index before it takes work, poison records go to the DLQ, and features
computed in a worker process enrich exactly like features computed in the service process.

Stories are read back from `stories.enriched.v1` with plain aiokafka, as an internal team would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.enrichment.app import create_app
from services.enrichment.corpus import LabelledStory, parse_corpus
from services.enrichment.evaluation import publication_order
from services.enrichment.main import pipeline_factory
from services.enrichment.settings import EnrichmentSettings
from shared.events import Article, EventMeta, EventType, Topics, encode
from shared.kafka import ensure_topics
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).parents[1] / "data" / "corpus" / "stories.jsonl"
T0 = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
Poison = tuple[bytes, bytes]  # a key, and a value that is no Article


def corpus_articles(
    count: int, *, offset_minutes: int = 0, with_hint: bool = False
) -> list[Article]:
    stories: list[LabelledStory] = publication_order(
        parse_corpus(CORPUS.read_text(encoding="utf-8").splitlines())
    )
    return [
        s.article(T0 + timedelta(minutes=offset_minutes + i), with_hint=with_hint)
        for i, s in enumerate(stories[:count])
    ]


def settings_for(bootstrap: str, topics: Topics, **overrides: Any) -> EnrichmentSettings:
    return EnrichmentSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=topics.prefix,
        enrichment_group_id=f"{topics.prefix}enrichment",
        log_level="WARNING",
        **overrides,
    )


@asynccontextmanager
async def instance(settings: EnrichmentSettings) -> AsyncIterator[httpx.AsyncClient]:
    """One enrichment instance, in process, with its own consumers, answering HTTP."""
    app = create_app(pipeline_factory(settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://enrichment") as client:
            yield client


async def wait_ready(client: httpx.AsyncClient, within_s: float = 45) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("instance not ready in time")


async def produce(bootstrap: str, topic: str, articles: list[Article]) -> None:
    """One at a time, each acknowledged before the next: the topic holds them in this order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for article in articles:
            meta = EventMeta.new(EventType.PUBLISHED, "urn:test")
            await producer.send_and_wait(
                topic, encode(article), key=article.uri.encode(), headers=meta.to_headers()
            )
    finally:
        await producer.stop()


async def enriched(bootstrap: str, topics: Topics, count: int) -> dict[str, dict[str, Any]]:
    records = await read_records(bootstrap, topics.enriched, count, within_s=60)
    stories = {}
    for record in records:
        assert record.value is not None
        story = json.loads(record.value)
        stories[story["uri"]] = story["enrichment"]
    return stories


def links(stories: dict[str, dict[str, Any]]) -> dict[str, tuple[list[str], str | None]]:
    return {
        uri: ([r["uri"] for r in e["related"]], e.get("duplicate_of")) for uri, e in stories.items()
    }


def enriched_by(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("newsflow_enrichment_stories_total{")
    )


async def new_topics(bootstrap: str, prefix: str) -> Topics:
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics.all())
    return topics


async def test_two_instances_in_one_group_link_exactly_like_one_and_park_poison(
    kafka_bootstrap: str, prefix: str
) -> None:
    single = await new_topics(kafka_bootstrap, f"{prefix}one.")
    pair = await new_topics(kafka_bootstrap, f"{prefix}two.")
    articles = corpus_articles(90)
    async with AsyncExitStack() as stack:
        alone = await stack.enter_async_context(instance(settings_for(kafka_bootstrap, single)))
        first = await stack.enter_async_context(instance(settings_for(kafka_bootstrap, pair)))
        second = await stack.enter_async_context(instance(settings_for(kafka_bootstrap, pair)))
        for client in (alone, first, second):
            await wait_ready(client)

        await produce(kafka_bootstrap, single.ingested, articles)
        await produce(kafka_bootstrap, pair.ingested, articles)
        one = await enriched(kafka_bootstrap, single, len(articles))
        two = await enriched(kafka_bootstrap, pair, len(articles))

        # Both members took work, and yet every link is what the single instance gave.
        shares = [enriched_by((await c.get("/metrics")).text) for c in (first, second)]
        assert all(share > 0 for share in shares), shares
        assert sum(shares) == len(articles)
        assert len(one) == len(two) == len(articles)
        assert links(one) == links(two)
        assert sum(1 for related, _ in links(one).values() if related) >= 10
        assert any(duplicate for _, duplicate in links(one).values())
        # The end offsets each story waits for came from the fetch responses, not only lookups.
        ends = (await alone.get("/v1/index")).json()["end_offsets"]
        assert ends["from_fetches"] > 0, ends

        # Poison: undecodable and schema-invalid records are parked with the error; work goes on.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            meta = EventMeta.new(EventType.PUBLISHED, "urn:test").to_headers()
            await producer.send_and_wait(single.ingested, b"\xff\xfe", key=b"urn:p:1", headers=meta)
            await producer.send_and_wait(
                single.ingested, b'{"uri": "urn:p:2"}', key=b"urn:p:2", headers=meta
            )
        finally:
            await producer.stop()
        late = corpus_articles(91)[-1:]
        await produce(kafka_bootstrap, single.ingested, late)
        parked = await read_records(kafka_bootstrap, single.dlq(single.ingested), 2, within_s=30)
        after = await enriched(kafka_bootstrap, single, len(articles) + 1)

    assert sorted(p.key for p in parked) == [b"urn:p:1", b"urn:p:2"]
    for record in parked:
        headers = dict(record.headers)
        assert b"not a valid Article" in headers["newsflow_error"]
        assert headers["newsflow_original_topic"] == single.ingested.encode()
    assert late[0].uri in after


async def test_a_restarted_instance_rebuilds_its_index_before_it_takes_work(
    kafka_bootstrap: str, prefix: str
) -> None:
    topics = await new_topics(kafka_bootstrap, prefix)
    settings = settings_for(kafka_bootstrap, topics)
    before = corpus_articles(200)
    async with instance(settings) as client:
        await wait_ready(client)
        await produce(kafka_bootstrap, topics.ingested, before)
        await enriched(kafka_bootstrap, topics, len(before))

    seen: list[tuple[int, str, int]] = []
    async with instance(settings) as client:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            ready = (await client.get("/readyz")).status_code
            index = (await client.get("/v1/index")).json()
            seen.append((ready, index["state"], index["stories"]))
            if ready == 200:
                break
            await asyncio.sleep(0.05)

        # A follow-up to a story from before the restart is linked to it.
        original = before[0]
        followup = original.model_copy(
            update={
                "uri": "urn:newsflow:test:followup",
                "headline": f"Follow-up: {original.headline}",
                "summary": "Officials gave more details on Tuesday and answered questions.",
                "versioncreated": T0 + timedelta(days=1),
                "firstcreated": None,
            }
        )
        await produce(kafka_bootstrap, topics.ingested, [followup])
        stories = await enriched(kafka_bootstrap, topics, len(before) + 1)

    assert seen[0][:2] == (503, "rebuilding")
    assert seen[-1] == (200, "ready", len(before))
    assert all(state == "ready" for status, state, _ in seen if status == 200)
    assert original.uri in [r["uri"] for r in stories[followup.uri]["related"]]
    assert len(stories) == len(before) + 1  # nothing was enriched twice after the restart


async def test_a_group_further_behind_than_the_table_keeps_is_enriched_once_each(
    kafka_bootstrap: str, prefix: str
) -> None:
    """A new group starts from the beginning: its member fetches what the table no longer
    keeps itself, then takes the rest, and what comes next, from the table."""
    topics = await new_topics(kafka_bootstrap, prefix)
    articles = corpus_articles(45)
    await produce(kafka_bootstrap, topics.ingested, articles[:40])
    settings = settings_for(kafka_bootstrap, topics, enrichment_recent_per_partition=3)
    async with instance(settings) as client:
        await wait_ready(client)
        await produce(kafka_bootstrap, topics.ingested, articles[40:])
        await read_records(kafka_bootstrap, topics.enriched, len(articles), within_s=60)
        # One more than there are articles: it waits the whole time for a story enriched twice.
        records = await read_records(
            kafka_bootstrap, topics.enriched, len(articles) + 1, within_s=3
        )
        member = (await client.get("/v1/index")).json()["member"]

    uris = sorted(json.loads(r.value or b"{}")["uri"] for r in records)
    assert uris == sorted(a.uri for a in articles)  # each once
    assert member["fetched"] > 0 and member["from_table"] > 0
    assert member["fetched"] + member["from_table"] == len(articles)


async def test_features_computed_in_a_worker_process_enrich_exactly_like_in_process(
    kafka_bootstrap: str, prefix: str
) -> None:
    in_process = await new_topics(kafka_bootstrap, f"{prefix}zero.")
    in_worker = await new_topics(kafka_bootstrap, f"{prefix}one.")
    # A worker, and this process lending a hand while the enricher waits for the story table.
    helped = await new_topics(kafka_bootstrap, f"{prefix}both.")
    # Read while rebuilding: stories whose section hint teaches the classifier, a correction, a
    # withdrawal and poison among them. Then, once ready, stories without hints as they come.
    hinted = corpus_articles(120, with_hint=True)
    early: list[Article | Poison] = [*hinted[:60]]
    early.insert(20, (b"urn:p:1", b"\xff\xfe"))
    early.insert(41, (b"urn:p:2", b'{"uri": "urn:p:2"}'))
    corrected = hinted[5].model_copy(
        update={"version": 2, "headline": f"{hinted[5].headline} (corrected)", "section": None}
    )
    withdrawn = hinted[7].model_copy(update={"version": 2, "pubstatus": "canceled"})
    early += [corrected, withdrawn]
    late: list[Article | Poison] = [a.model_copy(update={"section": None}) for a in hinted[60:]]
    late.insert(30, (b"urn:p:3", b'{"uri": "urn:p:3", "version": "one"}'))
    for topics in (in_process, in_worker, helped):
        await produce_mixed(kafka_bootstrap, topics.ingested, early)

    async with AsyncExitStack() as stack:
        zero = await stack.enter_async_context(
            instance(settings_for(kafka_bootstrap, in_process, enrichment_feature_workers=0))
        )
        one = await stack.enter_async_context(
            instance(
                settings_for(
                    kafka_bootstrap,
                    in_worker,
                    enrichment_feature_workers=1,
                    enrichment_features_here_while_waiting=False,
                    enrichment_features_here_up_to=0,
                )
            )
        )
        both = await stack.enter_async_context(
            instance(settings_for(kafka_bootstrap, helped, enrichment_feature_workers=1))
        )
        clients = (zero, one, both)
        for client in clients:
            await wait_ready(client)
        for topics in (in_process, in_worker, helped):
            await read_records(kafka_bootstrap, topics.enriched, 62, within_s=60)
            await produce_mixed(kafka_bootstrap, topics.ingested, late)
        here = await enriched_versions(kafka_bootstrap, in_process, 122)
        there = await enriched_versions(kafka_bootstrap, in_worker, 122)
        mixed = await enriched_versions(kafka_bootstrap, helped, 122)
        status = [(await c.get("/v1/index")).json() for c in clients]
        parked = await read_records(
            kafka_bootstrap, in_worker.dlq(in_worker.ingested), 3, within_s=30
        )

    assert len(here) == 122
    assert there == here  # links, scores, duplicate_of, section, entities: every version
    assert mixed == here
    assert [s["stories"] for s in status] == [119, 119, 119]
    read = len(early) + len(late)  # every record of the topic, poison included
    assert status[0]["features"] == {"here": read, "workers": 0}
    assert status[1]["features"] == {"here": 0, "workers": read}
    # The rebuild's first chunk at least is computed here, while the consumer waits for it.
    assert status[2]["features"]["here"] >= 1
    assert sum(status[2]["features"].values()) == read
    assert sum(1 for e in here.values() if e.get("related")) >= 20
    assert any(e.get("duplicate_of") for e in here.values())
    learned = [
        e["section"] for (uri, _), e in here.items() if uri not in {a.uri for a in hinted[:60]}
    ]
    assert any(section["method"] == "classifier" for section in learned)
    assert sorted(p.key for p in parked) == [b"urn:p:1", b"urn:p:2", b"urn:p:3"]


async def produce_mixed(bootstrap: str, topic: str, items: list[Article | Poison]) -> None:
    """Articles and poison (a key and a value that is no Article), in this order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for item in items:
            meta = EventMeta.new(EventType.PUBLISHED, "urn:test").to_headers()
            key, value = item if isinstance(item, tuple) else (item.uri.encode(), encode(item))
            await producer.send_and_wait(topic, value, key=key, headers=meta)
    finally:
        await producer.stop()


async def enriched_versions(
    bootstrap: str, topics: Topics, count: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """Every enriched version's enrichment, but for when it was enriched."""
    records = await read_records(bootstrap, topics.enriched, count, within_s=60)
    found = {}
    for record in records:
        assert record.value is not None
        story = json.loads(record.value)
        found[(story["uri"], story["version"])] = {
            k: v for k, v in story["enrichment"].items() if k != "enriched_at"
        }
    return found
