"""Signing as a partner verifies it, and the SSRF policy on webhook targets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.delivery.domain import (
    Job,
    Subscription,
    SubscriptionRequest,
    new_secret,
    sign,
    webhook_body,
    webhook_headers,
    webhook_id,
)
from shared.events import DeliveryAttempt, EventType, encode, encode_attempt
from shared.ssrf import TargetRefused, check_addresses, check_scheme, vet_target

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


def _answer(status: int | None, retry_after: str | None = None) -> Any:
    from services.delivery.domain import Answer

    error = None if status and 200 <= status < 300 else f"HTTP {status}"
    return Answer(status, error, 1.0, None, retry_after)


def test_what_an_answer_means() -> None:
    from services.delivery.domain import judge

    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    schedule = [0, 5, 300]
    assert judge(_answer(204), 1, schedule, now, 0, 3600).outcome == "delivered"
    assert judge(_answer(410), 1, schedule, now, 0, 3600).outcome == "gone"
    assert judge(_answer(302), 1, schedule, now, 0, 3600).delay_s == 5
    assert judge(_answer(500), 2, schedule, now, 0, 3600).delay_s == 300
    assert judge(_answer(500), 3, schedule, now, 0, 3600).outcome == "gave_up"
    assert judge(_answer(503, "120"), 1, schedule, now, 0, 3600).delay_s == 120
    asked = judge(_answer(429, "Wed, 25 Nov 2026 12:10:00 GMT"), 1, schedule, now, 0, 3600)
    assert asked.delay_s == 600
    assert judge(_answer(503, "999999"), 1, schedule, now, 0, 3600).delay_s == 3600
    assert judge(_answer(500, "120"), 1, schedule, now, 0, 3600).delay_s == 5  # not honoured
    jittered = [judge(_answer(None), 2, schedule, now, 0.2, 3600).delay_s for _ in range(50)]
    assert all(240 <= (d or 0) <= 360 for d in jittered) and len(set(jittered)) > 1


def test_retry_tiers_and_hops() -> None:
    from services.delivery.domain import should_hop, tier_for

    assert tier_for(0.4) is None
    assert tier_for(5) == 5 and tier_for(299) == 120 and tier_for(36000) == 21600
    assert not should_hop(120, 150) and should_hop(5, 300) and should_hop(None, 3)


def test_breaker_opens_after_failures_in_a_row_and_closes_on_success() -> None:
    from services.delivery.domain import Breaker

    breaker = Breaker(failures=3, cooldown_s=30)
    for _ in range(2):
        breaker.record("e", ok=False, now=100)
    assert breaker.open_until("e", 100) is None
    breaker.record("e", ok=False, now=100)
    assert breaker.open_until("e", 101) == 130
    assert breaker.open_until("e", 131) is None
    breaker.record("e", ok=True, now=131)
    breaker.record("e", ok=False, now=132)
    assert breaker.open_until("e", 132) is None


def test_filters_and_rotation_overlap() -> None:
    from datetime import timedelta

    from services.delivery.domain import Subscription
    from shared.events import Story
    from tests.factories import article_payload

    story = Story.model_validate(
        {
            **article_payload(urgency=2, language="en-GB", keywords=["Ferry"]),
            "enrichment": {"section": {"id": "world", "name": "International",
                                       "confidence": 1, "method": "provider"}},
        }
    )  # fmt: skip
    sub = Subscription.create(
        SubscriptionRequest(
            url="https://p.example/h", sections=["World"], languages=["en"], keywords=["ferry"],
            max_urgency=3, event_types=["story.published", "story.withdrawn"],
        )
    )  # fmt: skip
    assert sub.wants(story, EventType.PUBLISHED)
    assert not sub.wants(story, EventType.UPDATED)
    assert not sub.model_copy(update={"max_urgency": 1}).wants(story, EventType.PUBLISHED)
    assert not sub.model_copy(update={"languages": ["fr"]}).wants(story, EventType.PUBLISHED)
    assert not sub.model_copy(update={"keywords": ["dam"]}).wants(story, EventType.PUBLISHED)

    now = datetime(2026, 11, 25, tzinfo=UTC)
    rotated = sub.rotated(new_secret(), timedelta(hours=24), now)
    assert rotated.signing_secrets(now) == [rotated.secret, sub.secret]
    assert rotated.signing_secrets(now + timedelta(hours=25)) == [rotated.secret]


def test_a_webhook_body_is_the_story_bytes_in_their_envelope() -> None:
    story = b'{"uri":"urn:x","headline":"Caf\xc3\xa9"}'
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert webhook_body(EventType.UPDATED, at, story) == (
        b'{"type":"story.updated","timestamp":"2026-01-02T03:04:05.123456Z","data":' + story + b"}"
    )
    # Another zone: the same moment, in UTC.
    paris = at.astimezone(timezone(timedelta(hours=1)))
    assert webhook_body(EventType.UPDATED, paris, story) == webhook_body(
        EventType.UPDATED, at, story
    )


def test_during_a_rotation_both_secrets_sign_and_each_verifies() -> None:
    sub = Subscription.create(SubscriptionRequest(url="https://p.example/h"))
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    rotated = sub.rotated(new_secret(), timedelta(hours=24), now)
    body = webhook_body(EventType.PUBLISHED, now, b'{"uri":"urn:x"}')
    message_id = webhook_id(sub.id, "urn:x", 1, EventType.PUBLISHED)
    headers = webhook_headers(rotated, message_id, now, body)
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (rotated.secret, sub.secret):
        # `verify` refuses a timestamp this old: the signature it would expect, then.
        assert _signed_by(Webhook(secret), body, headers)
    later = now + timedelta(hours=25)
    assert " " not in webhook_headers(rotated, message_id, later, body)["webhook-signature"]


def _signed_by(webhook: Webhook, body: bytes, headers: dict[str, str]) -> bool:
    expected = webhook.sign(headers["webhook-id"], _at(headers), body.decode())
    return expected in headers["webhook-signature"].split(" ")


def _at(headers: dict[str, str]) -> datetime:
    return datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)


ATTEMPT_CASES = [
    # delivered at once
    dict(status_code=204, outcome="delivered", duration_ms=1.23, error=None,
         next_retry_at=None, response_body=None),
    # failed: no status, an error with a line break and a control character, a retry
    dict(status_code=None, outcome="failed", duration_ms=15000.0,
         error="TimeoutError: no answer within 15 s\n\x00", response_body=None,
         next_retry_at=datetime(2026, 1, 1, 0, 5, 0, 250000, tzinfo=UTC)),
    # gave up: an answer body with non-ASCII text, empty strings kept, a float's long repr
    dict(status_code=500, outcome="gave_up", duration_ms=0.1 + 0.2, error="",
         next_retry_at=None, response_body='{"détail": "ça va \U0001f600"}'),
]  # fmt: skip


@pytest.mark.parametrize("case", ATTEMPT_CASES)
def test_an_attempt_record_is_the_encoded_attempt_model(case: dict[str, Any]) -> None:
    job = Job("sub_1", "urn:é:1", 3, EventType.UPDATED, 2, 0.0, b"{}")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    url = 'https://p.example/h?a=1&b="2"'
    fields = dict(
        subscription_id=job.subscription_id, webhook_id=job.message_id, story_uri=job.story_uri,
        story_version=job.version, event_type="story.updated", url=url, attempt=job.attempt,
        attempted_at=at, **case,
    )  # fmt: skip
    record = encode_attempt(**fields)
    model = DeliveryAttempt.model_construct(**fields)
    assert record == encode(model)
    # What a reader of deliveries.attempts.v1 decodes (a timeout's record has no status code).
    assert DeliveryAttempt.model_validate_json(record) == DeliveryAttempt(**fields)


def test_an_attempt_record_has_every_field_of_the_model_in_its_order() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    fields = dict(
        subscription_id="sub_1", webhook_id="msg_1", story_uri="urn:x", story_version=1,
        event_type="story.published", url="https://p.example/h", attempt=1, status_code=503,
        outcome="failed", duration_ms=2.5, error="HTTP 503", attempted_at=at, next_retry_at=at,
        response_body="",
    )  # fmt: skip
    record = encode_attempt(**fields)
    assert list(json.loads(record)) == list(DeliveryAttempt.model_fields)
    with pytest.raises(TypeError, match="subscription_id"):
        encode_attempt(**{**fields, "retries": 2})
    with pytest.raises(KeyError):
        encode_attempt(**{k: v for k, v in fields.items() if k != "url"}, retries=2)
