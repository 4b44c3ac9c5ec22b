"""delivery's adapters: Redis (story cache, subscriptions), aiohttp (webhooks), DNS, Kafka log."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.delivery.domain import Subscription
from shared.events import DeliveryAttempt, EventMeta, encode
from shared.redis import raw, text


@dataclass(frozen=True)
class CachedStory:
    uri: str
    section_id: str
    versioncreated: float  # epoch seconds: the order of the latest-news lists
    withdrawn: bool
    story_json: bytes


class RedisStoryCache:
    """Stories by uri, plus a capped newest-first list per section and one across all sections.

    Values are stored as the exact JSON bytes from the topic, so reads never re-parse them.
    """

    ALL = "all"

    def __init__(self, redis: Redis, key_prefix: str, per_section: int) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}cache:"
        self._per_section = per_section

    def _story_key(self, uri: str) -> str:
        return f"{self._prefix}story:{uri}"

    def _latest_key(self, section_id: str) -> str:
        return f"{self._prefix}latest:{section_id}"

    async def apply(self, stories: Sequence[CachedStory]) -> None:
        """One pipeline for the whole batch; a withdrawn story leaves every list."""
        known = {text(s) for s in await self._redis.smembers(self._prefix + "sections")}
        known |= {s.section_id for s in stories} | {self.ALL}
        async with self._redis.pipeline(transaction=False) as pipe:
            for story in stories:
                for section_id in known:
                    pipe.zrem(self._latest_key(section_id), story.uri)
                if story.withdrawn:
                    pipe.delete(self._story_key(story.uri))
                    continue
                pipe.set(self._story_key(story.uri), story.story_json)
                pipe.sadd(self._prefix + "sections", story.section_id)
                for section_id in (story.section_id, self.ALL):
                    key = self._latest_key(section_id)
                    pipe.zadd(key, {story.uri: story.versioncreated})
                    pipe.zremrangebyrank(key, 0, -(self._per_section + 1))
            await pipe.execute()

    async def latest(self, section_id: str | None, limit: int) -> list[bytes]:
        uris = await self._redis.zrevrange(self._latest_key(section_id or self.ALL), 0, limit - 1)
        if not uris:
            return []
        values = await self._redis.mget([self._story_key(text(u)) for u in uris])
        return [raw(v) for v in values if v is not None]

    async def story(self, uri: str) -> bytes | None:
        value = await self._redis.get(self._story_key(uri))
        return None if value is None else raw(value)


class RedisSubscriptionStore:
    """All subscriptions in one Redis hash, so every delivery instance sees the same set."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._key = f"{key_prefix}subscriptions"

    async def add(self, subscription: Subscription) -> None:
        await self._redis.hset(self._key, subscription.id, subscription.model_dump_json())

    async def remove(self, subscription_id: str) -> bool:
        return bool(await self._redis.hdel(self._key, subscription_id))

    async def get(self, subscription_id: str) -> Subscription | None:
        raw = await self._redis.hget(self._key, subscription_id)
        return Subscription.model_validate_json(raw) if raw else None

    async def all(self) -> list[Subscription]:
        raw = await self._redis.hvals(self._key)
        return sorted(
            (Subscription.model_validate_json(value) for value in raw), key=lambda s: s.created_at
        )


async def resolve(host: str) -> list[str]:
    """Every address `host` resolves to (what the SSRF policy checks)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Response:
    status: int | None
    error: str | None
    duration_ms: float


class AiohttpWebhookSender:
    """POSTs signed webhooks; redirects are not followed (a 3xx is a failure)."""

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        started = time.perf_counter()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                await response.content.read(4096)
                status = response.status
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"[:300]
        return Response(status, error, round((time.perf_counter() - started) * 1000, 2))


class KafkaAttemptLog:
    """Every attempt goes to `deliveries.attempts.v1`, keyed by subscription id."""

    EVENT_TYPE = "newsflow.delivery.attempted"

    def __init__(self, producer: AIOKafkaProducer, topic: str, source: str) -> None:
        self._producer = producer
        self._topic = topic
        self._source = source

    async def record(self, attempt: DeliveryAttempt) -> None:
        meta = EventMeta.new(self.EVENT_TYPE, self._source)
        await self._producer.send(
            self._topic,
            encode(attempt),
            key=attempt.subscription_id.encode(),
            headers=meta.to_headers(),
        )

    async def flush(self) -> None:
        """Waits until every attempt recorded so far is acknowledged by the broker."""
        await self._producer.flush()
