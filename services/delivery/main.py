"""Wires delivery: consumer, producer, Redis, aiohttp and the API; `python -m services.delivery`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.delivery.adapters import (
    AiohttpWebhookSender,
    KafkaAttemptLog,
    RedisStoryCache,
    RedisSubscriptionStore,
    resolve,
)
from services.delivery.app import (
    DeliveryDeps,
    DeliveryMetrics,
    DepsFactory,
    Dispatcher,
    create_app,
)
from services.delivery.settings import DeliverySettings
from shared.kafka import DeadLetters, consume_forever, make_consumer, make_producer
from shared.logging import configure_logging
from shared.serve import serve


def deps_factory(settings: DeliverySettings) -> DepsFactory:
    @asynccontextmanager
    async def open_deps(metrics: DeliveryMetrics) -> AsyncIterator[DeliveryDeps]:
        topics = settings.topics
        async with AsyncExitStack() as stack:
            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            producer = make_producer(settings)
            await producer.start()
            stack.push_async_callback(producer.stop)
            consumer = make_consumer(settings, topics.enriched, settings.delivery_group_id)
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            )
            cache = RedisStoryCache(redis, settings.redis_key_prefix, settings.cache_per_section)
            subscriptions = RedisSubscriptionStore(redis, settings.redis_key_prefix)
            dead_letters = DeadLetters(producer, topics.dlq)
            dispatcher = Dispatcher(
                cache,
                subscriptions,
                AiohttpWebhookSender(session, settings.delivery_timeout_s),
                KafkaAttemptLog(producer, topics.attempts, f"{settings.event_source}:delivery"),
                dead_letters,
                metrics,
                settings,
            )

            async def ready() -> bool:
                try:
                    return bool(consumer.assignment()) and bool(await redis.ping())
                except RedisError:
                    return False

            yield DeliveryDeps(
                cache=cache,
                subscriptions=subscriptions,
                resolve=resolve,
                consume=consume_forever(consumer, dispatcher.handle, dead_letters),
                ready=ready,
            )

    return open_deps


def main() -> None:
    settings = DeliverySettings()
    configure_logging(settings.log_level, settings.log_format)
    serve(
        create_app(settings, deps_factory(settings)), settings.delivery_host, settings.delivery_port
    )
