"""The /ops page as ops meet it: sign in with the admin token, then see subscription health."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from services.delivery.domain import RecentDelivery, Subscription, SubscriptionRequest
from services.delivery.ops_page import COOKIE, StatusSource, add_ops_routes, health_of
from services.delivery.status_page import Pulse

pytestmark = pytest.mark.unit

TOKEN = "ops-admin-token"


def attempt(webhook_id: str, outcome: str, **more: Any) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "outcome": outcome,
        "attempted_at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC).isoformat(),
        **more,
    }


class FakeSource:
    def __init__(self) -> None:
        self.subscription = Subscription.create(
            SubscriptionRequest(url="https://partner.example/hooks", description="Partner One")
        )

    async def subscriptions(self) -> list[Subscription]:
        return [self.subscription]

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]:
        attempts = [
            attempt("msg_2", "failed", error="HTTP 503", next_retry_at="2026-11-25T12:05:00Z"),
            attempt("msg_1", "delivered"),
        ]
        return [RecentDelivery(attempts[:limit], 2) for _ in subscription_ids]

    async def sections(self) -> list[str]:
        return ["world"]

    async def latest(self, section_id: str, limit: int) -> list[bytes]:
        return [b'{"uri":"urn:a","headline":"Talks resume","versioncreated":"2026-11-25T11:00"}']


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    source = FakeSource()

    def source_of(_: Request) -> StatusSource:
        return source

    add_ops_routes(app, TOKEN, source_of, Pulse())
    with TestClient(app) as test_client:
        yield test_client


def test_page_needs_the_admin_token(client: TestClient) -> None:
    first = client.get("/ops", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/ops/login"
    wrong = client.post("/ops/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    client.cookies.set(COOKIE, "forged")
    assert client.get("/ops", follow_redirects=False).status_code == 303


def test_signed_in_page_shows_subscription_health_and_latest(client: TestClient) -> None:
    signed_in = client.post("/ops/login", data={"token": TOKEN}, follow_redirects=False)
    assert signed_in.status_code == 303
    assert TOKEN not in signed_in.headers["set-cookie"]
    assert "httponly" in signed_in.headers["set-cookie"].lower()

    page = client.get("/ops")
    assert page.status_code == 200
    assert "Partner One" in page.text
    assert "50.0%" in page.text  # one of two recent attempts delivered
    assert "HTTP 503" in page.text
    assert "Talks resume" in page.text
    assert page.headers["cache-control"] == "no-store"


def test_backlog_counts_waiting_retries_and_dead_letters() -> None:
    subscription = FakeSource().subscription
    attempts = [
        attempt("msg_3", "failed", next_retry_at="2026-11-25T12:05:00Z"),
        attempt("msg_2", "delivered"),
        attempt("msg_2", "failed", next_retry_at="2026-11-25T12:01:00Z"),
    ]
    health = health_of(subscription, attempts, dead=1)
    assert health.backlog == 2  # msg_3 waits; msg_2 got through later; one dead letter
    assert health.success_rate == pytest.approx(1 / 3)
