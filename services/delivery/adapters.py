"""delivery's adapters: Redis (story cache, delivery state), Kafka (subscriptions, job queue,
attempt log, topic scans), DNS. The webhook client is in `webhook_client.py`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic_core import from_json, to_json
from redis.asyncio import Redis

from services.delivery.domain import (
    Answer,
    Job,
    RecentDelivery,
    Subscription,
    Tagged,
    fanout_headers,
    fingerprint,
    tier_for,
)
from shared.events import (
    CONTENT_TYPE,
    SPEC_VERSION,
    EventMeta,
    EventType,
    Headers,
    Topics,
    current_traceparent,
    new_event_id,
)
from shared.kafka import PRODUCER_STOP_WITHIN_S, BatchedRecords, DeadLetters, KeyPartitioner
from shared.logging import get_logger
from shared.redis import raw, text

log = get_logger(__name__)


@dataclass(frozen=True)
class CachedStory:
    uri: str
    section_id: str
    versioncreated: float  # epoch seconds: the order of the latest-news lists
    withdrawn: bool
    story_json: bytes
    section_name: str = ""
    version: int = 0


# Adds commands to a pipeline; returns how many replies they make.
PipelineOps = Callable[[Any], int]


class RedisStoryCache:
    """The latest-news cache. Key layout under `<prefix>cache:` (see docs/partners.md):

    - `story:<uri>`        the story's fingerprint (26 bytes, `"<hex>"`, its ETag), then its
                           exact JSON bytes from the topic (never re-encoded)
    - `latest:<section>`   sorted set uri -> first publication time (epoch s); `latest:all` too
    - `sections`           hash section id -> name
    - `version`            hash uri -> cached version (a late older version never wins)
    - `built`              marker: present once the cache was built; absent = rebuild
    """

    ALL = "all"
    APPLIED_AT_ONCE = 128

    # ARGV: the key prefix, the list cap, the list of every story (`ALL`), a JSON array with per
    # story [uri, version, withdrawn (0/1), section id, section name, score (first publication
    # time)], all strings, then each story's stored bytes (fingerprint + JSON), in that order.
    # (One JSON argument, not six: redis-py packs every argument in Python, ~1 µs each.)
    # A version older than the cached one is ignored; a newer one (or the same again) leaves
    # every list it was in, then a live one joins its section's list and `all`. Each list
    # joined is trimmed to the cap once, at the end (the same stories stay as when trimmed after
    # every join), and each section named once.
    _APPLY = """
    local prefix, cap, all = ARGV[1], tonumber(ARGV[2]), ARGV[3]
    local versions, sections = prefix .. 'version', prefix .. 'sections'
    local known = {[all] = true}
    local named, joined = {}, {}
    for _, id in ipairs(redis.call('HKEYS', sections)) do known[id] = true end
    for n, story in ipairs(cjson.decode(ARGV[4])) do
        local uri, version, withdrawn = story[1], story[2], story[3]
        local section, name, score, stored = story[4], story[5], story[6], ARGV[4 + n]
        local cached = redis.call('HGET', versions, uri)
        if not cached or tonumber(cached) <= tonumber(version) then
            known[section] = true
            if cached then  -- a story never cached is in no list yet
                for id in pairs(known) do redis.call('ZREM', prefix .. 'latest:' .. id, uri) end
            end
            redis.call('HSET', versions, uri, version)
            if withdrawn == '1' then
                redis.call('DEL', prefix .. 'story:' .. uri)
            else
                redis.call('SET', prefix .. 'story:' .. uri, stored)
                if named[section] ~= name then
                    redis.call('HSET', sections, section, name)
                    named[section] = name
                end
                for _, id in ipairs({section, all}) do
                    local key = prefix .. 'latest:' .. id
                    redis.call('ZADD', key, score, uri)
                    joined[key] = true
                end
            end
        end
    end
    for key in pairs(joined) do redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1)) end
    return 0
    """

    def __init__(self, redis: Redis, key_prefix: str, per_section: int) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}cache:"
        self._per_section = per_section
        # Reads of concurrent requests share one pipeline per loop tick: one round trip.
        self._reads = _Coalescer(redis)

    def _story_key(self, uri: str) -> str:
        return f"{self._prefix}story:{uri}"

    def _latest_key(self, section_id: str) -> str:
        return f"{self._prefix}latest:{section_id}"

    async def apply(self, stories: Sequence[CachedStory], along: PipelineOps | None = None) -> None:
        """One round trip for the whole batch; a correction replaces its story in place, a
        withdrawn story leaves every list. Versions older than the cached one are ignored.
        `along` adds more writes to the same round trip (e.g. `RedisDeliveryState.queued_ops`).
        """
        if not stories and along is None:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            self._apply_ops(stories, pipe)
            if along is not None:
                along(pipe)
            await pipe.execute()

    def _apply_ops(self, stories: Sequence[CachedStory], pipe: Any) -> None:
        latest: dict[str, CachedStory] = {}
        for story in stories:
            seen = latest.get(story.uri)
            if seen is None or story.version >= seen.version:
                latest[story.uri] = story
        chosen = list(latest.values())
        # One script call per slice: the Python side packs one command, not ~20 per story,
        # and no call holds Redis for long. (EVAL, not EVALSHA: a pipeline would check for the
        # script on every flush; Redis keeps the compiled script by its digest either way.)
        for start in range(0, len(chosen), self.APPLIED_AT_ONCE):
            fields: list[list[str]] = []
            stored: list[bytes] = []
            for story in chosen[start : start + self.APPLIED_AT_ONCE]:
                fields.append([
                    story.uri, str(story.version), "1" if story.withdrawn else "0",
                    story.section_id, story.section_name, repr(float(story.versioncreated)),
                ])  # fmt: skip
                stored.append(
                    b"" if story.withdrawn
                    else fingerprint(story.story_json).encode() + story.story_json
                )  # fmt: skip
            pipe.eval(
                self._APPLY, 0, self._prefix, self._per_section, self.ALL, _json(fields), *stored
            )

    async def versions(self, uris: Sequence[str]) -> dict[str, int]:
        """The cached version of each uri (withdrawn ones too); absent when never seen."""
        if not uris:
            return {}
        found = await self._redis.hmget(self._prefix + "version", list(uris))
        return {u: int(v) for u, v in zip(uris, found, strict=True) if v is not None}

    async def mark_built(self) -> None:
        await self._redis.set(self._prefix + "built", "1")

    async def clear(self) -> int:
        """Deletes every cache key (for a forced rebuild)."""
        deleted = 0
        async for key in self._redis.scan_iter(match=self._prefix + "*", count=1000):
            deleted += await self._redis.delete(key)
        return deleted

    async def is_built(self) -> bool:
        return bool(await self._redis.exists(self._prefix + "built"))

    # One round trip per page: the newest uris before the cursor, then their stories.
    _PAGE = """
    local found = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES',
                             'LIMIT', 0, tonumber(ARGV[2]) + 1)
    local reply = {}
    local n = math.min(#found / 2, tonumber(ARGV[2]))
    for i = 1, n do
        reply[#reply + 1] = redis.call('GET', ARGV[3] .. found[2 * i - 1]) or false
    end
    local more = ''
    if #found / 2 > n then more = found[2 * n] end
    reply[#reply + 1] = more
    return reply
    """

    async def latest(
        self, section_id: str | None, limit: int, before: float | None = None
    ) -> tuple[list[bytes], float | None]:
        """Newest first; `before` is the cursor (exclusive). Returns the stories and the next
        cursor (None at the end)."""
        stories, cursor = await self.latest_tagged(section_id, limit, before)
        return [s.body for s in stories], cursor

    async def latest_tagged(
        self, section_id: str | None, limit: int, before: float | None = None
    ) -> tuple[list[Tagged], float | None]:
        key = self._latest_key(section_id or self.ALL)
        high = "+inf" if before is None else f"({before!r}"

        def page(pipe: Any) -> int:
            # EVAL, not EVALSHA: a pipeline would check for the script on every flush.
            pipe.eval(self._PAGE, 1, key, high, limit, self._prefix + "story:")
            return 1

        (reply,) = await self._reads.run(page)
        *values, more = reply
        cursor = float(more) if more else None
        return [_tagged(raw(v)) for v in values if v], cursor

    async def story(self, uri: str) -> bytes | None:
        found = await self.story_tagged(uri)
        return None if found is None else found.body

    async def story_tagged(self, uri: str) -> Tagged | None:
        key = self._story_key(uri)

        def get(pipe: Any) -> int:
            pipe.get(key)
            return 1

        (value,) = await self._reads.run(get)
        return None if value is None else _tagged(raw(value))

    async def sections(self) -> list[dict[str, Any]]:
        names = await self._redis.hgetall(self._prefix + "sections")
        ids = sorted(text(k) for k in names)
        async with self._redis.pipeline(transaction=False) as pipe:
            for section_id in ids:
                pipe.zcard(self._latest_key(section_id))
            counts = await pipe.execute()
        return [
            {"id": s, "name": text(names[s.encode()]) or s, "stories": n}
            for s, n in zip(ids, counts, strict=True)
            if n
        ]


def _json(value: object) -> bytes:
    """A script argument read with `cjson.decode` (strings as UTF-8; a tenth of `json.dumps`)."""
    return to_json(value)


FINGERPRINT_LENGTH = 26


def _tagged(stored: bytes) -> Tagged:
    if stored[:1] == b'"':
        return Tagged(stored[FINGERPRINT_LENGTH:], stored[:FINGERPRINT_LENGTH].decode())
    return Tagged(stored, fingerprint(stored))  # written before fingerprints were stored


class SealedSecretError(ValueError):
    """A subscription's secrets are sealed with a key this instance does not have."""


class SecretSealer:
    """Seals signing secrets for the subscriptions topic (Fernet: AES-128-CBC and HMAC-SHA256),
    so a reader of the topic without the key cannot sign webhooks as us.

    `keys` is one key, or several separated by commas to rotate: the first seals, any opens
    (a subscription sealed with an older key is sealed with the first when it next changes, or
    by `KafkaSubscriptionStore.reseal`)."""

    PREFIX = "sealed:v1:"

    def __init__(self, keys: str) -> None:
        try:
            fernets = [Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()]
            self._fernet = MultiFernet(fernets)
            self._sealing = fernets[0]
        except ValueError as exc:
            raise ValueError(
                "NEWSFLOW_DELIVERY_SECRETS_KEY is not a Fernet key, or a comma-separated list of "
                "them (32 url-safe base64 bytes each; `newsflow secrets-key` makes one)"
            ) from exc

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secret: str) -> str:
        return self.PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def unseal(self, sealed: str) -> str:
        """The secret in a `seal`ed value; `SealedSecretError` when this key cannot open it."""
        try:
            return self._fernet.decrypt(sealed.removeprefix(self.PREFIX).encode()).decode()
        except InvalidToken as exc:
            raise SealedSecretError("sealed with another NEWSFLOW_DELIVERY_SECRETS_KEY") from exc

    def sealed_with_first_key(self, sealed: str) -> bool:
        try:
            self._sealing.decrypt(sealed.removeprefix(self.PREFIX).encode())
        except InvalidToken:
            return False
        return True


_SECRET_FIELDS = ("secret", "previous_secret")


def subscription_record(subscription: Subscription, sealer: SecretSealer | None) -> bytes:
    """The subscription as stored on the topic: its signing secrets sealed when there is a key."""
    fields = subscription.model_dump(mode="json")
    if sealer is not None:
        for name in _SECRET_FIELDS:
            if fields.get(name):
                fields[name] = sealer.seal(fields[name])
    return json.dumps(fields, separators=(",", ":")).encode()


def needs_resealing(value: bytes, sealer: SecretSealer | None) -> bool:
    """Whether a subscription record holds a signing secret in plain text (written before a key
    was set) or sealed with a key other than the first: writing it again seals it with that."""
    if sealer is None:
        return False
    fields = from_json(value)
    stored = [fields.get(name) for name in _SECRET_FIELDS] if isinstance(fields, dict) else []
    return any(
        not secret.startswith(SecretSealer.PREFIX) or not sealer.sealed_with_first_key(secret)
        for secret in stored
        if isinstance(secret, str) and secret
    )


def subscription_from_record(value: bytes, sealer: SecretSealer | None) -> Subscription:
    """The subscription of a topic record; secrets stored in plain text (before a key was set)
    are taken as they are. Raises `ValueError` for a record that is not a subscription, and
    `SealedSecretError` when this instance cannot unseal its secrets (no key, or another)."""
    fields = from_json(value)  # ValueError for any garbage, too deep nesting included
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    for name in _SECRET_FIELDS:
        stored = fields.get(name)
        if isinstance(stored, str) and stored.startswith(SecretSealer.PREFIX):
            if sealer is None:
                raise SealedSecretError("sealed, and NEWSFLOW_DELIVERY_SECRETS_KEY is unset")
            fields[name] = sealer.unseal(stored)
    return Subscription.model_validate(fields)


class KafkaSubscriptionStore:
    """Subscriptions live on the compacted `subscriptions.v1` topic (key = id, tombstone =
    deleted). Every instance tails it into memory: all see the same set, a restart replays it,
    and flushing Redis loses none of them. A write is acknowledged once the broker has it.
    With a `sealer`, the signing secrets on the topic are sealed (`SecretSealer`)."""

    EVENT_TYPE = "newsflow.subscription.changed"
    READ_TO_NOW_TIMEOUT_S = 10.0  # `read_to_now` gives up (the broker away)

    def __init__(
        self,
        producer: AIOKafkaProducer,
        bootstrap: str,
        topic: str,
        source: str,
        dead_letters: DeadLetters | None = None,
        sealer: SecretSealer | None = None,
    ):
        self._producer = producer
        self._bootstrap = bootstrap
        self._topic = topic
        self._source = source
        self._dead_letters = dead_letters
        self._sealer = sealer
        self._items: dict[str, Subscription] = {}
        # `all`'s answer, made once per change of `_items` (it runs for every batch of stories:
        # sorting thousands of subscriptions each time cost ~1 ms a batch).
        self._ordered: tuple[Subscription, ...] | None = None
        # id -> offset of this instance's latest write: the tail, behind, must not bring back
        # an older record of it (a subscription resumed here would read as disabled again).
        self._written: dict[str, int] = {}
        self._caught_up = asyncio.Event()
        # Subscriptions whose latest record is not sealed with the first key (see `reseal`).
        self._unsealed: set[str] = set()
        # What `latest` waits on: the topic's ends (looked up on a connection of their own:
        # a broker answers a connection's requests in turn, and the tail's is mostly held by a
        # fetch waiting for records), how far the tail has read, the offsets written here that
        # it has not read yet (held already), and a pulse per batch read.
        self._end_lookup: AIOKafkaConsumer | None = None
        self._read_to: dict[TopicPartition, int] = {}
        self._own: dict[int, set[int]] = {}
        self._progress = asyncio.Event()

    async def add(self, subscription: Subscription) -> None:
        meta = EventMeta.new(self.EVENT_TYPE, self._source)
        stored = await self._producer.send_and_wait(
            self._topic,
            subscription_record(subscription, self._sealer),
            key=subscription.id.encode(),
            headers=meta.to_headers(),
        )
        self._items[subscription.id] = subscription
        self._ordered = None
        self._written[subscription.id] = stored.offset
        self._own.setdefault(stored.partition, set()).add(stored.offset)
        self._unsealed.discard(subscription.id)

    async def latest(self, subscription_id: str) -> Subscription | None:
        """The subscription as the topic holds it now: waits until this instance has every
        record written before the call, another instance's too (the tail reads them within
        a fetch), so a change made from it undoes none made elsewhere a moment ago."""
        await self.read_to_now()
        return self._items.get(subscription_id)

    async def read_to_now(self) -> None:
        """Returns once the tail has read every record on the topic when called (records
        written here count as read). `TimeoutError` when it cannot within
        `READ_TO_NOW_TIMEOUT_S` (the broker away); without a running tail, at once."""
        lookup = self._end_lookup
        if lookup is None:
            return
        async with asyncio.timeout(self.READ_TO_NOW_TIMEOUT_S):  # the lookup too
            ends = await lookup.end_offsets(list(self._read_to))
            while not all(self._held_to(tp) >= end for tp, end in ends.items()):
                self._progress.clear()
                await self._progress.wait()

    def _held_to(self, tp: TopicPartition) -> int:
        """The offset up to which this instance holds the partition: the tail's position, and
        on past the records written here right after it."""
        offset = self._read_to.get(tp, 0)
        own = self._own.get(tp.partition, set())
        while offset in own:
            offset += 1
        return offset

    async def reseal(self) -> int:
        """Writes again every subscription whose record on the topic holds its signing secrets
        in plain text or sealed with an older key, so they are sealed with the first key of
        NEWSFLOW_DELIVERY_SECRETS_KEY: after a rotation, the old keys can then be dropped.
        Returns how many were written."""
        await self.read_to_now()  # reseal what the topic holds now, not what it held
        written = 0
        for subscription_id in sorted(self._unsealed):
            subscription = self._items.get(subscription_id)
            if subscription is not None:
                await self.add(subscription)
                written += 1
        return written

    @property
    def unsealed(self) -> int:
        """Subscriptions a `reseal` would write."""
        return len(self._unsealed.intersection(self._items))

    async def remove(self, subscription_id: str) -> bool:
        await self.read_to_now()  # one created elsewhere a moment ago is found
        if subscription_id not in self._items:
            return False
        stored = await self._producer.send_and_wait(self._topic, None, key=subscription_id.encode())
        self._items.pop(subscription_id, None)
        self._ordered = None
        self._written[subscription_id] = stored.offset
        self._own.setdefault(stored.partition, set()).add(stored.offset)
        return True

    async def get(self, subscription_id: str) -> Subscription | None:
        return self._items.get(subscription_id)

    async def all(self) -> tuple[Subscription, ...]:
        if self._ordered is None:
            self._ordered = tuple(sorted(self._items.values(), key=lambda s: s.created_at))
        return self._ordered

    async def wait_caught_up(self) -> None:
        await self._caught_up.wait()

    async def tail(self) -> None:
        """Reads the topic from the beginning, then follows it (no consumer group)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        lookup = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            await lookup.start()
            partitions = await _partitions(consumer, self._topic)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            self._read_to = dict.fromkeys(partitions, 0)
            self._end_lookup = lookup
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for messages in batches.values():
                    for message in messages:
                        await self._apply(message)
                for tp in partitions:
                    self._read_to[tp] = read_to = await consumer.position(tp)
                    own = self._own.get(tp.partition)
                    if own:
                        self._own[tp.partition] = {o for o in own if o >= read_to}
                self._progress.set()
                if not self._caught_up.is_set():
                    positions = [self._read_to[tp] for tp in ends]
                    if all(p >= end for p, end in zip(positions, ends.values(), strict=True)):
                        self._caught_up.set()
                        if self.unsealed:
                            log.warning(
                                "subscriptions with signing secrets in plain text or sealed "
                                "with an older key; `newsflow subs reseal` seals them "
                                "with the first key of NEWSFLOW_DELIVERY_SECRETS_KEY",
                                subscriptions=self.unsealed,
                            )
        finally:
            self._end_lookup = None
            await lookup.stop()
            await consumer.stop()

    async def _apply(self, message: Any) -> None:
        key = text(message.key)
        if message.offset < self._written.get(key, -1):
            return  # older than what this instance wrote since: the tail will reach that
        self._ordered = None
        if message.value is None:
            self._items.pop(key, None)
            self._unsealed.discard(key)
            return
        try:
            self._items[key] = subscription_from_record(message.value, self._sealer)
            if needs_resealing(message.value, self._sealer):
                self._unsealed.add(key)
            else:
                self._unsealed.discard(key)
        except SealedSecretError as exc:
            # A newsflow record this instance cannot open: a setting to fix, not a bad record.
            self._items.pop(key, None)
            log.error(
                "subscription skipped: its signing secrets cannot be unsealed; it gets no "
                "webhooks from this instance until NEWSFLOW_DELIVERY_SECRETS_KEY matches",
                subscription_id=key,
                error=str(exc),
            )
        except ValueError as exc:
            # Not written by newsflow. While replaying at start-up it was met before (and parked
            # by whoever ran then), so it is only logged; met live, it is parked.
            error = f"not a valid Subscription: {' '.join(str(exc).split())[:300]}"
            if self._caught_up.is_set() and self._dead_letters is not None:
                await self._dead_letters.park(message, error)
            else:
                log.warning("unreadable subscription record skipped", offset=message.offset)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(50):
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await consumer.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} does not exist; run `newsflow topics create`")


async def scan_topic(
    bootstrap: str, topic: str, since_ms: int | None = None
) -> AsyncIterator[tuple[int, bytes | None, bytes | None, Headers]]:
    """Every record of `topic` up to its current end, from the beginning, filtered by record
    timestamp >= `since_ms` (Tansu's offsets_for_times is broken, so we scan instead)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        idle = 0
        while remaining and idle < 10:
            batches = await consumer.getmany(*remaining, timeout_ms=300, max_records=2000)
            idle = 0 if batches else idle + 1
            for tp, messages in batches.items():
                for m in messages:
                    if since_ms is None or m.timestamp >= since_ms:
                        yield m.timestamp, m.key, m.value, list(m.headers)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


class _Coalescer:
    """Runs the Redis commands of many concurrent callers in one pipeline per loop tick, each
    caller getting its own replies: one round trip for hundreds of jobs."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._ops: list[tuple[PipelineOps, asyncio.Future[list[Any]]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def run(self, ops: PipelineOps) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._ops.append((ops, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the callers of this loop tick join the batch
        batch, self._ops = self._ops, []
        self._flushing = None
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                counts = [ops(pipe) for ops, _ in batch]
                replies = await pipe.execute()
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for (_, future), count in zip(batch, counts, strict=True):
            if not future.done():
                future.set_result(replies[start : start + count])
            start += count


@dataclass
class _Settlements:
    """The settle writes of one loop tick, merged per key and sent as one script call (one
    round trip and one reply, however many jobs settled): pending-set removals, dead letters,
    attempt records (each list trimmed once)."""

    # One future per caller: a cancelled caller cancels only its own (as `shield` would do,
    # without its Python callbacks per job).
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    pending: dict[str, list[str]] = field(default_factory=dict)
    dead: dict[str, dict[str, str]] = field(default_factory=dict)
    attempts: dict[str, list[bytes]] = field(default_factory=dict)

    # ARGV: kept, a JSON array of the keys and small items, [[[pending set, [subscription
    # ids]]...], [[dead-letter hash, [webhook ids]]...], [[attempt list, count]...]], then the
    # values: each dead letter's job, then each attempt record, in that order. (One JSON
    # argument for the keys and ids: redis-py packs every argument in Python, ~1 µs each.)
    SCRIPT = """
    local kept = tonumber(ARGV[1])
    local keys = cjson.decode(ARGV[2])
    local i = 2
    for _, entry in ipairs(keys[1]) do
        for _, id in ipairs(entry[2]) do redis.call('SREM', entry[1], id) end
    end
    for _, entry in ipairs(keys[2]) do
        for _, id in ipairs(entry[2]) do
            i = i + 1
            redis.call('HSET', entry[1], id, ARGV[i])
        end
    end
    for _, entry in ipairs(keys[3]) do
        for _ = 1, entry[2] do
            i = i + 1
            redis.call('LPUSH', entry[1], ARGV[i])
        end
        redis.call('LTRIM', entry[1], 0, kept - 1)
    end
    return 1
    """

    def args(self, kept: int) -> list[Any]:
        keys = [
            list(self.pending.items()),
            [(key, list(jobs)) for key, jobs in self.dead.items()],
            [(key, len(records)) for key, records in self.attempts.items()],
        ]
        found: list[Any] = [kept, _json(keys)]
        for jobs in self.dead.values():
            found += jobs.values()
        for records in self.attempts.values():
            found += records  # oldest first: the newest ends up on top
        return found


class RedisDeliveryState:
    """What delivery remembers per subscription in Redis, under `<prefix>delivery:`:

    - `pending:<uri>:<version>`  set of subscription ids this version is queued for and not yet
                                 settled (the order guard: one write per version, not per job)
    - `got:<uri>`             set of subscription ids the story was sent to (withdrawals)
    - `attempts:<sub>`        newest-first list of attempt records (capped)
    - `dead:<sub>`            hash webhook id -> job JSON of messages whose attempts ran out
    - `embargo`               sorted set story record -> release time (epoch s)
    """

    PENDING_TTL_S = 7 * 86_400
    GOT_TTL_S = 30 * 86_400

    # ARGV: the TTLs of the pending and the got sets, then a JSON array with per story version
    # [its pending set, its got set ('' for a withdrawal: not counted as sent), [subscription
    # ids]]. Each set gets the ids, then its TTL.
    _QUEUED = """
    local pending_ttl, got_ttl = ARGV[1], ARGV[2]
    for _, version in ipairs(cjson.decode(ARGV[3])) do
        local pending, got, ids = version[1], version[2], version[3]
        for at = 1, #ids, 1000 do  -- unpack has a stack limit: at most 1,000 ids a call
            local upto = math.min(at + 999, #ids)
            redis.call('SADD', pending, unpack(ids, at, upto))
            if got ~= '' then redis.call('SADD', got, unpack(ids, at, upto)) end
        end
        redis.call('EXPIRE', pending, pending_ttl)
        if got ~= '' then redis.call('EXPIRE', got, got_ttl) end
    end
    return 0
    """

    def __init__(self, redis: Redis, key_prefix: str, attempts_kept: int) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}delivery:"
        self._attempts_kept = attempts_kept
        self._coalesced = _Coalescer(redis)
        self._settle = redis.register_script(_Settlements.SCRIPT)
        self._batch: _Settlements | None = None
        self._flushing: asyncio.Task[None] | None = None

    def _pending(self, uri: str, version: int) -> str:
        return f"{self._prefix}pending:{uri}:{version}"

    async def queued(self, jobs: Sequence[Job]) -> None:
        """Marks jobs as queued: per story version, one set of subscription ids; versions that
        are not withdrawals also count as sent to those subscriptions."""
        if jobs:
            async with self._redis.pipeline(transaction=False) as pipe:
                self.queued_ops(jobs)(pipe)
                await pipe.execute()

    def queued_ops(self, jobs: Sequence[Job]) -> PipelineOps:
        """`queued`'s writes, for a pipeline of the caller's (one round trip with others): one
        script call, however many versions (redis-py packs and parses every command in Python,
        and each was ~10 µs; a batch of stories made four a story)."""
        versions: dict[tuple[str, int], list[Job]] = {}
        for job in jobs:
            versions.setdefault((job.story_uri, job.version), []).append(job)
        if not versions:
            return lambda pipe: 0
        queued = _json([
            [self._pending(uri, version),
             f"{self._prefix}got:{uri}" if group[0].event_type is not EventType.WITHDRAWN else "",
             [j.subscription_id for j in group]]
            for (uri, version), group in versions.items()
        ])  # fmt: skip

        def ops(pipe: Any) -> int:
            # EVAL, not EVALSHA: a pipeline would check for the script on every flush.
            pipe.eval(self._QUEUED, 0, self.PENDING_TTL_S, self.GOT_TTL_S, queued)
            return 1

        return ops

    async def oldest_pending(self, job: Job) -> int | None:
        """The lowest earlier version of this story still queued for this subscription."""
        earlier = list(range(1, job.version))

        def ops(pipe: Any) -> int:
            for version in earlier:
                pipe.sismember(self._pending(job.story_uri, version), job.subscription_id)
            return len(earlier)

        found = await self._coalesced.run(ops) if earlier else []
        return next((v for v, queued in zip(earlier, found, strict=True) if queued), None)

    async def settled(self, job: Job, attempt: bytes | None, delivered: bool, dead: bool) -> None:
        """The job leaves the order guard; its attempt (`encode(DeliveryAttempt)`) and fate are
        kept. Written with every other settlement of this loop tick, in one script call."""
        batch = self._settling()
        pending = batch.pending.setdefault(self._pending(job.story_uri, job.version), [])
        pending.append(job.subscription_id)
        if dead:
            dead_key = f"{self._prefix}dead:{job.subscription_id}"
            batch.dead.setdefault(dead_key, {})[job.message_id] = job.to_json()
        if attempt is not None:
            batch.attempts.setdefault(self._attempts_key(job.subscription_id), []).append(attempt)
        await self._written(batch)

    async def attempted(self, subscription_id: str, attempt: bytes) -> None:
        """Keeps the attempt record of a job that goes on to a retry."""
        batch = self._settling()
        batch.attempts.setdefault(self._attempts_key(subscription_id), []).append(attempt)
        await self._written(batch)

    @staticmethod
    async def _written(batch: _Settlements) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        await waiter  # cancelling this caller cancels its waiter only, not the others' write

    def _attempts_key(self, subscription_id: str) -> str:
        return f"{self._prefix}attempts:{subscription_id}"

    def _settling(self) -> _Settlements:
        if self._batch is None:
            self._batch = _Settlements()
            self._flushing = asyncio.create_task(self._write_settlements(self._batch))
        return self._batch

    async def _write_settlements(self, batch: _Settlements) -> None:
        await asyncio.sleep(0)  # let the settlements of this loop tick join the batch
        self._batch = None
        try:
            await self._settle(args=batch.args(self._attempts_kept))
        except Exception as exc:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def attempts(self, subscription_id: str, limit: int) -> list[dict[str, Any]]:
        found = await self._redis.lrange(f"{self._prefix}attempts:{subscription_id}", 0, limit - 1)
        return [from_json(v) for v in found]  # the status page reads 100 a subscription

    async def receivers(self, uri: str) -> set[str]:
        return {text(s) for s in await self._redis.smembers(f"{self._prefix}got:{uri}")}

    async def dead_letters(self, subscription_id: str) -> list[Job]:
        found = await self._redis.hvals(f"{self._prefix}dead:{subscription_id}")
        return sorted((Job.from_json(v) for v in found), key=lambda j: (j.story_uri, j.version))

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]:
        """Each subscription's latest `limit` attempts and its dead letters counted, not read
        (each holds its story): one round trip for up to 500 subscriptions."""
        found: list[RecentDelivery] = []
        for start in range(0, len(subscription_ids), 500):
            async with self._redis.pipeline(transaction=False) as pipe:
                for subscription_id in subscription_ids[start : start + 500]:
                    pipe.lrange(f"{self._prefix}attempts:{subscription_id}", 0, limit - 1)
                    pipe.hlen(f"{self._prefix}dead:{subscription_id}")
                answers = await pipe.execute()
            found.extend(
                RecentDelivery([from_json(v) for v in attempts], int(dead))
                for attempts, dead in zip(answers[::2], answers[1::2], strict=True)
            )
        return found

    async def forget_dead(self, subscription_id: str, message_ids: Sequence[str]) -> None:
        if message_ids:
            await self._redis.hdel(f"{self._prefix}dead:{subscription_id}", *message_ids)

    async def embargo(self, record: bytes, release_at: float) -> None:
        await self._redis.zadd(f"{self._prefix}embargo", {record: release_at})

    async def due_embargoes(self, now: float, limit: int = 500) -> list[bytes]:
        found = await self._redis.zrangebyscore(
            f"{self._prefix}embargo", "-inf", now, start=0, num=limit
        )
        return [raw(v) for v in found]

    async def released(self, records: Sequence[bytes]) -> None:
        if records:
            await self._redis.zrem(f"{self._prefix}embargo", *records)


class KafkaJobQueue:
    """Puts webhook jobs on the outbox (due now) or on the retry tier that fits their wait.

    The key is the subscription id, so one subscription's jobs keep their order per tier."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self._producer = producer
        self._topics = topics

    def topic_for(self, job: Job, now: float) -> str:
        tier = tier_for(job.due - now)
        return self._topics.outbox if tier is None else self._topics.retry(tier)

    async def put_fanout(self, groups: Sequence[Sequence[Job]]) -> None:
        """One outbox record per story version, naming every subscription it goes to
        (key = story uri, so one story's versions stay in order on one partition)."""
        futures = [
            await self._producer.send(
                self._topics.outbox,
                group[0].story_json,
                key=group[0].story_uri.encode(),
                headers=fanout_headers(group),
            )
            for group in groups
            if group
        ]
        await asyncio.gather(*futures)

    async def put(self, jobs: Sequence[Job]) -> None:
        """Returns once the broker has every job (acks=all)."""
        now = time.time()
        futures = [
            await self._producer.send(
                self.topic_for(job, now),
                job.story_json,
                key=job.subscription_id.encode(),
                headers=job.to_headers(),
            )
            for job in jobs
        ]
        await asyncio.gather(*futures)


class KafkaAttemptLog:
    """Every attempt goes to `deliveries.attempts.v1`, keyed by subscription id, written a
    batch per partition at a time (`BatchedRecords`): nothing waits on one attempt's record.

    Attempts linger `linger_s` before they are handed on together: at a paced rate the answers
    of a fetch's webhooks come in one by one, and each produce request compresses a batch per
    partition (a zstd context each, ~7 a request): handed on at once, a paced 800 stories/s made
    ~100 requests a second, lingering 50 ms ~20. Nothing waits on them meanwhile."""

    EVENT_TYPE = "newsflow.delivery.attempted"
    LINGER_S = 0.05
    MAX_LINGERING = 10_000  # `record` waits while this many linger (the broker away)

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, source: str, linger_s: float = LINGER_S
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._source = source
        self._records = BatchedRecords(producer, topic)
        self._linger_s = linger_s
        self._lingering: list[tuple[int, bytes, bytes, Headers]] = []
        self._handing_on: asyncio.Task[None] | None = None
        self._taken = asyncio.Event()  # set whenever the lingering records are taken
        self._hurry = asyncio.Event()  # set by `flush` and `close`: no lingering then
        self._partition_of: dict[bytes, int] = {}
        self._partitioner = KeyPartitioner()  # the producers' own (`make_producer`)
        self._fixed_headers: Headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_source", source.encode()),
            ("ce_type", self.EVENT_TYPE.encode()),
        ]

    async def record(self, subscription_id: str, attempt: bytes) -> None:
        """`attempt` is `encode(DeliveryAttempt)`; queued, not awaited until the broker has
        it (`flush`, `close`)."""
        key = subscription_id.encode()
        partition = self._partition_of.get(key)
        if partition is None:
            partition = await self._partition(key)
        while len(self._lingering) >= self.MAX_LINGERING:
            self._taken.clear()
            await self._taken.wait()
        self._lingering.append((partition, key, attempt, self._headers()))
        if self._handing_on is None:
            self._handing_on = asyncio.create_task(self._hand_on(), name=f"linger {self._topic}")

    async def _hand_on(self) -> None:
        """After the linger, what was recorded meanwhile goes to the batches, in order."""
        try:
            while self._lingering:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger_s):
                        await self._hurry.wait()
                records, self._lingering = self._lingering, []
                self._taken.set()
                for partition, key, value, headers in records:
                    await self._records.append(partition, key, value, headers)
        finally:
            self._handing_on = None
            self._hurry.clear()

    def _headers(self) -> Headers:
        """The CloudEvents headers of `EventMeta.new(...).to_headers()`, built without the
        model: only the id and time differ from one attempt to the next."""
        if current_traceparent.get() is not None:  # inside a trace: a child span, the slow way
            return EventMeta.new(self.EVENT_TYPE, self._source).to_headers()
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return [
            *self._fixed_headers[:1],
            ("ce_id", new_event_id().encode()),
            *self._fixed_headers[1:],
            ("ce_time", at.encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]

    async def _partition(self, key: bytes) -> int:
        # The client's own partitioner (same partition as a keyed send), once per subscription:
        # it is pure Python and otherwise runs for every attempt.
        partitions = sorted(await self._producer.partitions_for(self._topic))
        found: int = self._partitioner(key, partitions, partitions)
        self._partition_of[key] = found
        return found

    async def flush(self) -> None:
        """Waits until every attempt recorded so far is acknowledged by the broker."""
        while self._handing_on is not None:
            self._hurry.set()
            await asyncio.shield(self._handing_on)
        await self._records.flush()

    async def close(self, within_s: float = PRODUCER_STOP_WITHIN_S) -> None:
        """Before the producer stops: what is queued goes out (or the log says it did not)."""
        try:
            async with asyncio.timeout(within_s):
                while self._handing_on is not None:
                    self._hurry.set()
                    await asyncio.shield(self._handing_on)
        except TimeoutError:
            log.error("attempts not written before the stop", lost=len(self._lingering))
            if self._handing_on is not None:
                self._handing_on.cancel()
        await self._records.close(within_s)


class KafkaSubscriptionEvents:
    """What happened to a subscription (disabled, re-enabled) on `subscriptions.events.v1`."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, source: str) -> None:
        self._producer = producer
        self._topic = topic
        self._source = source

    async def record(self, kind: str, subscription: Subscription, reason: str) -> None:
        meta = EventMeta.new(f"newsflow.subscription.{kind}", self._source)
        body = {
            "subscription_id": subscription.id,
            "url": subscription.url,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
        }
        await self._producer.send_and_wait(
            self._topic,
            json.dumps(body).encode(),
            key=subscription.id.encode(),
            headers=meta.to_headers(),
        )


async def resolve(host: str) -> list[str]:
    """Every address `host` resolves to (what the SSRF policy checks)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


Poster = Callable[[str, bytes, dict[str, str]], Awaitable[Answer]]
