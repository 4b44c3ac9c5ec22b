"""`newsflow import page` against a real ingest on 127.0.0.1: the stories end up on the topic."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from ops.cli import app as cli
from ops.embedded import free_port, wait_for_port
from services.ingest.app import create_app
from services.ingest.main import open_runtime
from services.ingest.settings import IngestSettings
from shared.events import Topics
from tests.integration.kafka_reading import read_records

pytestmark = pytest.mark.integration

PAGE = Path(__file__).parent.parent / "data" / "pages" / "harbour-strike.txt"


@pytest.fixture
def ingest_url(kafka_bootstrap: str, redis_url: str, prefix: str, topics: Topics) -> Iterator[str]:
    settings = IngestSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=prefix,
        redis_key_prefix=prefix,
        ingest_api_keys="acme=acme-key",
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, open_runtime), port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 15)
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


def test_a_page_is_imported_once_with_its_section(
    ingest_url: str, kafka_bootstrap: str, topics: Topics
) -> None:
    argv = ["import", "page", str(PAGE), "--provider", "acme", "--section", "Business"]
    argv += ["--ingest-url", ingest_url, "--api-key", "acme-key"]
    first = CliRunner().invoke(cli, argv)
    again = CliRunner().invoke(cli, argv)

    assert first.exit_code == 0, first.output
    assert first.output.count("accepted") == 4
    assert again.output.count("duplicate") == 4
    records = asyncio.run(read_records(kafka_bootstrap, topics.ingested, 5, within_s=2))
    stories = [json.loads(r.value or b"") for r in records]
    assert len(stories) == 4
    assert {s["section"] for s in stories} == {"Business"}
    headlines = {s["headline"] for s in stories}
    assert "Dock workers end three-day strike at Port Verrin" in headlines
    assert "Regional bank lifts savings rates for the second time this year" in headlines
