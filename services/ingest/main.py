"""Wires ingest: settings, logging, producer, Redis, feeds, the app; `python -m services.ingest`."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.ingest.adapters import (
    HttpFeedFetcher,
    KafkaArticlePublisher,
    RedisFeedRegistry,
    RedisIdempotencyStore,
    RedisLedger,
    RedisRateLimiter,
    vet_feed_url,
)
from services.ingest.app import IngestRuntime, create_app
from services.ingest.domain import Intake
from services.ingest.feeds import FeedPoller
from services.ingest.settings import IngestSettings
from shared.kafka import make_producer, stop_producer
from shared.logging import get_logger
from shared.serve import freeze_startup_heap, prepare_process, serve
from shared.tracing import with_tracing

log = get_logger(__name__)


@asynccontextmanager
async def open_runtime(settings: IngestSettings) -> AsyncIterator[IngestRuntime]:
    async with AsyncExitStack() as stack:
        producer = make_producer(settings)
        await producer.start()
        # Graceful shutdown: every record still in flight is flushed before closing.
        stack.push_async_callback(stop_producer, producer)
        redis = Redis.from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        )
        intake = Intake(
            KafkaArticlePublisher(
                producer, settings.topics.ingested, settings.ingest_ack_timeout_s
            ),
            RedisLedger(redis, settings.redis_key_prefix, settings.ingest_claim_window_ms / 1000),
            source=f"{settings.event_source}:ingest",
            publish_timeout_s=settings.ingest_ack_timeout_s,
        )
        registry = RedisFeedRegistry(redis, settings.redis_key_prefix)
        poller = FeedPoller(
            registry,
            HttpFeedFetcher(session, settings.ingest_feeds_allow_private),
            intake,
            settings.ingest_uri_namespace,
            settings.limits,
        )

        async def ready() -> bool:
            try:
                return bool(await redis.ping())
            except RedisError:
                return False

        async def vet(url: str) -> None:
            await vet_feed_url(url, settings.ingest_feeds_allow_private)

        freeze_startup_heap()
        yield IngestRuntime(
            intake=intake,
            ready=ready,
            rate_limiter=RedisRateLimiter(
                redis,
                settings.redis_key_prefix,
                settings.ingest_rate_limit,
                settings.ingest_rate_window_s,
            ),
            idempotency=RedisIdempotencyStore(redis, settings.redis_key_prefix),
            feeds=registry,
            vet_feed_url=vet,
            poller=poller,
        )


def build() -> FastAPI:
    """The app from the environment: what each uvicorn worker process calls."""
    settings = IngestSettings()
    prepare_process(settings)
    if not len(settings.api_keys):
        log.warning("no API keys configured: every write will be refused")
    return with_tracing(create_app(settings, open_runtime), settings)


def main() -> None:
    settings = IngestSettings()
    if settings.ingest_workers <= 1:
        serve(build(), settings.ingest_host, settings.ingest_port)
        return
    prepare_process(settings)  # the workers inherit the scheduling policy
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    uvicorn.run(
        "services.ingest.main:build",
        factory=True,
        host=settings.ingest_host,
        port=settings.ingest_port,
        workers=settings.ingest_workers,
        loop=loop,
        log_config=None,
        access_log=False,
    )
