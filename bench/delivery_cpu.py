"""delivery's CPU per story, in-process: the real story consumer's handling (`StoryConsumer._take`:
decode, cache, fan-out, first attempts, settling, the attempt log) fed with story records, so the
figure is what delivery's own code costs a story, without the broker fetch or the HTTP API.

    flock /tmp/newsflow-bench.lock .venv/bin/python -m bench.delivery_cpu [--stories 4000]
        [--rate 4000] [--rounds 3]

Starts the embedded broker (the attempt log, the subscriptions), redis-server and the bench's
partner receiver (`bench.processes receiver`) as their own processes, subscribes 20 endpoints one
section each (as `bench.e2e`: ~2.5 webhooks a story), and hands the consumer a fetch of
`rate * fetch_interval` 3 KB stories every `--fetch-interval-ms` (bench.stories: 10 % corrections,
1 % withdrawals), as its fetch loop would. The default rate is more than one core handles, so
fetches follow one another at once: a burst (the figure to compare with `bench.e2e`'s burst);
`--rate 700` is a paced run. Prints this process's CPU µs a story (user + system, everything from
the first fetch until the last record is settled and the attempt log flushed), and a baseline
measured in the same round: the same fetches turned into one Redis write per story in one
pipeline and the same webhook bodies posted with the same client, nothing else. Every process
started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import re
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from redis.asyncio import Redis

from bench.e2e import subscriber_urls
from bench.stories import NAMES, SECTIONS, stream
from ops.embedded import ChildProcess, free_port, spawn, start_kafka, start_redis, wait_for_port
from services.delivery.adapters import (
    KafkaAttemptLog,
    KafkaJobQueue,
    KafkaSubscriptionEvents,
    KafkaSubscriptionStore,
    RedisDeliveryState,
    RedisStoryCache,
    resolve,
)
from services.delivery.app import DeliveryMetrics, Fanout, Sender, StoryConsumer
from services.delivery.domain import Subscription, SubscriptionRequest
from services.delivery.settings import DeliverySettings
from services.delivery.webhook_client import LeanWebhookSender
from shared.events import (
    Article,
    Enrichment,
    EventMeta,
    EventType,
    Topics,
    encode_story,
    new_traceparent,
)
from shared.kafka import DeadLetters, ensure_topics, make_producer, stop_producer
from shared.logging import configure_logging

PARTITIONS = 6
NAME_OF = {section_id: name for name, section_id in SECTIONS.items()}
TAGS = re.compile(r"<[^>]+>")

# (event type, story uri, section id, value) of each story record.
StoryRecord = tuple[EventType, str, str, bytes]


def story_records(count: int, run: str) -> list[StoryRecord]:
    """`bench.stories.stream` as enrichment writes it on `stories.enriched.v1`: each article with
    its plain text, a section, three related stories and a few entities."""
    found: list[StoryRecord] = []
    latest: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(stream(count, run)):
        if item.kind == "withdraw":
            fields = {
                **latest[item.uri],
                "version": latest[item.uri]["version"] + 1,
                "pubstatus": "canceled",
                "summary": "WITHDRAWN: legal request",
            }
            event = EventType.WITHDRAWN
        else:
            fields = json.loads(item.body)
            event = EventType.PUBLISHED if item.kind == "publish" else EventType.UPDATED
        latest[item.uri] = fields
        article = Article.model_validate(
            {**fields, "body_text": TAGS.sub(" ", str(fields["body_html"]))}
        )
        enrichment = Enrichment.model_validate(
            {
                "section": {"id": item.section_id, "name": NAME_OF[item.section_id],
                            "confidence": 0.9, "method": "provider"},
                "related": [
                    {"uri": f"urn:newsflow:bench:{run}:{n - k}", "score": 0.5 / k,
                     "headline": f"Earlier story {n - k} on the same subject"}
                    for k in range(1, 4) if n - k >= 0
                ],
                "entities": {"people": NAMES[n % 50 : n % 50 + 2], "places": [NAMES[n % 97]]},
            }
        )  # fmt: skip
        found.append((event, item.uri, item.section_id, encode_story(article, enrichment)))
    return found


class Fetches:
    """The records of the story topic, handed out one fetch at a time."""

    def __init__(self, topic: str, stories: list[StoryRecord]) -> None:
        partitioner = DefaultPartitioner()
        partitions = list(range(PARTITIONS))
        self.records: list[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]] = []
        offsets = [0] * PARTITIONS
        for event, uri, _, value in stories:
            key = uri.encode()
            partition = partitioner(key, partitions, partitions)
            meta = EventMeta.new(event.value, "bench:enrichment", traceparent=new_traceparent())
            record = ConsumerRecord(
                topic, partition, offsets[partition], int(time.time() * 1000), 0, key, value,
                None, len(key), len(value), tuple(meta.to_headers()),
            )  # fmt: skip
            offsets[partition] += 1
            self.records.append((TopicPartition(topic, partition), record))

    def batches(self, size: int) -> list[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
        found = []
        for start in range(0, len(self.records), size):
            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
            for tp, record in self.records[start : start + size]:
                batch.setdefault(tp, []).append(record)
            found.append(batch)
        return found


class Settled:
    """Stands in for the consumer's offset tracking: counts records until each is settled."""

    def __init__(self) -> None:
        self.left = 0
        self.done = asyncio.Event()

    def passed(self, tp: TopicPartition, offset: int) -> None:
        return None

    def started(self, tp: TopicPartition, offset: int) -> Callable[[], None]:
        self.left += 1
        self.done.clear()
        return self._settled

    def _settled(self) -> None:
        self.left -= 1
        if not self.left:
            self.done.set()


