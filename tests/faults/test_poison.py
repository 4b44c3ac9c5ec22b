"""Poison records on every topic a service reads are parked on a DLQ; consumers keep going."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from tests.faults.harness import Infra, Partner, Sent, Stack, post_stories, read_topic, stories

pytestmark = pytest.mark.faults

CE = [
    ("ce_specversion", b"1.0"),
    ("ce_source", b"urn:someone"),
    ("ce_time", b"2026-01-01T00:00:00Z"),
]


def poison_kinds(tag: str) -> list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) of records no consumer can use."""
    ce = [*CE, ("content-type", b"application/json")]
    return [
        (f"{tag}-no-headers".encode(), b'{"uri": "x"}', []),
        (
            f"{tag}-not-json".encode(),
            b"\xff\xfe<html>",
            [*ce, ("ce_id", b"p1"), ("ce_type", b"newsflow.article.published")],
        ),
        (
            f"{tag}-wrong-shape".encode(),
            b'{"uri": 42, "version": "x"}',
            [*ce, ("ce_id", b"p2"), ("ce_type", b"newsflow.article.published")],
        ),
        (
            f"{tag}-unknown-type".encode(),
            b"{}",
            [*ce, ("ce_id", b"p3"), ("ce_type", b"com.example.nonsense")],
        ),
        (
            f"{tag}-huge-garbage".encode(),
            b"[" * 100_000,
            [*ce, ("ce_id", b"p4"), ("ce_type", b"newsflow.article.updated")],
        ),
    ]


async def send_poison(bootstrap: str, topics: list[str]) -> dict[str, set[bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    await producer.start()
    sent: dict[str, set[bytes]] = {}
    try:
        for topic in topics:
            for key, value, headers in poison_kinds(f"poison-{uuid.uuid4().hex[:6]}"):
                await producer.send_and_wait(topic, value, key=key, headers=headers)
                sent.setdefault(topic, set()).add(key)
    finally:
        await producer.stop()
    return sent


def test_poison_on_the_contract_topics_is_parked_and_the_pipeline_goes_on(
    infra: Infra, partner: Partner
) -> None:
    stack = Stack(infra).start()
    try:
        check_poison(stack, partner, [stack.topics.ingested, stack.topics.enriched])
    finally:
        stack.stop()


def test_poison_on_delivery_internal_topics_is_parked(infra: Infra, partner: Partner) -> None:
    stack = Stack(infra).start()
    try:
        every = [spec.name for spec in stack.topics.all()]
        internal = [
            name
            for name in every
            if ".dlq." not in name
            # Records that newsflow writes and only other teams read have no consumer here.
            and name
            not in (
                stack.topics.ingested,
                stack.topics.enriched,
                stack.topics.attempts,
                stack.topics.subscription_events,
            )
        ]
        check_poison(stack, partner, internal)
    finally:
        stack.stop()


def check_poison(stack: Stack, partner: Partner, targets: list[str]) -> None:
    """Poison on `targets`, then stories: the stories arrive and every poison record is on a
    DLQ; the services stay ready."""
    stack.subscribe(partner.url("all"), [])
    dlqs = [spec.name for spec in stack.topics.all() if ".dlq." in spec.name]
    poisoned = asyncio.run(send_poison(stack.kafka, targets))
    sent = Sent()
    asyncio.run(post_stories(stack.url("ingest"), stories("poison", 20), sent))
    partner.wait(
        lambda: {(h.uri, h.version) for h in partner.delivered("all")} >= set(sent.accepted),
        within_s=60,
        what="stories after the poison delivered",
    )
    for name in ("ingest", "enrichment", "delivery"):
        stack.wait_ready(name, timeout=5)
    parked: set[bytes] = set()
    for dlq in dlqs:
        records = asyncio.run(read_topic(stack.kafka, dlq, quiet_s=2))
        parked |= {key for key, _, _ in records if key is not None}
    for topic, keys in poisoned.items():
        print(f"\n{topic}: {len(keys & parked)}/{len(keys)} poison records parked", end="")
    missing = {t: sorted(k - parked) for t, k in poisoned.items() if k - parked}
    assert missing == {}, f"poison not parked on any DLQ: {missing}"
