"""delivery's entrypoints: the consumer that caches and fans out stories, and the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from services.delivery.adapters import (
    AiohttpWebhookSender,
    CachedStory,
    KafkaAttemptLog,
    RedisStoryCache,
)
from services.delivery.domain import (
    Resolver,
    StoryCache,
    Subscription,
    SubscriptionRequest,
    SubscriptionStore,
    TargetRefused,
    sign,
    vet_target,
    webhook_body,
    webhook_id,
)
from services.delivery.settings import DeliverySettings
from shared.events import DeliveryAttempt, EventType, InvalidEvent, Story, decode_story
from shared.http import BearerTokens, Problem, add_health_routes, install_problem_handlers
from shared.kafka import DeadLetters, IncomingRecord
from shared.logging import get_logger
from shared.serve import background

log = get_logger(__name__)


class DeliveryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "newsflow_delivery_webhooks",
            "Webhook attempts, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "newsflow_delivery_webhook_seconds", "Webhook attempt duration", registry=self.registry
        )
        self.cached = Counter(
            "newsflow_delivery_cache_writes", "Stories written to the cache", registry=self.registry
        )
        self.parked = Counter(
            "newsflow_delivery_parked_records", "Records sent to the DLQ", registry=self.registry
        )


@dataclass(frozen=True)
class Outgoing:
    story: Story
    story_json: bytes
    event_type: EventType


class Dispatcher:
    """Handles a batch of enriched stories: cache first, then every matching subscription.

    Per subscription, stories go out one after another in topic order, so a correction never
    overtakes its original; different subscriptions are served concurrently.
    """

    def __init__(
        self,
        cache: RedisStoryCache,
        subscriptions: SubscriptionStore,
        sender: AiohttpWebhookSender,
        attempts: KafkaAttemptLog,
        dead_letters: DeadLetters,
        metrics: DeliveryMetrics,
        settings: DeliverySettings,
    ) -> None:
        self._cache = cache
        self._subscriptions = subscriptions
        self._sender = sender
        self._attempts = attempts
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._retry_delays = settings.delivery_retry_delays_s or [0.0]
        self._in_flight = asyncio.Semaphore(settings.delivery_max_in_flight)

    async def handle(self, records: list[IncomingRecord]) -> None:
        outgoing: list[Outgoing] = []
        for record in records:
            try:
                story = decode_story(record.value)
                event_type = EventType(record.meta.type)
            except (InvalidEvent, ValueError) as exc:
                self._metrics.parked.inc()
                await self._dead_letters.park(record, str(exc))
                continue
            assert record.value is not None
            outgoing.append(Outgoing(story, record.value, event_type))
        if not outgoing:
            return
        await self._cache.apply([_cached(o) for o in outgoing])
        self._metrics.cached.inc(len(outgoing))
        subscriptions = await self._subscriptions.all()
        await asyncio.gather(
            *(self._deliver_in_order(sub, outgoing) for sub in subscriptions if sub.active)
        )
        await self._attempts.flush()

    async def _deliver_in_order(
        self, subscription: Subscription, batch: Sequence[Outgoing]
    ) -> None:
        for item in batch:
            if subscription.wants(item.story.enrichment.section.id):
                await self._deliver(subscription, item)

    async def _deliver(self, subscription: Subscription, item: Outgoing) -> None:
        message_id = webhook_id(
            subscription.id, item.story.uri, item.story.version, item.event_type
        )
        with structlog.contextvars.bound_contextvars(
            subscription_id=subscription.id, article_uri=item.story.uri, webhook_id=message_id
        ):
            for attempt, delay in enumerate(self._retry_delays, start=1):
                await asyncio.sleep(delay)
                now = datetime.now(UTC)
                body = webhook_body(item.event_type, now, item.story_json)
                timestamp = int(now.timestamp())
                headers = {
                    "content-type": "application/json",
                    "user-agent": "newsflow-webhooks/1",
                    "webhook-id": message_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(subscription.secret, message_id, timestamp, body),
                }
                async with self._in_flight:
                    response = await self._sender.post(subscription.url, body, headers)
                last = attempt == len(self._retry_delays)
                outcome = "delivered" if response.error is None else "gave_up" if last else "failed"
                self._metrics.webhooks.labels(outcome).inc()
                self._metrics.webhook_latency.observe(response.duration_ms / 1000)
                await self._attempts.record(
                    DeliveryAttempt(
                        subscription_id=subscription.id,
                        webhook_id=message_id,
                        story_uri=item.story.uri,
                        story_version=item.story.version,
                        event_type=item.event_type.webhook_type,
                        url=subscription.url,
                        attempt=attempt,
                        status_code=response.status,
                        outcome=outcome,
                        duration_ms=response.duration_ms,
                        error=response.error,
                        attempted_at=now,
                    )
                )
                if response.error is None:
                    log.info("webhook delivered", attempt=attempt, status=response.status)
                    return
                log.warning("webhook attempt failed", attempt=attempt, error=response.error)


def _cached(item: Outgoing) -> CachedStory:
    return CachedStory(
        uri=item.story.uri,
        section_id=item.story.enrichment.section.id,
        versioncreated=item.story.versioncreated.timestamp(),
        withdrawn=item.story.is_withdrawn or item.event_type is EventType.WITHDRAWN,
        story_json=item.story_json,
    )


# --- HTTP ----------------------------------------------------------------------------------


class SubscriptionCreated(BaseModel):
    id: str
    url: str
    sections: list[str]
    secret: str
    created_at: datetime
    active: bool


class SubscriptionView(BaseModel):
    """A subscription as listed: never with its secret."""

    id: str
    url: str
    sections: list[str]
    description: str | None
    created_at: datetime
    active: bool


@dataclass
class DeliveryDeps:
    cache: StoryCache
    subscriptions: SubscriptionStore
    resolve: Resolver
    consume: Awaitable[None]
    ready: Callable[[], Awaitable[bool]]


DepsFactory = Callable[[DeliveryMetrics], AbstractAsyncContextManager[DeliveryDeps]]


def get_deps(request: Request) -> DeliveryDeps:
    deps: DeliveryDeps = request.app.state.deps
    return deps


def admin_only(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    admin: BearerTokens = request.app.state.admin
    admin.check(authorization)


Deps = Annotated[DeliveryDeps, Depends(get_deps)]


def create_app(settings: DeliverySettings, open_deps: DepsFactory) -> FastAPI:
    metrics = DeliveryMetrics()
    tasks: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_deps(metrics) as deps:
            app.state.deps = deps
            async with background(deps.consume, "delivery-consumer") as task:
                tasks.append(task)
                yield

    app = FastAPI(
        title="newsflow delivery",
        version="1",
        description="Subscriptions for signed webhooks, and the latest-news cache.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.state.admin = BearerTokens([settings.admin_token])

    async def is_ready() -> bool:
        deps: DeliveryDeps | None = getattr(app.state, "deps", None)
        consuming = bool(tasks) and not tasks[0].done()
        return deps is not None and consuming and await deps.ready()

    add_health_routes(app, metrics.registry, is_ready)

    @app.post(
        "/v1/subscriptions",
        status_code=201,
        response_model=SubscriptionCreated,
        dependencies=[Depends(admin_only)],
    )
    async def create_subscription(body: SubscriptionRequest, deps: Deps) -> Subscription:
        """Subscribe a webhook endpoint; the answer holds the signing secret (shown once)."""
        try:
            await vet_target(body.url, deps.resolve, settings.delivery_allow_private_targets)
        except TargetRefused as exc:
            raise Problem(
                422, "webhook_url_refused", str(exc), errors=[{"field": "url", "message": str(exc)}]
            ) from exc
        subscription = Subscription.create(body)
        await deps.subscriptions.add(subscription)
        log.info("subscription created", subscription_id=subscription.id)
        return subscription

    @app.get(
        "/v1/subscriptions",
        response_model=dict[str, list[SubscriptionView]],
        dependencies=[Depends(admin_only)],
    )
    async def list_subscriptions(deps: Deps) -> dict[str, Any]:
        return {"items": await deps.subscriptions.all()}

    @app.delete(
        "/v1/subscriptions/{subscription_id}", status_code=204, dependencies=[Depends(admin_only)]
    )
    async def delete_subscription(subscription_id: str, deps: Deps) -> Response:
        if not await deps.subscriptions.remove(subscription_id):
            raise Problem(404, "unknown_subscription", f"no subscription {subscription_id}")
        return Response(status_code=204)

    @app.get("/v1/latest", responses={200: {"description": '`{"items": [Story, ...]}`'}})
    async def latest(
        deps: Deps,
        section: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        """The newest stories first, across all sections or in one section (its taxonomy id)."""
        stories = await deps.cache.latest(section.lower() if section else None, limit)
        return Response(b'{"items":[' + b",".join(stories) + b"]}", media_type="application/json")

    @app.get("/v1/stories/{uri:path}", responses={200: {"description": "A Story"}})
    async def story(uri: str, deps: Deps) -> Response:
        """One story by its uri (URL-encoded); 404 when unknown or withdrawn."""
        found = await deps.cache.story(uri)
        if found is None:
            raise Problem(404, "unknown_story", f"no live story with uri {uri}")
        return Response(found, media_type="application/json")

    return app
