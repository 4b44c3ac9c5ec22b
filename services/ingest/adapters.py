"""ingest's adapters: the Kafka publisher, and in Redis the ledger of accepted versions, the rate
limiter, the idempotency store and the feed registry; the aiohttp feed fetcher."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.ingest.domain import LedgerEntry, StoredResponse
from services.ingest.feeds import (
    FeedError,
    FeedIn,
    FeedState,
    FeedStatus,
    Fetched,
    check_feed_host,
)
from shared.events import Article, EventMeta, encode
from shared.redis import raw as _raw
from shared.redis import text as _text

T = TypeVar("T")
R = TypeVar("R")


class KafkaArticlePublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str, ack_timeout_s: float = 10.0) -> None:
        self._producer = producer
        self._topic = topic
        self._ack_timeout_s = ack_timeout_s

    async def publish(self, article: Article, meta: EventMeta) -> None:
        """Waits for the broker's ack (acks=all); a slow broker raises `TimeoutError`."""
        async with asyncio.timeout(self._ack_timeout_s):
            ack = await self._producer.send(
                self._topic, encode(article), key=article.uri.encode(), headers=meta.to_headers()
            )
            await ack


class Coalescer(Generic[T, R]):
    """Gathers the calls made during one event-loop tick into one batch call (a pipeline).

    Under load, dozens of requests read the ledger in the same tick: one round trip and one pool
    checkout serve them all.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


_LEDGER_FIELDS = ["version", "event_id", "event_type", "fingerprint"]


class RedisLedger:
    """One hash per uri holding the last accepted version; shared by every ingest replica."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}ingest:article:"
        self._reads: Coalescer[str, list[Any]] = Coalescer(self._read_many)
        self._writes: Coalescer[tuple[str, LedgerEntry], Any] = Coalescer(self._write_many)

    async def get(self, uri: str, with_article: bool = True) -> LedgerEntry | None:
        """The stored article JSON (3 KB and more) is fetched only when asked for."""
        if with_article:
            values = await self._redis.hmget(self._prefix + uri, [*_LEDGER_FIELDS, "article"])
        else:
            values = await self._reads.submit(uri)
        if values[0] is None:
            return None
        return LedgerEntry(
            version=int(_text(values[0])),
            event_id=_text(values[1]),
            event_type=_text(values[2]),
            fingerprint=_text(values[3]),
            article_json=_text(values[4]) if with_article else "",
        )

    async def put(self, uri: str, entry: LedgerEntry) -> None:
        await self._writes.submit((uri, entry))

    async def _read_many(self, uris: list[str]) -> list[list[Any]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for uri in uris:
                pipe.hmget(self._prefix + uri, _LEDGER_FIELDS)
            return list(await pipe.execute())

    async def _write_many(self, writes: list[tuple[str, LedgerEntry]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for uri, entry in writes:
                pipe.hset(
                    self._prefix + uri,
                    mapping={
                        "version": entry.version,
                        "event_id": entry.event_id,
                        "event_type": entry.event_type,
                        "fingerprint": entry.fingerprint,
                        "article": entry.article_json,
                    },
                )
            return list(await pipe.execute())


class RedisRateLimiter:
    """A fixed window per key, counted in Redis so every replica shares one budget.

    A replica leases up to `lease` articles of budget at a time (one INCRBY), then spends the
    lease locally: one Redis round trip per `lease` articles instead of one per request. A
    window can overshoot by at most `lease - 1` articles per replica.
    """

    def __init__(
        self, redis: Redis, key_prefix: str, per_window: int, window_s: int, lease: int = 50
    ) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}ingest:rate:"
        self._limit = per_window
        self._window = window_s
        self._lease = max(1, min(lease, per_window // 20))
        self._leased: dict[str, tuple[int, int]] = {}  # key_id -> (window, articles left)

    async def hit(self, key_id: str, cost: int) -> float | None:
        now = time.time()
        window = int(now // self._window)
        held_window, left = self._leased.get(key_id, (window, 0))
        if held_window != window:
            left = 0
        if left < cost:
            want = max(self._lease, cost - left)
            key = f"{self._prefix}{key_id}:{window}"
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incrby(key, want)
                pipe.expire(key, self._window * 2)
                count, _ = await pipe.execute()
            granted = max(0, min(want, self._limit - (int(count) - want)))
            left += granted
            if left < cost:
                self._leased[key_id] = (window, left)
                return (window + 1) * self._window - now
        self._leased[key_id] = (window, left - cost)
        return None


class RedisIdempotencyStore:
    """Responses to requests that carried an `Idempotency-Key`, kept for a day."""

    def __init__(self, redis: Redis, key_prefix: str, ttl_s: int = 86_400) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}ingest:idempotency:"
        self._ttl = ttl_s

    async def get(self, scope: str) -> StoredResponse | None:
        raw = await self._redis.hgetall(self._prefix + scope)
        if not raw:
            return None
        fields = {_text(k): v for k, v in raw.items()}
        return StoredResponse(
            _text(fields["digest"]), int(_text(fields["status"])), _raw(fields["body"])
        )

    async def put(self, scope: str, response: StoredResponse) -> None:
        key = self._prefix + scope
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "digest": response.request_digest,
                    "status": response.status,
                    "body": response.body,
                },
            )
            pipe.expire(key, self._ttl)
            await pipe.execute()


class RedisFeedRegistry:
    """Registered feeds and the state of their last poll, shared by every replica."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._feeds = f"{key_prefix}ingest:feeds"
        self._states = f"{key_prefix}ingest:feed-states"
        self._claims = f"{key_prefix}ingest:feed-claim:"

    async def add(self, feed: FeedIn) -> None:
        await self._redis.hset(self._feeds, feed.id, feed.model_dump_json())

    async def remove(self, feed_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._feeds, feed_id)
            pipe.hdel(self._states, feed_id)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def all(self) -> list[FeedStatus]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._feeds)
            pipe.hgetall(self._states)
            feeds, states = await pipe.execute()
        found = {_text(k): v for k, v in states.items()}
        return [
            FeedStatus(
                id=_text(feed_id),
                feed=FeedIn.model_validate_json(raw),
                state=FeedState.model_validate_json(found[_text(feed_id)])
                if _text(feed_id) in found
                else FeedState(),
            )
            for feed_id, raw in sorted(feeds.items())
        ]

    async def save_state(self, feed_id: str, state: FeedState) -> None:
        if await self._redis.hexists(self._feeds, feed_id):
            await self._redis.hset(self._states, feed_id, state.model_dump_json())

    async def claim(self, feed_id: str, for_s: float) -> bool:
        ms = max(1, int(for_s * 1000))
        return bool(await self._redis.set(self._claims + feed_id, b"1", nx=True, px=ms))


class HttpFeedFetcher:
    """Conditional GETs with aiohttp; the host is vetted against the SSRF policy first."""

    def __init__(
        self, session: aiohttp.ClientSession, allow_private: bool, max_bytes: int = 5_242_880
    ) -> None:
        self._session = session
        self._allow_private = allow_private
        self._max_bytes = max_bytes

    async def fetch(self, url: str, etag: str | None, last_modified: str | None) -> Fetched:
        await vet_feed_url(url, self._allow_private)
        headers = {"User-Agent": "newsflow-ingest/1", "Accept": "application/rss+xml, */*"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.content.read(self._max_bytes + 1)
                if len(body) > self._max_bytes:
                    raise FeedError(f"feed larger than {self._max_bytes} bytes")
                return Fetched(
                    response.status,
                    body,
                    response.headers.get("ETag"),
                    response.headers.get("Last-Modified"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FeedError(f"cannot fetch: {exc.__class__.__name__}: {exc}") from exc


async def vet_feed_url(url: str, allow_private: bool) -> None:
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FeedError(f"{host} does not resolve") from exc
    check_feed_host(host, (str(info[4][0]) for info in infos), allow_private)
