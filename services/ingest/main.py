"""Wires ingest: settings, logging, the producer and Redis, the app; `python -m services.ingest`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.ingest.adapters import KafkaArticlePublisher, RedisLedger
from services.ingest.app import Ready, create_app
from services.ingest.domain import Intake
from services.ingest.settings import IngestSettings
from shared.kafka import make_producer
from shared.logging import configure_logging
from shared.serve import serve


@asynccontextmanager
async def open_intake(settings: IngestSettings) -> AsyncIterator[tuple[Intake, Ready]]:
    async with AsyncExitStack() as stack:
        producer = make_producer(settings)
        await producer.start()
        stack.push_async_callback(producer.stop)  # stop() flushes what is in flight
        redis = Redis.from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        intake = Intake(
            KafkaArticlePublisher(producer, settings.topics.ingested),
            RedisLedger(redis, settings.redis_key_prefix),
            source=f"{settings.event_source}:ingest",
        )

        async def ready() -> bool:
            try:
                return bool(await redis.ping())
            except RedisError:
                return False

        yield intake, ready


def main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level, settings.log_format)
    serve(create_app(settings, open_intake), settings.ingest_host, settings.ingest_port)
