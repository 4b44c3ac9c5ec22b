"""delivery's adapters against the real Redis and broker: the cache, the subscription store
shared by instances, and the webhook sender pinned to the address the SSRF policy checked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.delivery.adapters import (
    CachedStory,
    KafkaSubscriptionStore,
    RedisDeliveryState,
    RedisStoryCache,
    SecretSealer,
    scan_topic,
)
from services.delivery.domain import (
    Job,
    Subscription,
    SubscriptionRequest,
    fingerprint,
    new_secret,
)
from services.delivery.webhook_client import LeanWebhookSender
from shared.events import EventType, Topics
from tests.integration.kafka_reading import read_records
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def cached(
    uri: str, section: str, at: float, withdrawn: bool = False, version: int = 1
) -> CachedStory:
    body = f'{{"uri":"{uri}","at":{at},"v":{version}}}'.encode()
    return CachedStory(uri, section, at, withdrawn, body, section.title(), version)


async def test_latest_is_newest_first_per_section_capped_and_paged(
    redis: Redis, prefix: str
) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=3)
    await cache.apply([cached(f"urn:w{i}", "world", 1000 + i) for i in range(5)])
    await cache.apply([cached("urn:s1", "sport", 2000)])

    world, cursor = await cache.latest("world", 10)
    assert [b'"urn:w4"' in v for v in world] == [True, False, False]
    assert cursor is None
    everything, _ = await cache.latest(None, 10)
    assert len(everything) == 3 and everything[0].startswith(b'{"uri":"urn:s1"')
    first, cursor = await cache.latest("world", 2)
    second, end = await cache.latest("world", 2, cursor)
    assert [v[:13] for v in first + second] == [b'{"uri":"urn:w'] * 3
    assert len(set(first + second)) == 3 and end is None
    assert await cache.story("urn:w4") is not None
    assert {s["id"]: s["stories"] for s in await cache.sections()} == {"world": 3, "sport": 1}


async def test_withdrawn_story_leaves_every_list_and_old_versions_never_win(
    redis: Redis, prefix: str
) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=10)
    await cache.apply([cached("urn:a", "world", 1), cached("urn:b", "world", 2)])
    await cache.apply([cached("urn:b", "world", 2, version=3)])
    await cache.apply([cached("urn:b", "world", 2, version=2)])  # late, older: ignored
    await cache.apply([cached("urn:a", "world", 1, withdrawn=True, version=2)])

    assert await cache.story("urn:a") is None
    assert b'"v":3' in (await cache.story("urn:b") or b"")
    assert [b'"urn:a"' in v for v in (await cache.latest("world", 10))[0]] == [False]
    assert [b'"urn:a"' in v for v in (await cache.latest(None, 10))[0]] == [False]


async def test_a_story_moving_section_leaves_the_old_list(redis: Redis, prefix: str) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=10)
    await cache.apply([cached("urn:a", "world", 1)])
    await cache.apply([cached("urn:a", "politics", 1, version=2)])
    assert (await cache.latest("world", 10))[0] == []
    assert len((await cache.latest("politics", 10))[0]) == 1


async def test_stories_carry_their_fingerprint_and_concurrent_reads_get_their_own_answers(
    redis: Redis, prefix: str
) -> None:
    cache = RedisStoryCache(redis, prefix, per_section=100)
    stories = [cached(f"urn:c{i}", "world", 100 + i) for i in range(40)]
    await cache.apply(stories)
    found, pages = await asyncio.gather(
        asyncio.gather(*(cache.story_tagged(s.uri) for s in [*stories, cached("urn:no", "x", 1)])),
        asyncio.gather(*(cache.latest_tagged("world", n) for n in (1, 5))),
    )
    assert found == [(s.story_json, fingerprint(s.story_json)) for s in stories] + [None]
    assert [len(page) for page, _ in pages] == [1, 5]

    # A story written before fingerprints were stored is still served, tagged on the fly.
    await redis.set(f"{prefix}cache:story:urn:c0", b'{"uri":"urn:c0"}')
    assert await cache.story_tagged("urn:c0") == (
        b'{"uri":"urn:c0"}',
        fingerprint(b'{"uri":"urn:c0"}'),
    )


async def test_unusual_characters_are_stored_exactly_as_given(redis: Redis, prefix: str) -> None:
    # Keys and names travel to the scripts inside one JSON argument: nothing may be altered.
    uri, section, name = 'urn:ü"\\/\u2028😀\x00x', 'wörld"\\', 'Wörld "news" \\ 😀\n\x01'
    story = CachedStory(uri, section, 1_700_000_000.123456, False, '{"ü":"😀"}'.encode(), name, 3)
    cache = RedisStoryCache(redis, prefix, per_section=10)
    await cache.apply([story])
    assert await cache.story_tagged(uri) == (story.story_json, fingerprint(story.story_json))
    assert await cache.sections() == [{"id": section, "name": name, "stories": 1}]
    assert await redis.hget(f"{prefix}cache:version", uri) == b"3"
    latest = await redis.zrange(f"{prefix}cache:latest:{section}", 0, -1, withscores=True)
    assert latest == [(uri.encode(), 1_700_000_000.123456)]

    state = RedisDeliveryState(redis, prefix, attempts_kept=3)
    job = Job('sub_ü"', uri, 3, EventType.UPDATED, 8, 1.5, story.story_json)
    await state.queued([job])
    pending = f"{prefix}delivery:pending:{uri}:3"
    assert await redis.smembers(pending) == {'sub_ü"'.encode()}
    assert await redis.smembers(f"{prefix}delivery:got:{uri}") == {'sub_ü"'.encode()}
    await state.settled(job, '{"ü":1}'.encode(), delivered=False, dead=True)
    assert await redis.smembers(pending) == set()
    dead = await redis.hgetall(f'{prefix}delivery:dead:sub_ü"')
    assert dead == {job.message_id.encode(): job.to_json().encode()}
    assert await redis.lrange(f'{prefix}delivery:attempts:sub_ü"', 0, -1) == ['{"ü":1}'.encode()]


async def test_settlements_of_many_jobs_release_the_order_guard_and_keep_attempts(
    redis: Redis, prefix: str
) -> None:
    state = RedisDeliveryState(redis, prefix, attempts_kept=3)
    jobs = [
        Job(f"sub_{n % 2}", "urn:u", 1, EventType.PUBLISHED, 1, 0.0, b'{"uri":"urn:u"}')
        for n in range(6)
    ]
    later = Job("sub_0", "urn:u", 2, EventType.UPDATED, 1, 0.0, b'{"uri":"urn:u"}')
    await state.queued([jobs[0], jobs[1], later])
    assert await state.oldest_pending(later) == 1
    # Settled together (one loop tick), as the sender does with jobs finishing at once.
    await asyncio.gather(
        *(
            state.settled(job, f'{{"n":{n}}}'.encode(), delivered=n != 5, dead=n == 5)
            for n, job in enumerate(jobs)
        ),
        state.attempted("sub_1", b'{"n":6}'),
    )
    assert await state.oldest_pending(later) is None
    assert await state.attempts("sub_0", 10) == [{"n": 4}, {"n": 2}, {"n": 0}]
    assert await state.attempts("sub_1", 10) == [{"n": 6}, {"n": 5}, {"n": 3}]  # capped at 3
    assert [j.subscription_id for j in await state.dead_letters("sub_1")] == ["sub_1"]
    assert await state.dead_letters("sub_0") == []
    recent = await state.recent(["sub_1", "sub_0", "sub_none"], 2)
    assert recent == [([{"n": 6}, {"n": 5}], 1), ([{"n": 4}, {"n": 2}], 0), ([], 0)]


async def test_queued_jobs_mark_their_version_pending_and_who_got_the_story(
    redis: Redis, prefix: str
) -> None:
    state = RedisDeliveryState(redis, prefix, attempts_kept=3)
    many = [f"sub_{n}" for n in range(2500)]  # more ids than one script call adds at once

    def jobs(uri: str, version: int, event_type: EventType, ids: list[str]) -> list[Job]:
        return [Job(i, uri, version, event_type, 1, 0.0, b"{}") for i in ids]

    await state.queued(
        jobs("urn:a", 1, EventType.PUBLISHED, ["sub_a", "sub_b"])
        + jobs("urn:a", 2, EventType.UPDATED, ["sub_c"])
        + jobs("urn:a", 3, EventType.WITHDRAWN, ["sub_d"])
        + jobs("urn:b", 1, EventType.PUBLISHED, many)
    )
    await state.queued([])

    async def members(key: str) -> set[str]:
        return {m.decode() for m in await redis.smembers(f"{prefix}delivery:{key}")}

    assert await members("pending:urn:a:1") == {"sub_a", "sub_b"}
    assert await members("pending:urn:a:2") == {"sub_c"}
    assert await members("pending:urn:a:3") == {"sub_d"}
    assert await members("pending:urn:b:1") == set(many)
    # A withdrawal is not a story sent.
    assert await state.receivers("urn:a") == {"sub_a", "sub_b", "sub_c"}
    assert await state.receivers("urn:b") == set(many)
    day = 86_400
    for key, ttl in (("pending:urn:a:3", 7 * day), ("pending:urn:b:1", 7 * day),
                     ("got:urn:a", 30 * day), ("got:urn:b", 30 * day)):  # fmt: skip
        assert ttl - 60 < await redis.ttl(f"{prefix}delivery:{key}") <= ttl
    later = Job("sub_b", "urn:a", 2, EventType.UPDATED, 1, 0.0, b"{}")
    assert await state.oldest_pending(later) == 1


async def test_subscriptions_are_shared_by_instances_and_survive_a_restart(
    kafka_bootstrap: str, topics: Topics
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    stores = [
        KafkaSubscriptionStore(producer, kafka_bootstrap, topics.subscriptions, "urn:t")
        for _ in range(2)
    ]
    tails = [asyncio.create_task(s.tail()) for s in stores]
    try:
        for store in stores:
            await asyncio.wait_for(store.wait_caught_up(), 20)
        kept = Subscription.create(SubscriptionRequest(url="https://p.example/a"))
        gone = Subscription.create(SubscriptionRequest(url="https://p.example/b"))
        await stores[0].add(kept)
        await stores[0].add(gone)
        assert await stores[0].remove(gone.id)

        for _ in range(200):
            if [s.id for s in await stores[1].all()] == [kept.id]:
                break
            await asyncio.sleep(0.05)
        assert [s.id for s in await stores[1].all()] == [kept.id]
        restarted = KafkaSubscriptionStore(producer, kafka_bootstrap, topics.subscriptions, "urn:t")
        tails.append(asyncio.create_task(restarted.tail()))
        await asyncio.wait_for(restarted.wait_caught_up(), 20)
        assert await restarted.get(kept.id) == kept
        assert await restarted.get(gone.id) is None
    finally:
        for tail in tails:
            tail.cancel()
        await asyncio.gather(*tails, return_exceptions=True)
        await producer.stop()


async def test_sender_connects_only_to_the_vetted_address(receiver: WebhookReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    asked: list[str] = []

    async def stub(host: str) -> list[str]:
        asked.append(host)
        return {"partner.test": ["127.0.0.1"], "evil.test": ["169.254.169.254"]}.get(host, [])

    # Allowed (tests only): the name resolves through the stub and the request goes to that IP.
    async with LeanWebhookSender(stub, allow_private=True, timeout_s=5) as sender:
        ok = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
        assert ok.status == 200 and receiver.received[0].headers["host"].startswith("partner.test")

    # Refused at send time, before any connection (a DNS answer that changed since subscribing).
    async with LeanWebhookSender(stub, allow_private=False, timeout_s=5) as sender:
        refused = await sender.post(f"http://evil.test:{port}/h", b"{}", {})
        also = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    assert refused.status is None and "non-public" in (refused.error or "")
    assert also.status is None and "non-public" in (also.error or "")
    assert len(receiver.received) == 1
    assert asked == ["partner.test", "evil.test", "partner.test"]


class SubscriptionStores:
    """Subscription stores on one topic, each with its own tail (stopped after the test)."""

    def __init__(self, producer: AIOKafkaProducer, bootstrap: str, topic: str) -> None:
        self.producer, self.bootstrap, self.topic = producer, bootstrap, topic
        self.tails: list[asyncio.Task[None]] = []

    def writer(self, sealer: SecretSealer | None) -> KafkaSubscriptionStore:
        args = (self.producer, self.bootstrap, self.topic, "urn:t", None, sealer)
        return KafkaSubscriptionStore(*args)

    async def caught_up(self, sealer: SecretSealer | None) -> KafkaSubscriptionStore:
        store = self.writer(sealer)
        self.tails.append(asyncio.create_task(store.tail()))
        await asyncio.wait_for(store.wait_caught_up(), 20)
        return store


@pytest.fixture
async def stores(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[SubscriptionStores]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    stores = SubscriptionStores(producer, kafka_bootstrap, topics.subscriptions)
    try:
        yield stores
    finally:
        for tail in stores.tails:
            tail.cancel()
        await asyncio.gather(*stores.tails, return_exceptions=True)
        await producer.stop()


async def test_signing_secrets_are_sealed_on_the_topic_and_open_only_with_the_key(
    kafka_bootstrap: str, topics: Topics, stores: SubscriptionStores
) -> None:
    key, other_key = SecretSealer.new_key(), SecretSealer.new_key()
    writer = await stores.caught_up(SecretSealer(key))
    sealed = Subscription.create(SubscriptionRequest(url="https://p.example/a"))
    sealed = sealed.rotated(new_secret(), timedelta(hours=1), datetime.now(UTC))
    await writer.add(sealed)
    # Written before a key was set: still read, in plain text.
    older = Subscription.create(SubscriptionRequest(url="https://p.example/b"))
    await stores.writer(None).add(older)

    records = scan_topic(kafka_bootstrap, topics.subscriptions)
    stored = {key: value or b"" async for _, key, value, _ in records}
    assert set(stored) == {sealed.id.encode(), older.id.encode()}
    on_topic = stored[sealed.id.encode()]
    assert sealed.secret.encode() not in on_topic
    assert sealed.previous_secret and sealed.previous_secret.encode() not in on_topic
    assert b'"secret":"sealed:v1:' in on_topic

    same_key = await stores.caught_up(SecretSealer(key))
    assert await same_key.get(sealed.id) == sealed
    assert await same_key.get(older.id) == older
    for wrong in (None, SecretSealer(other_key)):
        reader = await stores.caught_up(wrong)
        assert await reader.get(sealed.id) is None  # logged: cannot be unsealed
        assert await reader.get(older.id) == older


async def test_a_change_made_through_one_instance_starts_from_what_another_wrote_a_moment_ago(
    stores: SubscriptionStores,
) -> None:
    """Admin calls behind a load balancer land on any instance: each reads the topic up to
    now before it changes a subscription, so none undoes another's change of a moment ago."""
    first, second = await stores.caught_up(None), await stores.caught_up(None)
    created = Subscription.create(SubscriptionRequest(url="https://p.example/a"))
    await first.add(created)
    assert await second.latest(created.id) == created  # not yet in its tail's view, maybe

    listed = await first.all()
    assert await first.all() is listed  # one answer until something changes
    paused = created.model_copy(update={"paused": True})
    await second.add(paused)
    base = await first.latest(created.id)
    assert base == paused
    assert base.revision == paused.revision != created.revision  # the ETag, on every instance
    assert await first.all() == (paused,)  # changed by the other instance: listed anew
    moved = base.model_copy(update={"url": "https://p.example/b"})
    await first.add(moved)  # paused stays paused: the pause is not undone

    for store in (first, second):
        assert await store.latest(created.id) == moved
    await first.reseal()  # no key: nothing to write, and it returns at once
    other = Subscription.create(SubscriptionRequest(url="https://p.example/c"))
    await first.add(other)
    await second.read_to_now()
    assert other in await second.all()  # listed, though created elsewhere a moment ago
    assert await second.remove(other.id)  # created elsewhere a moment ago: found
    assert await first.latest(other.id) is None


