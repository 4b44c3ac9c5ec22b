"""A story's whole journey through the three real services, as partners and sites see it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiokafka import AIOKafkaProducer
from standardwebhooks.webhooks import Webhook

from ops.devrun import http_json
from tests.e2e.conftest import RunningStack
from tests.factories import article_payload, dam_followup, dam_story
from tests.integration.kafka_reading import read_records
from tests.receiver import Received, WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def subscription(stack: RunningStack, receiver: WebhookReceiver) -> Iterator[dict[str, Any]]:
    yield from subscribe(stack, receiver, [])


def subscribe(
    stack: RunningStack, receiver: WebhookReceiver, sections: list[str]
) -> Iterator[dict[str, Any]]:
    status, created = http_json(
        "POST",
        f"{stack.delivery}/v1/subscriptions",
        {"url": f"{receiver.url}/hooks", "sections": sections},
        token=stack.admin_token,
    )
    assert status == 201, created
    yield created
    http_json(
        "DELETE", f"{stack.delivery}/v1/subscriptions/{created['id']}", token=stack.admin_token
    )


def ingest(stack: RunningStack, payload: dict[str, Any]) -> dict[str, Any]:
    status, body = http_json("POST", f"{stack.ingest}/v1/articles", payload, token=stack.api_key)
    assert status == 202, body
    return dict(body)


def about(uri: str, kind: str | None = None) -> Any:
    def matches(received: Received) -> bool:
        payload = json.loads(received.body)
        return bool(payload["data"]["uri"] == uri and (kind is None or payload["type"] == kind))

    return matches


def verified(secret: str, received: Received) -> dict[str, Any]:
    """What a partner does with nothing of ours: the standardwebhooks package."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


def test_story_reaches_partner_and_cache_then_withdrawal_removes_it(
    stack: RunningStack, receiver: WebhookReceiver, subscription: dict[str, Any]
) -> None:
    uri = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}/truce"
    accepted = ingest(stack, dam_story(uri))

    [hook] = receiver.wait_for(about(uri, "story.published"))
    payload = verified(subscription["secret"], hook)
    assert hook.headers["webhook-id"].startswith("msg_")
    assert payload["data"]["uri"] == uri
    assert payload["data"]["enrichment"]["section"]["id"] == "world"
    assert accepted["type"] == "newsflow.article.published"

    status, story = http_json("GET", f"{stack.delivery}/v1/stories/{quote(uri, safe='')}")
    assert status == 200
    assert story["headline"] == dam_story(uri)["headline"]
    status, latest = http_json("GET", f"{stack.delivery}/v1/latest?section=world&limit=50")
    assert uri in [item["uri"] for item in latest["items"]]

    status, withdrawn = http_json(
        "POST",
        f"{stack.ingest}/v1/articles/{quote(uri, safe='')}/withdraw",
        {"reason": "legal request"},
        token=stack.api_key,
    )
    assert status == 202, withdrawn
    [kill] = receiver.wait_for(about(uri, "story.withdrawn"))
    assert verified(subscription["secret"], kill)["data"]["pubstatus"] == "canceled"
    status, _ = http_json("GET", f"{stack.delivery}/v1/stories/{quote(uri, safe='')}")
    assert status == 404
    _, latest = http_json("GET", f"{stack.delivery}/v1/latest?section=world&limit=50")
    assert uri not in [item["uri"] for item in latest["items"]]


def test_correction_arrives_after_its_original_and_links_related_stories(
    stack: RunningStack, receiver: WebhookReceiver, subscription: dict[str, Any]
) -> None:
    first = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
    second = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
    original = dam_story(first)
    ingest(stack, original)
    ingest(stack, {**original, "version": 2, "headline": original["headline"] + " (corrected)"})
    ingest(stack, dam_followup(second))

    hooks = receiver.wait_for(about(first), count=2)
    kinds = [verified(subscription["secret"], h)["type"] for h in hooks]
    assert kinds == ["story.published", "story.updated"]
    [followup] = receiver.wait_for(about(second))
    related = verified(subscription["secret"], followup)["data"]["enrichment"]["related"]
    assert [r["uri"] for r in related] == [first]
    _, story = http_json("GET", f"{stack.delivery}/v1/stories/{quote(first, safe='')}")
    assert story["version"] == 2


def test_section_filter(stack: RunningStack, receiver: WebhookReceiver) -> None:
    for sport_only in subscribe(stack, receiver, ["sport"]):
        world = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
        sport = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
        ingest(stack, dam_story(world))
        ingest(stack, article_payload(uri=sport, section="Sports", headline="Northport win"))

        [hook] = receiver.wait_for(about(sport))
        assert (
            verified(sport_only["secret"], hook)["data"]["enrichment"]["section"]["id"] == "sport"
        )
        _, latest = http_json("GET", f"{stack.delivery}/v1/latest?section=world&limit=50")
        assert world in [item["uri"] for item in latest["items"]]
        assert not [r for r in receiver.received if about(world)(r)]


def test_poison_record_is_parked_and_the_pipeline_goes_on(
    stack: RunningStack, receiver: WebhookReceiver, subscription: dict[str, Any]
) -> None:
    async def send_poison() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka)
        await producer.start()
        try:
            headers = [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"poison-1"),
                ("ce_source", b"urn:someone"),
                ("ce_type", b"newsflow.article.published"),
            ]
            await producer.send_and_wait(
                stack.topics.ingested, b'{"uri": 42}', key=b"urn:poison", headers=headers
            )
        finally:
            await producer.stop()

    asyncio.run(send_poison())
    after = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
    ingest(stack, article_payload(uri=after))

    receiver.wait_for(about(after))
    parked = asyncio.run(read_records(stack.kafka, stack.topics.dlq(stack.topics.ingested), 1))
    assert parked[0].key == b"urn:poison"
    assert b"not a valid Article" in dict(parked[0].headers)["newsflow_error"]
