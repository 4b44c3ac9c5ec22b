"""delivery's admin and read API, over in-memory fakes and a stub resolver (no connections)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi.testclient import TestClient

from services.delivery.app import DeliveryDeps, DeliveryMetrics, create_app
from services.delivery.settings import DeliverySettings
from tests.fakes import FakeSubscriptionStore

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer admin-secret-token"}
DNS = {"partner.example": ["93.184.215.14"], "intranet.example": ["10.0.0.5"]}


class FakeCache:
    def __init__(self) -> None:
        self.stories: dict[str, bytes] = {}

    async def latest(self, section_id: str | None, limit: int) -> list[bytes]:
        return list(self.stories.values())[:limit]

    async def story(self, uri: str) -> bytes | None:
        return self.stories.get(uri)


@pytest.fixture
def store() -> FakeSubscriptionStore:
    return FakeSubscriptionStore()


@pytest.fixture
def cache() -> FakeCache:
    return FakeCache()


@pytest.fixture
def resolved() -> list[str]:
    return []


@pytest.fixture
def client(
    store: FakeSubscriptionStore, cache: FakeCache, resolved: list[str]
) -> Iterator[TestClient]:
    async def resolve(host: str) -> list[str]:
        resolved.append(host)
        return DNS.get(host, [])

    @asynccontextmanager
    async def fake_deps(_: DeliveryMetrics) -> AsyncIterator[DeliveryDeps]:
        async def ready() -> bool:
            return True

        yield DeliveryDeps(cache, store, resolve, asyncio.Event().wait(), ready)

    settings = DeliverySettings(admin_token="admin-secret-token")
    with TestClient(create_app(settings, fake_deps)) as test_client:
        yield test_client


def test_create_subscription_returns_its_secret_once(
    client: TestClient, store: FakeSubscriptionStore
) -> None:
    response = client.post(
        "/v1/subscriptions",
        json={"url": "https://partner.example/hooks", "sections": ["World", "sport"]},
        headers=ADMIN,
    )

    assert response.status_code == 201
    created = response.json()
    assert created["id"].startswith("sub_")
    assert created["secret"].startswith("whsec_")
    assert created["sections"] == ["sport", "world"]
    listed = client.get("/v1/subscriptions", headers=ADMIN).json()["items"]
    assert [s["id"] for s in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert list(store.items) == [created["id"]]


def test_admin_token_is_required(client: TestClient) -> None:
    body = {"url": "https://partner.example/hooks"}
    assert client.post("/v1/subscriptions", json=body).status_code == 401
    wrong = client.post("/v1/subscriptions", json=body, headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    assert client.get("/v1/subscriptions").status_code == 401


def test_private_target_is_refused_with_422_before_any_connection(
    client: TestClient, store: FakeSubscriptionStore, resolved: list[str]
) -> None:
    response = client.post(
        "/v1/subscriptions", json={"url": "https://intranet.example/hook"}, headers=ADMIN
    )

    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "webhook_url_refused"
    assert problem["errors"][0]["field"] == "url"
    assert resolved == ["intranet.example"]
    assert store.items == {}


def test_non_http_scheme_is_refused_without_resolving(
    client: TestClient, resolved: list[str]
) -> None:
    response = client.post("/v1/subscriptions", json={"url": "file:///etc/passwd"}, headers=ADMIN)
    assert response.status_code == 422
    assert resolved == []


def test_delete_subscription(client: TestClient) -> None:
    created = client.post(
        "/v1/subscriptions", json={"url": "https://partner.example/h"}, headers=ADMIN
    ).json()
    assert client.delete(f"/v1/subscriptions/{created['id']}", headers=ADMIN).status_code == 204
    assert client.delete(f"/v1/subscriptions/{created['id']}", headers=ADMIN).status_code == 404


def test_story_lookup_decodes_the_uri_and_404s_unknown(
    client: TestClient, cache: FakeCache
) -> None:
    cache.stories["urn:newsflow:a/b"] = b'{"uri":"urn:newsflow:a/b"}'
    assert client.get("/v1/stories/urn%3Anewsflow%3Aa%2Fb").json() == {"uri": "urn:newsflow:a/b"}
    missing = client.get("/v1/stories/urn%3Anope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "unknown_story"


def test_latest_validates_limit(client: TestClient, cache: FakeCache) -> None:
    cache.stories["u1"] = b'{"uri":"u1"}'
    assert client.get("/v1/latest?section=world&limit=5").json() == {"items": [{"uri": "u1"}]}
    assert client.get("/v1/latest?limit=0").status_code == 422
    assert client.get("/v1/latest?limit=1000").json()["errors"][0]["field"] == "query.limit"