async def test_the_tail_never_brings_back_an_older_record_of_a_subscription_written_here(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """The tail runs behind the writes: replaying the disabled record after the resumed one
    was written here must not make the subscription read as disabled again."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    store = KafkaSubscriptionStore(producer, kafka_bootstrap, topics.subscriptions, "urn:t")
    try:
        active = Subscription.create(SubscriptionRequest(url="https://p.example/a"))
        disabled = active.model_copy(update={"disabled_at": datetime.now(UTC)})
        await store.add(disabled)
        await store.add(active)  # resumed
        disabled_record, _ = await read_records(kafka_bootstrap, topics.subscriptions, 2)
        # The tail meets the disabled record now, after the resumed one was written here.
        await store._apply(disabled_record)
        assert await store.get(active.id) == active
    finally:
        await producer.stop()


async def test_after_a_key_rotation_reseal_seals_every_secret_with_the_new_key(
    kafka_bootstrap: str, topics: Topics, stores: SubscriptionStores
) -> None:
    old, new = SecretSealer.new_key(), SecretSealer.new_key()
    sealed_old = Subscription.create(SubscriptionRequest(url="https://p.example/a"))
    await stores.writer(SecretSealer(old)).add(sealed_old)
    plain = Subscription.create(SubscriptionRequest(url="https://p.example/b"))
    await stores.writer(None).add(plain)  # written before any key was set

    rotating = await stores.caught_up(SecretSealer(f"{new},{old}"))
    assert rotating.unsealed == 2
    assert await rotating.reseal() == 2
    assert (rotating.unsealed, await rotating.reseal()) == (0, 0)

    # The old key can go: a store with the new key alone reads both, sealed.
    new_only = await stores.caught_up(SecretSealer(new))
    assert await new_only.get(sealed_old.id) == sealed_old
    assert await new_only.get(plain.id) == plain
    assert new_only.unsealed == 0
    records = scan_topic(kafka_bootstrap, topics.subscriptions)
    latest = {key: value or b"" async for _, key, value, _ in records}
    assert plain.secret.encode() not in latest[plain.id.encode()]