def cpu_s() -> tuple[float, float]:
    """This process's user and system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


@dataclass(frozen=True)
class Round:
    user_us: float  # delivery's CPU µs a story, in user mode
    system_us: float  # and in the kernel (mostly socket writes and reads)
    baseline_us: float
    webhooks: float  # delivered a story

    @property
    def cpu_us(self) -> float:
        return self.user_us + self.system_us

    @property
    def ratio(self) -> float:
        return self.cpu_us / self.baseline_us


class NoConsumer:
    """`_take` only rewinds a consumer when Redis or the broker fails: it must not happen."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the story consumer called consumer.{name}: a failure")


async def paced(batches: list[Any], interval_s: float, take: Callable[[Any], Any]) -> None:
    """Hands out one batch every `interval_s` (as a fetch loop would), never two at once."""
    started = time.perf_counter()
    for n, batch in enumerate(batches):
        wait = started + n * interval_s - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        await take(batch)


async def measure(
    settings: DeliverySettings,
    receiver: str,
    stories: list[StoryRecord],
    args: argparse.Namespace,
    profile: str,
) -> Round:
    """Delivery's and the baseline's CPU a story, one after the other in this round."""
    topics = settings.topics
    redis = Redis.from_url(settings.redis_url)
    producer = make_producer(settings)
    await producer.start()
    metrics = DeliveryMetrics()
    try:
        async with LeanWebhookSender(resolve, True, settings.delivery_timeout_s) as client:
            source = "bench:delivery"
            dead_letters = DeadLetters(producer, topics.dlq, metrics.consumer)
            subscriptions = KafkaSubscriptionStore(
                producer, settings.kafka_bootstrap_servers, topics.subscriptions, source
            )
            urls = subscriber_urls(receiver)
            for section_id, section_urls in urls.items():
                for url in section_urls:
                    await subscriptions.add(
                        Subscription.create(SubscriptionRequest(url=url, sections=[section_id]))
                    )
            cache = RedisStoryCache(redis, settings.redis_key_prefix, settings.cache_per_section)
            state = RedisDeliveryState(
                redis, settings.redis_key_prefix, settings.delivery_attempts_kept
            )
            queue = KafkaJobQueue(producer, topics)
            attempt_log = KafkaAttemptLog(producer, topics.attempts, source)
            events = KafkaSubscriptionEvents(producer, topics.subscription_events, source)
            fanout = Fanout(cache, asyncio.Lock(), subscriptions, state, queue, metrics)
            sender = Sender(
                NoConsumer(), topics, subscriptions, state, queue, client.post,  # type: ignore[arg-type]
                attempt_log, events, metrics, settings, dead_letters,
            )  # fmt: skip
            consumer = StoryConsumer(fanout, sender, dead_letters, metrics, 0.5)
            fetches = Fetches(topics.enriched, stories)
            gc.collect()
            gc.freeze()  # as the service does after start-up: the records are not work done
            size = max(1, round(args.rate * args.fetch_interval_ms / 1000))
            interval = args.fetch_interval_ms / 1000
            batches = fetches.batches(size)
            warm, measured = batches[:5], batches[5:]
            settled = Settled()

            async def take(batch: Any) -> None:
                await consumer._take(NoConsumer(), settled, batch)  # type: ignore[arg-type]

            async def run(batches: list[Any]) -> None:
                await paced(batches, interval, take)
                await settled.done.wait()
                await attempt_log.flush()

            await run(warm)
            count = sum(len(r) for b in measured for r in b.values())
            profiler = cProfile.Profile() if profile else None
            cpu = cpu_s()
            if profiler:
                profiler.enable()
            await run(measured)
            if profiler:
                profiler.disable()
                profiler.dump_stats(profile)
            (user_s, system_s), (user_0, system_0) = cpu_s(), cpu
            user, system = (user_s - user_0) / count * 1e6, (system_s - system_0) / count * 1e6
            outcomes = {
                outcome: metrics.registry.get_sample_value(
                    "newsflow_delivery_webhooks_total", {"outcome": outcome}
                )
                for outcome in ("delivered", "failed", "gave_up")
            }
            if outcomes["failed"] or outcomes["gave_up"]:
                raise RuntimeError(f"webhooks not delivered: {outcomes}")
            base = await baseline(redis, client, urls, stories[-count:], size, interval)
            return Round(user, system, base, (outcomes["delivered"] or 0) / len(stories))
    finally:
        await stop_producer(producer)
        await redis.aclose()


