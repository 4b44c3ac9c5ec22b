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

from services.ingest.domain import Claim, LedgerEntry, StoredResponse
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

    async def publish(self, article: Article, meta: EventMeta, value: bytes | None = None) -> None:
        """Waits for the broker's ack (acks=all); a slow broker raises `TimeoutError`."""
        async with asyncio.timeout(self._ack_timeout_s):
            ack = await self._producer.send(
                self._topic,
                encode(article) if value is None else value,
                key=article.uri.encode(),
                headers=meta.to_headers(),
            )
            await ack


class Coalescer(Generic[T, R]):
    """Gathers the calls made during one event-loop tick into one batch call (a pipeline); while
    calls keep coming (one within `window_s` of the last batch), those made within `window_s`.

    Under load, dozens of requests read the ledger in the same tick: one round trip and one pool
    checkout serve them all. A paced stream brings one request a tick: at 1,000 a second each
    claim was a round trip of its own, and every round trip wakes Redis and then this process
    again. A quiet stream's call goes at once.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], window_s: float = 0.0) -> None:
        self._run = run
        self._window_s = window_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flushed_at = -1e9  # when the last batch went (the loop's clock)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            if loop.time() - self._flushed_at < self._window_s:
                loop.call_later(self._window_s, self._flush)
            else:
                loop.call_soon(self._flush)
        self._pending.append((item, future))
        return await future

    def _flush(self) -> None:
        self._flushed_at = asyncio.get_running_loop().time()
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

# One call serves a whole batch of claims (one round trip, one command to pack and parse).
# KEYS: per claim, the uri's ledger hash and the claim on uri+version.
# ARGV: per claim, version, fingerprint, token, ttl ms.
# Answers per claim the recorded fields, then 1 if the caller now holds the claim, else the
# holder's "fingerprint token" (nil when the recorded version is already as high).
_CLAIM = """
local answers = {}
for i = 1, #KEYS / 2 do
  local ledger, claim = KEYS[2 * i - 1], KEYS[2 * i]
  local at = 4 * (i - 1)
  local version, fingerprint, token, ttl = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local recorded = redis.call('HMGET', ledger, 'version', 'event_id', 'event_type', 'fingerprint')
  local won, holder = 0, false
  if not (recorded[1] and tonumber(recorded[1]) >= tonumber(version)) then
    if redis.call('SET', claim, fingerprint .. ' ' .. token, 'NX', 'PX', ttl) then
      won = 1
    else
      holder = redis.call('GET', claim)
    end
  end
  for _, value in ipairs({recorded[1], recorded[2], recorded[3], recorded[4], won, holder}) do
    answers[#answers + 1] = value
  end
end
return answers
"""
# KEYS: per entry, the ledger hash and the claim. ARGV: per entry, version, event_id,
# event_type, fingerprint, article JSON. Never replaces a version with a lower (or the same)
# one, whatever order replicas write in; drops the claim.
_RECORD = """
for i = 1, #KEYS / 2 do
  local ledger, claim, at = KEYS[2 * i - 1], KEYS[2 * i], 5 * (i - 1)
  local recorded = redis.call('HGET', ledger, 'version')
  if not recorded or tonumber(recorded) < tonumber(ARGV[at + 1]) then
    redis.call('HSET', ledger, 'version', ARGV[at + 1], 'event_id', ARGV[at + 2],
               'event_type', ARGV[at + 3], 'fingerprint', ARGV[at + 4], 'article', ARGV[at + 5])
  end
  redis.call('DEL', claim)
end
return #KEYS / 2
"""
# KEYS: claim. ARGV: the claimer's token; another holder's claim is left alone.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, -string.len(ARGV[1]) - 1) == ' ' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_CLAIM_FIELDS = 6


class RedisLedger:
    """One hash per uri holding the last accepted version, and short-lived claims on versions
    being published; shared by every ingest replica."""

    def __init__(self, redis: Redis, key_prefix: str, claim_window_s: float = 0.0) -> None:
        """`claim_window_s`: how long claims wait for others to go with them while claims keep
        coming (`Coalescer`)."""
        self._redis = redis
        self._prefix = f"{key_prefix}ingest:article:"
        self._claims = f"{key_prefix}ingest:claim:"
        self._claim_calls: Coalescer[tuple[str, int, str, str, int], list[Any]] = Coalescer(
            self._claim_many, claim_window_s
        )
        self._writes: Coalescer[tuple[str, LedgerEntry], None] = Coalescer(self._write_many)

    async def get(self, uri: str, with_article: bool = True) -> LedgerEntry | None:
        """The stored article JSON (3 KB and more) is fetched only when asked for."""
        fields = [*_LEDGER_FIELDS, "article"] if with_article else _LEDGER_FIELDS
        values = await self._redis.hmget(self._prefix + uri, fields)
        return _entry(values, with_article)

    async def claim(
        self, uri: str, version: int, fingerprint: str, token: str, ttl_s: float
    ) -> Claim:
        ttl_ms = max(1, int(ttl_s * 1000))
        values = await self._claim_calls.submit((uri, version, fingerprint, token, ttl_ms))
        holder = values[5]
        return Claim(
            previous=_entry(values, with_article=False),
            won=values[4] == 1,
            held_by=_text(holder).partition(" ")[0] if holder is not None else None,
        )

    async def put(self, uri: str, entry: LedgerEntry) -> None:
        await self._writes.submit((uri, entry))

    async def release(self, uri: str, version: int, token: str) -> None:
        await self._redis.eval(_RELEASE, 1, self._claim_key(uri, version), token)

    def _claim_key(self, uri: str, version: int) -> str:
        return f"{self._claims}{uri}:{version}"

    async def _claim_many(self, calls: list[tuple[str, int, str, str, int]]) -> list[list[Any]]:
        keys: list[Any] = []
        args: list[Any] = []
        for uri, version, fingerprint, token, ttl_ms in calls:
            keys += (self._prefix + uri, self._claim_key(uri, version))
            args += (version, fingerprint, token, ttl_ms)
        # EVAL sends the script each time; a few hundred bytes per batch buy no NOSCRIPT path.
        answers = await self._redis.eval(_CLAIM, len(keys), *keys, *args)
        return [answers[i : i + _CLAIM_FIELDS] for i in range(0, len(answers), _CLAIM_FIELDS)]

    async def _write_many(self, writes: list[tuple[str, LedgerEntry]]) -> list[None]:
        keys: list[Any] = []
        args: list[Any] = []
        for uri, entry in writes:
            keys += (self._prefix + uri, self._claim_key(uri, entry.version))
            args += (
                entry.version,
                entry.event_id,
                entry.event_type,
                entry.fingerprint,
                entry.article_json,
            )
        await self._redis.eval(_RECORD, len(keys), *keys, *args)
        return [None] * len(writes)


def _entry(values: list[Any], with_article: bool) -> LedgerEntry | None:
    if values[0] is None:
        return None
    return LedgerEntry(
        version=int(_text(values[0])),
        event_id=_text(values[1]),
        event_type=_text(values[2]),
        fingerprint=_text(values[3]),
        article_json=_text(values[4]) if with_article else "",
    )


class RedisRateLimiter:
    """A fixed window per key, counted in Redis so every replica shares one budget.

    A replica leases up to `lease` articles of budget at a time (one INCRBY), then spends the
    lease locally: one Redis round trip per `lease` articles instead of one per request. A
    window can overshoot by at most `lease - 1` articles per replica. Requests arriving while a
    lease is on its way wait for it rather than each leasing (and losing) a share of the budget.
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
        self._leasing: dict[str, asyncio.Lock] = {}

    async def hit(self, key_id: str, cost: int) -> float | None:
        now = time.time()
        window = int(now // self._window)
        if self._spend(key_id, window, cost):
            return None
        async with self._leasing.setdefault(key_id, asyncio.Lock()):
            if self._spend(key_id, window, cost):
                return None
            left = self._left(key_id, window)
            want = max(self._lease, cost - left)
            key = f"{self._prefix}{key_id}:{window}"
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incrby(key, want)
                pipe.expire(key, self._window * 2)
                count, _ = await pipe.execute()
            granted = max(0, min(want, self._limit - (int(count) - want)))
            self._leased[key_id] = (window, self._left(key_id, window) + granted)
            if self._spend(key_id, window, cost):
                return None
        return (window + 1) * self._window - now

    def _left(self, key_id: str, window: int) -> int:
        held_window, left = self._leased.get(key_id, (window, 0))
        return left if held_window == window else 0

    def _spend(self, key_id: str, window: int, cost: int) -> bool:
        left = self._left(key_id, window)
        if left < cost:
            return False
        self._leased[key_id] = (window, left - cost)
        return True


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
