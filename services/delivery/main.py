"""Wires delivery: consumers, producer, Redis, the webhook client, the API;
`python -m services.delivery`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.delivery.adapters import (
    KafkaAttemptLog,
    KafkaJobQueue,
    KafkaSubscriptionEvents,
    KafkaSubscriptionStore,
    RedisDeliveryState,
    RedisStoryCache,
    SecretSealer,
    resolve,
)
from services.delivery.app import (
    DeliveryDeps,
    DeliveryMetrics,
    DeliveryOperations,
    DepsFactory,
    Fanout,
    Sender,
    StoryConsumer,
    create_app,
    keep_cache_built,
    rebuild_cache,
    release_embargoes,
)
from services.delivery.settings import DeliverySettings
from services.delivery.webhook_client import LeanWebhookSender
from shared.kafka import DeadLetters, make_consumer, make_producer, stop_producer
from shared.logging import get_logger
from shared.serve import freeze_startup_heap, prepare_process, serve
from shared.ssrf import Resolver
from shared.tracing import with_tracing

log = get_logger(__name__)


def _consumer(settings: DeliverySettings, topic: str, group_id: str) -> AIOKafkaConsumer:
    # A short fetch wait: jobs should go out at once, and a fetch over many partitions may
    # otherwise be held for the broker's whole max wait.
    return make_consumer(
        settings, topic, group_id, fetch_max_wait_ms=settings.delivery_fetch_max_wait_ms
    )


def secret_sealer(settings: DeliverySettings) -> SecretSealer | None:
    """What seals the subscriptions' signing secrets on their topic; None (with a warning)
    without a key. A key that is not a Fernet key stops the start with a clear error."""
    if settings.delivery_secrets_key:
        return SecretSealer(settings.delivery_secrets_key)
    log.warning(
        "subscription signing secrets are stored in plain text on the subscriptions topic; "
        "set NEWSFLOW_DELIVERY_SECRETS_KEY (`newsflow secrets-key` makes one)",
        topic=settings.topics.subscriptions,
    )
    return None


def deps_factory(settings: DeliverySettings, resolve_host: Resolver = resolve) -> DepsFactory:
    @asynccontextmanager
    async def open_deps(metrics: DeliveryMetrics) -> AsyncIterator[DeliveryDeps]:
        topics = settings.topics
        source = f"{settings.event_source}:delivery"
        async with AsyncExitStack() as stack:
            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            producer = make_producer(settings)
            await producer.start()
            stack.push_async_callback(stop_producer, producer)
            dead_letters = DeadLetters(producer, topics.dlq, metrics.consumer)
            subscriptions = KafkaSubscriptionStore(
                producer,
                settings.kafka_bootstrap_servers,
                topics.subscriptions,
                source,
                dead_letters,
                secret_sealer(settings),
            )
            # Groups carry the topic prefix too, so environments sharing a cluster stay apart.
            group = settings.topic_prefix + settings.delivery_group_id
            # The story topic is the hop to the partners now: the shared (short) fetch wait.
            stories = make_consumer(settings, topics.enriched, group)
            jobs = _consumer(settings, topics.outbox, group + "-sender")
            sender = await stack.enter_async_context(
                LeanWebhookSender(
                    resolve_host,
                    settings.delivery_allow_private_targets,
                    settings.delivery_timeout_s,
                )
            )
            cache = RedisStoryCache(redis, settings.redis_key_prefix, settings.cache_per_section)
            state = RedisDeliveryState(
                redis, settings.redis_key_prefix, settings.delivery_attempts_kept
            )
            queue = KafkaJobQueue(producer, topics)
            events = KafkaSubscriptionEvents(producer, topics.subscription_events, source)
            attempt_log = KafkaAttemptLog(producer, topics.attempts, source)
            stack.push_async_callback(attempt_log.close)  # before the producer stops
            cache_lock = asyncio.Lock()
            fanout = Fanout(cache, cache_lock, subscriptions, state, queue, metrics)
            job_sender = Sender(
                jobs, topics, subscriptions, state, queue, sender.post, attempt_log, events,
                metrics, settings,
                # Jobs of the outbox and of every retry tier are parked in one place.
                DeadLetters(producer, lambda _: topics.dlq(topics.outbox), metrics.consumer),
            )  # fmt: skip
            jobs.subscribe(job_sender.topics)
            cache_built = asyncio.Event()

            async def rebuild() -> int:
                return await rebuild_cache(
                    cache, state, settings.kafka_bootstrap_servers, topics.enriched
                )

            async def consume_stories() -> None:
                await subscriptions.wait_caught_up()
                await cache_built.wait()
                await stories.start()
                try:
                    story_consumer = StoryConsumer(
                        fanout, job_sender, dead_letters, metrics,
                        settings.delivery_commit_interval_s,
                        settings.kafka_fetch_interval_ms / 1000,
                    )  # fmt: skip
                    await story_consumer.run(stories)
                finally:
                    await stories.stop()

            async def send_jobs() -> None:
                await subscriptions.wait_caught_up()
                await jobs.start()
                try:
                    await job_sender.run()
                finally:
                    await jobs.stop()

            async def ready() -> bool:
                try:
                    return (
                        cache_built.is_set()
                        and bool(stories.assignment())
                        and bool(await redis.ping())
                    )
                except RedisError:
                    return False

            freeze_startup_heap()
            yield DeliveryDeps(
                cache=cache,
                subscriptions=subscriptions,
                resolve=resolve_host,
                operations=DeliveryOperations(
                    sender.post,
                    state,
                    queue,
                    events,
                    settings.kafka_bootstrap_servers,
                    topics.enriched,
                ),
                background=[
                    subscriptions.tail(),
                    keep_cache_built(
                        cache, cache_lock, rebuild, settings.cache_check_interval_s, cache_built
                    ),
                    consume_stories(),
                    send_jobs(),
                    release_embargoes(fanout, state, settings.embargo_poll_s),
                ],
                ready=ready,
            )

    return open_deps


async def rebuild_cache_now(settings: DeliverySettings) -> int:
    """`newsflow cache rebuild`: clears the cache keys, then rebuilds from the story topic."""
    redis = Redis.from_url(settings.redis_url)
    try:
        cache = RedisStoryCache(redis, settings.redis_key_prefix, settings.cache_per_section)
        state = RedisDeliveryState(
            redis, settings.redis_key_prefix, settings.delivery_attempts_kept
        )
        await cache.clear()
        count = await rebuild_cache(
            cache, state, settings.kafka_bootstrap_servers, settings.topics.enriched
        )
        await cache.mark_built()
        return count
    finally:
        await redis.aclose()


def create() -> FastAPI:
    """The app factory (`uvicorn --factory services.delivery.main:create --workers N`)."""
    settings = DeliverySettings()
    prepare_process(settings)
    return with_tracing(create_app(settings, deps_factory(settings)), settings)


def main() -> None:
    settings = DeliverySettings()
    prepare_process(settings)
    serve(
        with_tracing(create_app(settings, deps_factory(settings)), settings),
        settings.delivery_host,
        settings.delivery_port,
    )