async def baseline(
    redis: Redis,
    client: LeanWebhookSender,
    urls: dict[str, list[str]],
    stories: list[StoryRecord],
    size: int,
    interval_s: float,
) -> float:
    """The bare work of the same stories: one pipelined SET each a fetch, and each story's body
    posted to the endpoints of its section (withdrawals to nobody)."""
    prefix = f"bare{uuid.uuid4().hex[:6]}:"
    batches = [stories[start : start + size] for start in range(0, len(stories), size)]
    tasks: set[asyncio.Task[Any]] = set()
    headers = {"content-type": "application/json"}

    async def take(batch: list[StoryRecord]) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for _, uri, _, value in batch:
                pipe.set(prefix + uri, value)
            await pipe.execute()
        for event, _, section_id, value in batch:
            if event is not EventType.WITHDRAWN:
                for url in urls.get(section_id, []):
                    task = asyncio.create_task(client.post(url, value, headers))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    cpu = cpu_s()
    await paced(batches, interval_s, take)
    while tasks:
        await asyncio.wait(set(tasks))
    return (sum(cpu_s()) - sum(cpu)) / len(stories) * 1e6


def start_receiver() -> ChildProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.processes", "receiver", "--port", str(port)]
    child = spawn("receiver", argv, f"http://127.0.0.1:{port}", None, None)
    wait_for_port("127.0.0.1", port, 15, child)
    return child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stories", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=4000.0, help="stories a second")
    parser.add_argument("--fetch-interval-ms", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="", help="write cProfile stats of the last round")
    args = parser.parse_args()
    configure_logging("WARNING", "json")
    kafka, redis, receiver = start_kafka(), start_redis(), start_receiver()
    try:
        import uvloop

        results: list[Round] = []
        for round_ in range(args.rounds):
            prefix = f"dcpu{uuid.uuid4().hex[:6]}."
            asyncio.run(ensure_topics(kafka.address, Topics(prefix).all()))
            settings = DeliverySettings(
                kafka_bootstrap_servers=kafka.address,
                redis_url=redis.address,
                topic_prefix=prefix,
                redis_key_prefix=prefix,
                delivery_allow_private_targets=True,
                log_level="WARNING",
                log_format="json",
            )
            stories = story_records(args.stories, prefix)
            profile = args.profile if round_ == args.rounds - 1 else ""
            found = uvloop.run(measure(settings, receiver.address, stories, args, profile))
            results.append(found)
            print(
                f"round {round_ + 1}: delivery {found.cpu_us:.1f} µs CPU a story (user "
                f"{found.user_us:.1f}, system {found.system_us:.1f}; {found.webhooks:.2f} "
                f"webhooks a story), baseline {found.baseline_us:.1f} µs, ratio {found.ratio:.3f}",
                flush=True,
            )
        print(
            f"median: delivery {statistics.median(r.cpu_us for r in results):.1f} µs a story "
            f"(user {statistics.median(r.user_us for r in results):.1f}), "
            f"ratio {statistics.median(r.ratio for r in results):.3f} "
            f"({args.stories} stories at {args.rate:g}/s, "
            f"a fetch every {args.fetch_interval_ms:g} ms)"
        )
    finally:
        receiver.stop()
        redis.stop()
        kafka.stop()


if __name__ == "__main__":
    os.environ.setdefault("NEWSFLOW_LOG_LEVEL", "WARNING")
    main()
