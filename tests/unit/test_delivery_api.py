"""delivery's admin and read API, over in-memory fakes and a stub resolver (no connections)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi.testclient import TestClient

from services.delivery.app import DeliveryDeps, DeliveryMetrics, create_app
from services.delivery.settings import DeliverySettings
from tests.fakes import FakeDeliveryOperations, FakeStoryCache, FakeSubscriptionStore

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer admin-secret-token"}
DNS = {"partner.example": ["93.184.215.14"], "intranet.example": ["10.0.0.5"]}


@pytest.fixture
def store() -> FakeSubscriptionStore:
    return FakeSubscriptionStore()


@pytest.fixture
def cache() -> FakeStoryCache:
    return FakeStoryCache()


@pytest.fixture
def operations() -> FakeDeliveryOperations:
    return FakeDeliveryOperations()


@pytest.fixture
def resolved() -> list[str]:
    return []


@pytest.fixture
def client(
    store: FakeSubscriptionStore,
    cache: FakeStoryCache,
    resolved: list[str],
    operations: FakeDeliveryOperations,
) -> Iterator[TestClient]:
    async def resolve(host: str) -> list[str]:
        resolved.append(host)
        return DNS.get(host, [])

    @asynccontextmanager
    async def fake_deps(_: DeliveryMetrics) -> AsyncIterator[DeliveryDeps]:
        async def ready() -> bool:
            return True

        async def idle() -> None:
            await asyncio.Event().wait()

        yield DeliveryDeps(cache, store, resolve, operations, [idle()], ready)

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
    client: TestClient, cache: FakeStoryCache
) -> None:
    cache.stories["urn:newsflow:a/b"] = b'{"uri":"urn:newsflow:a/b"}'
    assert client.get("/v1/stories/urn%3Anewsflow%3Aa%2Fb").json() == {"uri": "urn:newsflow:a/b"}
    missing = client.get("/v1/stories/urn%3Anope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json() == {
        "type": "https://newsflow.dev/problems/unknown_story",
        "title": "unknown story",
        "status": 404,
        "code": "unknown_story",
        "detail": "no live story with uri urn:nope",
    }
    # Answered before the route (sites poll for a story until it is there), counted as a miss.
    metrics = client.get("/metrics").text
    assert 'newsflow_delivery_cache_reads_total{result="miss"} 1.0' in metrics
    assert 'route="/v1/stories/{uri:path}",status="404"' in metrics


def test_latest_validates_limit(client: TestClient, cache: FakeStoryCache) -> None:
    cache.stories["u1"] = b'{"uri":"u1"}'
    assert client.get("/v1/latest?section=world&limit=5").json() == {
        "items": [{"uri": "u1"}],
        "next": None,
    }
    assert client.get("/v1/latest?limit=0").status_code == 422
    assert client.get("/v1/latest?limit=1000").json()["errors"][0]["field"] == "query.limit"


def create(client: TestClient, **fields: object) -> dict[str, object]:
    response = client.post(
        "/v1/subscriptions", json={"url": "https://partner.example/h", **fields}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def test_filters_update_pause_resume_and_get(client: TestClient) -> None:
    created = create(
        client, sections=["World"], event_types=["story.published"], keywords=["Dam"],
        languages=["en"], max_urgency=3, format="ninjs2",
    )  # fmt: skip
    sub = f"/v1/subscriptions/{created['id']}"
    assert created["keywords"] == ["dam"] and created["format"] == "ninjs2"

    changed = client.patch(sub, json={"keywords": ["Ferry"], "max_urgency": 5}, headers=ADMIN)
    assert changed.json()["keywords"] == ["ferry"]
    assert changed.json()["sections"] == ["world"]
    assert client.post(f"{sub}/pause", headers=ADMIN).json()["status"] == "paused"
    assert client.get(sub, headers=ADMIN).json()["status"] == "paused"
    assert client.post(f"{sub}/resume", headers=ADMIN).json()["status"] == "active"
    assert client.get("/v1/subscriptions/sub_nope", headers=ADMIN).status_code == 404
    bad = client.patch(sub, json={"format": "rss"}, headers=ADMIN)
    assert bad.status_code == 422


def test_a_change_made_against_what_another_admin_changed_since_is_refused_with_412(
    client: TestClient,
) -> None:
    sub = f"/v1/subscriptions/{create(client)['id']}"
    seen = client.get(sub, headers=ADMIN).headers["etag"]
    paused = client.post(f"{sub}/pause", headers=ADMIN)  # another admin, meanwhile
    current = paused.headers["etag"]
    assert seen != current

    stale = {**ADMIN, "If-Match": seen}
    for refused in (
        client.patch(sub, json={"keywords": ["ferry"]}, headers=stale),
        client.post(f"{sub}/resume", headers=stale),
        client.post(f"{sub}/rotate-secret", headers=stale),
        client.delete(sub, headers=stale),
        client.patch(
            sub, json={"keywords": ["ferry"]}, headers={**ADMIN, "If-Match": "W/" + current}
        ),
    ):
        assert refused.status_code == 412
        assert refused.json()["code"] == "subscription_changed"
        assert refused.headers["etag"] == current  # what to read again and redo the change on
    after = client.get(sub, headers=ADMIN)
    assert (after.json()["status"], after.json()["keywords"]) == ("paused", [])
    assert after.headers["etag"] == current  # nothing changed: no secret rotated, not deleted

    either = {**ADMIN, "If-Match": f'"an-older-one", {current}'}
    changed = client.patch(sub, json={"keywords": ["ferry"]}, headers=either)
    assert changed.status_code == 200 and changed.json()["keywords"] == ["ferry"]
    resumed = client.post(f"{sub}/resume", headers={**ADMIN, "If-Match": "*"})
    assert resumed.json()["status"] == "active"
    rotated = client.post(
        f"{sub}/rotate-secret", headers={**ADMIN, "If-Match": resumed.headers["etag"]}
    )
    assert rotated.status_code == 200
    assert client.get(sub, headers=ADMIN).headers["etag"] == rotated.headers["etag"]
    gone = client.delete(sub, headers={**ADMIN, "If-Match": rotated.headers["etag"]})
    assert gone.status_code == 204
    unknown = client.patch(sub, json={}, headers={**ADMIN, "If-Match": "*"})
    assert unknown.status_code == 404

    documented = client.get("/openapi.json").json()["paths"]["/v1/subscriptions/{subscription_id}"]
    assert "if-match" in [parameter["name"] for parameter in documented["patch"]["parameters"]]
    assert "ETag" in documented["patch"]["responses"]["412"]["headers"]
    assert "ETag" in documented["get"]["responses"]["200"]["headers"]


def test_update_to_a_private_url_is_refused(client: TestClient) -> None:
    created = create(client)
    response = client.patch(
        f"/v1/subscriptions/{created['id']}",
        json={"url": "https://intranet.example/h"},
        headers=ADMIN,
    )
    assert response.status_code == 422
    assert response.json()["code"] == "webhook_url_refused"


def test_rotation_keeps_the_old_secret_for_the_overlap(
    client: TestClient, store: FakeSubscriptionStore
) -> None:
    created = create(client)
    rotated = client.post(
        f"/v1/subscriptions/{created['id']}/rotate-secret", json={"overlap_s": 60}, headers=ADMIN
    ).json()
    assert rotated["secret"] != created["secret"]
    stored = store.items[str(created["id"])]
    assert stored.previous_secret == created["secret"]
    assert stored.previous_secret_expires_at is not None


def test_recover_needs_an_active_subscription(
    client: TestClient, operations: FakeDeliveryOperations
) -> None:
    created = create(client)
    sub = f"/v1/subscriptions/{created['id']}"
    client.post(f"{sub}/pause", headers=ADMIN)
    assert (
        client.post(f"{sub}/recover?since=2026-01-01T00:00:00Z", headers=ADMIN).status_code == 409
    )
    client.post(f"{sub}/resume", headers=ADMIN)
    answer = client.post(f"{sub}/recover?since=2026-01-01T00:00:00Z", headers=ADMIN)
    assert answer.status_code == 202 and answer.json() == {"queued": 3}
    assert operations.recovered[0][1].year == 2026


def test_etag_gives_304_and_cache_control(client: TestClient, cache: FakeStoryCache) -> None:
    cache.stories["u1"] = b'{"uri":"u1"}'
    first = client.get("/v1/latest")
    assert first.headers["cache-control"].startswith("public, max-age=")
    again = client.get("/v1/latest", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    cache.stories["u2"] = b'{"uri":"u2"}'
    changed = client.get("/v1/latest", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200
    story = client.get("/v1/stories/u1")
    assert (
        client.get("/v1/stories/u1", headers={"If-None-Match": story.headers["etag"]}).status_code
        == 304
    )


def test_cache_reads_answer_like_the_documented_routes(
    client: TestClient, cache: FakeStoryCache
) -> None:
    cache.stories["u1"] = b'{"uri":"u1"}'
    story = client.get("/v1/stories/u1")
    assert story.status_code == 200 and story.content == b'{"uri":"u1"}'
    assert story.headers["content-type"] == "application/json"
    assert story.headers["etag"] and story.headers["traceparent"].startswith("00-")
    page = client.get("/v1/latest?section=WORLD&limit=1")
    assert page.json() == {"items": [{"uri": "u1"}], "next": None}
    assert client.get("/v1/sections").json()["items"][0]["id"] == "world"
    # What the validator must judge is still judged by it, with the documented problem body.
    for query in ["limit=abc", "limit=%2B5x", "before=soon", "section=" + "x" * 65]:
        answer = client.get(f"/v1/latest?{query}")
        assert answer.status_code == 422 and answer.json()["code"] == "invalid_request", query
    metrics = client.get("/metrics").text
    assert 'route="/v1/stories/{uri:path}"' in metrics and 'route="/v1/latest"' in metrics
    assert 'newsflow_delivery_cache_reads_total{result="hit"} 1.0' in metrics


def test_a_page_etag_changes_when_a_story_on_it_changes(
    client: TestClient, cache: FakeStoryCache
) -> None:
    cache.stories["u1"] = b'{"uri":"u1","v":1}'
    first = client.get("/v1/latest").headers["etag"]
    assert client.get("/v1/latest").headers["etag"] == first
    cache.stories["u1"] = b'{"uri":"u1","v":2}'  # a correction, same place in the list
    assert client.get("/v1/latest", headers={"If-None-Match": first}).status_code == 200


def test_reseal_is_for_admins_and_says_how_many_it_wrote(client: TestClient) -> None:
    assert client.post("/v1/subscriptions/reseal").status_code == 401
    answer = client.post("/v1/subscriptions/reseal", headers=ADMIN)
    assert answer.status_code == 200 and answer.json() == {"resealed": 0}


def test_a_subscription_the_broker_cannot_be_read_for_now_answers_503_to_retry(
    client: TestClient, store: FakeSubscriptionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = client.post(
        "/v1/subscriptions", json={"url": "https://partner.example/hooks"}, headers=ADMIN
    ).json()

    async def broker_away(subscription_id: str) -> None:
        raise TimeoutError("the tail did not catch up")

    monkeypatch.setattr(store, "latest", broker_away)
    for method, path in [
        ("GET", f"/v1/subscriptions/{created['id']}"),
        ("POST", f"/v1/subscriptions/{created['id']}/pause"),
    ]:
        response = client.request(method, path, headers=ADMIN)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert response.json()["code"] == "unavailable"
    assert store.items[created["id"]].paused is False  # nothing written
