"""The enrichment app: it says it is not ready while its index rebuilds, and what it holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from services.enrichment.app import EnrichmentMetrics, Pipeline, create_app

pytestmark = pytest.mark.unit


class FakeRebuild:
    """An index that is rebuilt when the test says so."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.stories = 0

    def status(self) -> dict[str, Any]:
        return {"state": "ready" if self.done.is_set() else "rebuilding", "stories": self.stories}


async def test_readyz_is_503_while_the_index_rebuilds_then_200() -> None:
    rebuild = FakeRebuild()

    @asynccontextmanager
    async def open_pipeline(_: EnrichmentMetrics) -> AsyncIterator[Pipeline]:
        async def consume() -> None:
            await asyncio.Event().wait()

        async def ready() -> bool:
            return rebuild.done.is_set()

        yield Pipeline(consume(), ready, rebuild.status)

    app = create_app(open_pipeline)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://enrichment") as client:
            waiting = await client.get("/readyz")
            assert waiting.status_code == 503
            assert waiting.json()["code"] == "not_ready"
            assert (await client.get("/v1/index")).json()["state"] == "rebuilding"

            rebuild.stories = 42
            rebuild.done.set()
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/v1/index")).json() == {"state": "ready", "stories": 42}
            assert (await client.get("/healthz")).status_code == 200
