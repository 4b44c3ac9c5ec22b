"""Signing as a partner verifies it, and the SSRF policy on webhook targets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.delivery.domain import (
    SubscriptionRequest,
    TargetRefused,
    check_addresses,
    check_scheme,
    new_secret,
    sign,
    vet_target,
    webhook_body,
    webhook_id,
)
from shared.events import EventType

pytestmark = pytest.mark.unit


def test_partner_verifies_our_signature_with_standardwebhooks() -> None:
    secret = new_secret()
    now = datetime.now(UTC)
    body = webhook_body(EventType.PUBLISHED, now, b'{"uri":"urn:x","version":1}')
    message_id = webhook_id("sub_1", "urn:x", 1, EventType.PUBLISHED)
    timestamp = int(now.timestamp())
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }

    payload = Webhook(secret).verify(body, headers)

    assert payload["type"] == "story.published"
    assert payload["data"] == {"uri": "urn:x", "version": 1}
    assert json.loads(body)["timestamp"].endswith("Z")


def test_a_tampered_body_does_not_verify() -> None:
    secret = new_secret()
    body = b'{"type":"story.published"}'
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body),
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_webhook_id_is_stable_per_message_and_differs_per_version() -> None:
    first = webhook_id("sub_1", "urn:x", 1, EventType.PUBLISHED)
    assert first == webhook_id("sub_1", "urn:x", 1, EventType.PUBLISHED)
    assert first != webhook_id("sub_1", "urn:x", 2, EventType.UPDATED)
    assert first != webhook_id("sub_2", "urn:x", 1, EventType.PUBLISHED)


def test_generated_secrets_follow_the_whsec_format() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert SubscriptionRequest(url="https://partner.example/hook", secret=secret).secret == secret
    with pytest.raises(ValueError, match="secret"):
        SubscriptionRequest(url="https://partner.example/hook", secret="whsec_short")


@pytest.mark.parametrize(
    "url", ["ftp://partner.example/x", "file:///etc/passwd", "gopher://x", "https://", "nohost"]
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_scheme(url)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.4", "169.254.169.254", "::1",
     "fd00::1", "fe80::1", "224.0.0.1", "0.0.0.0", "100.64.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(TargetRefused, match="non-public"):
        check_addresses("partner.example", [address], allow_private=False)


def test_public_addresses_pass_and_the_setting_allows_private_ones() -> None:
    check_addresses("partner.example", ["93.184.215.14", "2606:2800:21f:cb07::1"], False)
    check_addresses("localhost", ["127.0.0.1"], allow_private=True)


async def test_refusal_happens_after_resolving_and_before_any_connection() -> None:
    asked: list[str] = []

    async def stub_resolver(host: str) -> list[str]:
        asked.append(host)
        return ["93.184.215.14", "10.0.0.7"]  # one public, one private: refused

    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7"):
        await vet_target("https://rebind.example/hook", stub_resolver, allow_private=False)
    assert asked == ["rebind.example"]


async def test_unresolvable_host_is_refused() -> None:
    async def nothing(_: str) -> list[str]:
        return []

    with pytest.raises(TargetRefused, match="does not resolve"):
        await vet_target("https://nowhere.example/hook", nothing, allow_private=True)


def test_ninjs2_rendering_of_a_full_story_validates_against_iptc_schema() -> None:
    import jsonschema

    from services.delivery.domain import to_ninjs2
    from shared.events import Story
    from tests.factories import article_payload

    schema = json.loads(
        (Path(__file__).parents[1] / "data/ninjs/ninjs-schema_2.2.json").read_text()
    )
    story = Story.model_validate(
        {
            **article_payload(
                subheadline="Sub",
                keywords=["ferry", "harbour"],
                url="https://news.example/a",
                firstcreated="2026-11-25T10:00:00Z",
                embargoed="2026-11-25T11:00:00Z",
                images=[{"href": "https://img.example/p.jpg", "caption": "Q", "credit": "D"}],
            ),
            "enrichment": {
                "section": {"id": "world", "name": "International", "confidence": 0.8,
                            "method": "classifier"},
                "related": [{"uri": "urn:x:1", "headline": "Earlier", "score": 0.7}],
                "entities": {"people": ["Irena Kass"], "places": ["Geneva"],
                             "organisations": ["United Nations"]},
            },
        }
    )  # fmt: skip
    jsonschema.validate(to_ninjs2(story), schema)
