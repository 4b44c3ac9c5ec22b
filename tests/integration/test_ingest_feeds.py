"""Feed polling as ops use it: register feeds over HTTP, read the articles back from the topic.

The feeds are local files served by a small HTTP server on 127.0.0.1 that honours ETag and
Last-Modified (or not, for one feed), so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.ingest.app import create_app
from services.ingest.main import open_runtime
from services.ingest.settings import IngestSettings
from shared.events import Topics
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration

FEEDS = Path(__file__).parent.parent / "data" / "feeds"
AUTH = {"Authorization": "Bearer wire-key"}


class FeedServer:
    """Serves `files[path]`; answers 304 when the client's validators match (unless `plain`)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plain: set[str] = set()
        self.conditional_hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                etag = f'"{abs(hash(body))}"'
                modified = "Tue, 24 Nov 2026 12:00:00 GMT"
                if self.path not in server.plain and (
                    self.headers.get("If-None-Match") == etag
                    or self.headers.get("If-Modified-Since") == modified
                ):
                    server.conditional_hits.append(self.path)
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                if self.path not in server.plain:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", modified)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    for name in ("world.rss", "science.atom", "broken.rss"):
        server.files[f"/{name}"] = (FEEDS / name).read_bytes()
    yield server
    server.stop()


def wait_until(check: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def feed_states(client: TestClient) -> dict[str, dict[str, Any]]:
    return {s["feed"]["url"]: s["state"] for s in client.get("/v1/feeds", headers=AUTH).json()}


def test_feeds_are_polled_once_per_change_and_a_broken_one_is_reported(
    kafka_bootstrap: str, redis_url: str, prefix: str, topics: Topics, feed_server: FeedServer
) -> None:
    settings = IngestSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=prefix,
        redis_key_prefix=prefix,
        ingest_api_keys="wire=wire-key",
        ingest_feeds_allow_private=True,
        ingest_feed_tick_s=0.1,
    )
    feed_server.plain.add("/science.atom")  # no validators: every poll fetches it whole
    urls = {name: f"{feed_server.base}/{name}" for name in ("world.rss", "science.atom")}
    broken = f"{feed_server.base}/broken.rss"

    with TestClient(create_app(settings, open_runtime)) as client:
        for url in [*urls.values(), broken]:
            feed = {"url": url, "provider": "wire", "section": "World", "interval_s": 1}
            assert client.post("/v1/feeds", json=feed, headers=AUTH).status_code == 201
        other = {"url": broken, "provider": "someone-else"}
        assert client.post("/v1/feeds", json=other, headers=AUTH).status_code == 403

        wait_until(lambda: feed_states(client)[broken]["status"] == "error")
        wait_until(lambda: feed_states(client)[urls["world.rss"]]["status"] == "not_modified")
        wait_until(lambda: feed_states(client)[urls["science.atom"]]["last_success_at"] is not None)
        states = feed_states(client)
        assert "not a feed" in states[broken]["last_error"]
        polls_of_science = states[urls["science.atom"]]["last_polled_at"]
        wait_until(
            lambda: feed_states(client)[urls["science.atom"]]["last_polled_at"] != polls_of_science
        )

    # A restart polls again from Redis state; the ledger keeps entries from being sent twice.
    with TestClient(create_app(settings, open_runtime)) as client:
        time.sleep(1.5)
        assert feed_states(client)[urls["science.atom"]]["entries_accepted"] == 2

    records = asyncio.run(read_records(kafka_bootstrap, topics.ingested, 6, within_s=8))
    assert len(records) == 5
    articles = {r.key.decode(): json.loads(r.value or b"") for r in records if r.key}
    rss = articles["urn:newsflow:wire:hw-world-1001"]
    assert rss["section"] == "International"
    assert rss["keywords"] == ["Environment"]
    assert rss["byline"] == "Mira Solberg"
    assert rss["language"] == "en-gb"
    assert "script" not in rss["body_html"]
    assert rss["images"] == [
        {
            "href": "https://img.example.com/1001.jpg",
            "caption": "A gauge on the Seralin river.",
            "credit": "Harbourside Wire / Jon Aas",
        }
    ]
    assert articles["urn:newsflow:wire:hw-world-1002"]["section"] == "World"
    assert articles["urn:newsflow:wire:hw-world-1002"]["images"][0]["href"].endswith(".png")
    atom = articles["urn:newsflow:wire:tag:nordlicht.example,2026:science/77"]
    assert atom["language"] == "de"
    assert atom["version"] == 1_795_518_000  # `updated` 2026-11-24T11:00:00Z as epoch seconds
    assert atom["body_text"] == "Die Drohnen fliegen ohne GPS."
    assert feed_server.conditional_hits


def test_private_feed_hosts_are_refused_by_default(
    kafka_bootstrap: str, redis_url: str, prefix: str, topics: Topics
) -> None:
    settings = IngestSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=prefix,
        redis_key_prefix=prefix,
        ingest_api_keys="wire=wire-key",
    )
    with TestClient(create_app(settings, open_runtime)) as client:
        feed = {"url": "http://127.0.0.1:9/feed.xml", "provider": "wire"}
        response = client.post("/v1/feeds", json=feed, headers=AUTH)

    assert response.status_code == 422
    assert response.json()["code"] == "feed_url_refused"
    assert response.json()["errors"][0]["field"] == "url"
