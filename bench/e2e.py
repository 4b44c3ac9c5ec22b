"""End-to-end benchmark: the real three services on the embedded broker and Redis, against a raw
three-hop aiokafka passthrough measured in the same run (`make bench`).

Every story carries a `bench-<token>` keyword; the receiver (its own process) records the token and
the time each webhook arrived, the load client the time each story was sent, so latency is
ingest-request -> webhook-received across processes on one clock.

Each measured run (the max-rate run with the short paced one, then every step of every sweep)
gets a fresh broker, Redis and set of processes: Tansu's memory storage slows with every record
batch a topic holds, so runs on one broker got slower one after the other, raw and ours alike.
Each sweep step also leaves `timeline-<scenario>-<rate>-<tag>.csv` in the logs directory: per
new story, when it was sent, reached each hop's topic and its first webhook came.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.processes import process_tree_cpu_s, raw_producer
from bench.stories import SECTIONS, Item, stream
from ops.devrun import http_json, wait_ready
from ops.embedded import ChildProcess, free_port, spawn, start_kafka, start_redis, wait_for_port
from services.delivery.adapters import resolve
from services.delivery.webhook_client import LeanWebhookSender
from services.enrichment.settings import EnrichmentSettings
from shared.cpu import apply_cpu_scheduling
from shared.events import Topics
from shared.kafka import ensure_topics
from shared.settings import NewsflowSettings

SUBSCRIPTIONS = 20
API_KEY = "bench-ingest-key"
ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 (a local run's own)


@dataclass
class Result:
    name: str
    mode: str
    stories: int
    accepted: int
    webhooks: int
    expected_webhooks: int
    seconds: float
    latencies_ms: list[float]
    cache_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)
    first_webhook: dict[int, float] = field(default_factory=dict)  # token -> when it came
    stages: list[Hop] = field(default_factory=list)
    sweep: int = 0  # which of `--sweeps` the run belongs to (0: none)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        p50, p99 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 99)
        text = (
            f"{self.name:<28} {self.mode:<10} {self.rate:8.0f} stories/s  "
            f"webhooks {self.webhooks}/{self.expected_webhooks}  "
            f"latency p50 {p50:6.1f} ms p99 {p99:7.1f} ms"
        )
        if self.cache_ms:
            text += (
                f"  cache-visible p50 {percentile(self.cache_ms, 50):.1f} ms "
                f"p99 {percentile(self.cache_ms, 99):.1f} ms (n={len(self.cache_ms)})"
            )
        if set(self.statuses) - {200, 202}:
            text += f"  statuses {dict(self.statuses)}"
        return text

    def stages_line(self) -> str:
        """Per hop: a new story's time from the hop before (p50/p99), and when the hop wrote its
        last record from the first request (the hop that falls behind is where stories queue).
        """
        parts = [
            f"{hop.what} +{hop.p50_ms:.0f}/{hop.p99_ms:.0f} ms (last at {hop.last_s:.1f} s)"
            for hop in self.stages
        ]
        return "    hops, p50/p99: " + " -> ".join(parts)

    def cpu_line(self) -> str:
        """CPU per accepted story of every process in the run: where the two cores went."""
        if not self.cpu_s or not self.accepted:
            return ""
        parts = sorted(self.cpu_s.items(), key=lambda item: -item[1])
        total = sum(self.cpu_s.values())
        shares = "  ".join(f"{n} {1e6 * s / self.accepted:.0f}" for n, s in parts)
        return (
            f"    CPU µs/story: total {1e6 * total / self.accepted:.0f} "
            f"({total / self.seconds:.2f} cores busy of {os.cpu_count()}): {shares}"
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- processes --------------------------------------------------------------------------------


@dataclass
class Infra:
    kafka: ChildProcess
    redis: ChildProcess
    children: list[ChildProcess] = field(default_factory=list)

    def pids(self, receiver: ChildProcess) -> dict[str, int]:
        """Every process of the run by name, for the CPU account."""
        named = {"broker": self.kafka.pid, "redis": self.redis.pid, "receiver": receiver.pid}
        return named | {child.name: child.pid for child in self.children}

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.redis.stop()
        self.kafka.stop()


@contextmanager
def infra(logs: Path, tag: str) -> Iterator[Infra]:
    """A fresh broker and Redis for each measured run: Tansu's memory storage never frees."""
    kafka = start_kafka(log_path=logs / f"{tag}-tansu.log")
    redis = start_redis(log_path=logs / f"{tag}-redis.log")
    running = Infra(kafka, redis)
    try:
        yield running
    finally:
        running.stop()


def start_receiver(logs: Path) -> ChildProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.processes", "receiver", "--port", str(port)]
    child = spawn("receiver", argv, f"http://127.0.0.1:{port}", logs / "receiver.log", None)
    wait_for_port("127.0.0.1", port, 15, child)
    return child


def receiver_get(receiver: str, path: str) -> Any:
    with urllib.request.urlopen(f"{receiver}{path}", timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def receiver_reset(receiver: str) -> None:
    request = urllib.request.Request(f"{receiver}/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


def subscriber_urls(receiver: str) -> dict[str, list[str]]:
    """20 subscriptions, each to one section: a story goes to 2 or 3 of them."""
    ids = list(SECTIONS.values())
    urls: dict[str, list[str]] = {}
    for n in range(SUBSCRIPTIONS):
        urls.setdefault(ids[n % len(ids)], []).append(f"{receiver}/s/{n}")
    return urls


def service_env(infra_: Infra, prefix: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": infra_.kafka.address,
        "NEWSFLOW_REDIS_URL": infra_.redis.address,
        "NEWSFLOW_TOPIC_PREFIX": prefix,
        "NEWSFLOW_REDIS_KEY_PREFIX": prefix,
        "NEWSFLOW_INGEST_API_KEYS": API_KEY,
        "NEWSFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
        "NEWSFLOW_INGEST_RATE_LIMIT": "100000000",
        "NEWSFLOW_DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "NEWSFLOW_LOG_FORMAT": "json",
        "NEWSFLOW_ENRICHMENT_GROUP_ID": f"{prefix}enrichment",
        "NEWSFLOW_DELIVERY_GROUP_ID": f"{prefix}delivery",
        "NEWSFLOW_DELIVERY_SENDER_GROUP_ID": f"{prefix}delivery-sender",
        **extra,
    }


@dataclass
class Services:
    ingest: str
    delivery: str
    pids: dict[str, int]
    bootstrap: str
    stages: list[tuple[str, str]]  # (what, topic): each hop's output, in order


def start_services(
    infra_: Infra, logs: Path, tag: str, enrichers: int, deliverers: int, extra: dict[str, str]
) -> Services:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    asyncio.run(ensure_topics(infra_.kafka.address, Topics(prefix).all()))
    env = service_env(infra_, prefix, extra)
    plan = [("ingest", 0)] + [("enrichment", i) for i in range(enrichers)]
    plan += [("delivery", i) for i in range(deliverers)]
    started: list[ChildProcess] = []
    for name, index in plan:
        port = free_port()
        child = spawn(
            f"{name}-{index}",
            [sys.executable, "-m", f"services.{name}"],
            f"http://127.0.0.1:{port}",
            logs / f"{tag}-{name}-{index}.log",
            {**env, f"NEWSFLOW_{name.upper()}_PORT": str(port)},
        )
        infra_.children.append(child)
        started.append(child)
    for child in started:
        wait_ready(child.name, f"{child.address}/readyz", child, timeout=90)
    by_name = {c.name: c for c in started}
    topics = Topics(prefix)
    return Services(
        by_name["ingest-0"].address,
        by_name["delivery-0"].address,
        {c.name: c.pid for c in started},
        infra_.kafka.address,
        [("ingested", topics.ingested), ("enriched", topics.enriched)],
    )


def subscribe_all(services: Services, urls: dict[str, list[str]]) -> None:
    for section_id, section_urls in urls.items():
        for url in section_urls:
            status, body = http_json(
                "POST",
                f"{services.delivery}/v1/subscriptions",
                {"url": url, "sections": [section_id]},
                token=ADMIN_TOKEN,
            )
            if status != 201:
                raise RuntimeError(f"cannot subscribe {url}: {status} {body}")


def start_baseline(infra_: Infra, logs: Path, urls: dict[str, list[str]]) -> list[str]:
    prefix = f"raw{uuid.uuid4().hex[:6]}."
    hops = [f"{prefix}a", f"{prefix}b", f"{prefix}c"]
    asyncio.run(_create_plain_topics(infra_.kafka.address, hops))
    targets: list[str | None] = [hops[1], hops[2], None]
    for index, (source, target) in enumerate(zip(hops, targets, strict=True)):
        argv = [
            sys.executable,
            "-m",
            "bench.processes",
            "hop",
            "--bootstrap",
            infra_.kafka.address,
            "--source",
            source,
            "--urls",
            json.dumps(urls),
            # The first hop reads what the load client sent, as enrichment reads what ingest
            # stored: the same fetch wait as enrichment's; the others as delivery's story consumer.
            "--fetch-max-wait-ms",
            str(
                EnrichmentSettings().enrichment_fetch_max_wait_ms
                if index == 0
                else NewsflowSettings().kafka_fetch_max_wait_ms
            ),
        ]
        if target is not None:
            argv += ["--target", target]
        infra_.children.append(spawn(f"hop-{index}", argv, "", logs / f"hop-{index}.log", None))
    return hops


async def _create_plain_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 6, 1) for name in names])
    finally:
        await admin.close()


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree; `load client` is this process."""
    own = os.times()
    snapshot = {"load client": own.user + own.system}
    snapshot.update({name: process_tree_cpu_s(pid) for name, pid in pids.items()})
    return snapshot


# --- load -------------------------------------------------------------------------------------

Send = Callable[[Item], Awaitable[int]]
Hops = tuple[str, list[tuple[str, str]]]  # the broker, and each hop's (name, output topic)


async def offer(
    items: list[Item], send: Send, rate: float | None, concurrency: int
) -> tuple[dict[int, float], Counter[int], float]:
    """Sends every item: as fast as `concurrency` allows, or paced at `rate` per second. One
    story's items go in order, each once the one before it was answered (as a newsroom sends a
    correction after the version it corrects): with many requests in flight, a correction
    could otherwise overtake its story and be refused."""
    sent: dict[int, float] = {}
    statuses: Counter[int] = Counter()
    refused: set[int] = set()
    queue = iter(enumerate(items))
    answered: dict[str, asyncio.Future[None]] = {}  # uri -> its latest item's answer
    start = time.monotonic()

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        for index, item in queue:
            before = answered.get(item.uri)
            mine = answered[item.uri] = loop.create_future()
            try:
                if before is not None:
                    await before
                if rate is not None:
                    delay = start + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sent[item.token] = time.time()
                status = await send(item)
            finally:
                mine.set_result(None)
            statuses[status] += 1
            if status not in (200, 202):
                refused.add(item.token)

    first = time.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for token in refused:
        del sent[token]
    return sent, statuses, first


# What a failed post's `Answer.error` starts with (`LeanWebhookSender` writes "<type>: <detail>")
# when the connection failed: closed by the server without an answer, reset, refused. aiohttp
# raised these as `ClientConnectionError`; a timeout or a malformed answer it raised as other
# errors, which ended the run, and they still do.
_CONNECTION_ERRORS = frozenset(
    {
        "ServerClosed",
        "_Stale",
        "OSError",
        "ConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "ConnectionAbortedError",
        "BrokenPipeError",
    }
)


def ingest_client() -> LeanWebhookSender:
    """The load client's connections to ingest: the lean client delivery posts webhooks with
    (with an aiohttp session the load client took ~160 µs of CPU a story in the burst, ~57 now).
    A connection per request in flight, none idle longer than 4 s: uvicorn closes kept-alive
    ones after 5 s. Its timeout is an aiohttp session's default (5 minutes)."""
    return LeanWebhookSender(
        resolve, allow_private=True, timeout_s=300.0, dns_ttl_s=3600.0, idle_timeout_s=4.0
    )


def ingest_sender(client: LeanWebhookSender, ingest: str) -> Send:
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

    async def send(item: Item) -> int:
        url = f"{ingest}/v1/articles"
        if item.kind == "withdraw":
            url = f"{ingest}/v1/articles/{quote(item.uri, safe='')}/withdraw"
        resent = False
        for _ in range(50):
            answer = await client.post(url, item.body, headers)
            if answer.status is None:
                if (answer.error or "").split(":", 1)[0] not in _CONNECTION_ERRORS:
                    raise RuntimeError(f"POST {url}: {answer.error}")
                # The connection closed before an answer came (a kept-alive one uvicorn closed
                # as the request went out; the client itself resends once when no byte of the
                # answer came on a reused one): send it again.
                resent = True
            elif answer.status == 409 and resent:
                return 202  # the attempt whose answer was lost was accepted
            elif answer.status != 503:
                return answer.status
            await asyncio.sleep(0.1)
        return 503

    return send


def producer_sender(producer: AIOKafkaProducer, topic: str) -> Send:
    async def send(item: Item) -> int:
        headers = [("section", item.section_id.encode())]
        await (await producer.send(topic, item.body, key=item.uri.encode(), headers=headers))
        return 202

    return send


def expected_webhooks(items: list[Item], urls: dict[str, list[str]]) -> int:
    return sum(len(urls.get(item.section_id, [])) for item in items)


async def wait_delivered(receiver: str, expected: int, stall_s: float = 15.0) -> None:
    last, since = -1, time.monotonic()
    while True:
        count = (await asyncio.to_thread(receiver_get, receiver, "/count"))["count"]
        if count >= expected:
            return
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return
        await asyncio.sleep(0.2)


async def cache_probe(
    session: aiohttp.ClientSession, delivery: str, uri: str, sent_at: float, out: list[float]
) -> None:
    """Polls delivery's API for the story until it is served: every 10 ms, then every 5 % of the
    time waited so far (a figure to within ~5 %). A fixed 10 ms poll made the probe itself a load
    that grew with the latency it measured: at 3 s, ~3,000 reads a second on a saturated box.
    """
    url = f"{delivery}/v1/stories/{quote(uri, safe='')}"
    started = time.monotonic()
    deadline = started + 60
    while time.monotonic() < deadline:
        async with session.get(url) as response:
            await response.read()
            if response.status == 200:
                out.append((time.time() - sent_at) * 1000)
                return
        await asyncio.sleep(max(0.01, (time.monotonic() - started) * 0.05))


def measure(
    name: str,
    mode: str,
    items: list[Item],
    sent: dict[int, float],
    statuses: Counter[int],
    first: float,
    receiver: str,
    expected: int,
) -> Result:
    marks = receiver_get(receiver, "/dump")["marks"]
    seen: set[tuple[int, int]] = set()
    latencies: list[float] = []
    first_webhook: dict[int, float] = {}
    last = first
    for sub, token, at, withdrawn in marks:
        last = max(last, at)
        if token in sent and not withdrawn and (sub, token) not in seen:
            seen.add((sub, token))
            latencies.append((at - sent[token]) * 1000)
            first_webhook[token] = min(at, first_webhook.get(token, at))
    accepted = sum(n for status, n in statuses.items() if status in (200, 202))
    return Result(
        name,
        mode,
        len(items),
        accepted,
        len(marks),
        expected,
        last - first,
        latencies,
        statuses=statuses,
        first_webhook=first_webhook,
    )


async def run_load(
    name: str,
    items: list[Item],
    send: Send,
    receiver: str,
    urls: dict[str, list[str]],
    rate: float | None,
    concurrency: int,
    probe: tuple[aiohttp.ClientSession, str] | None = None,
    pids: dict[str, int] | None = None,
    hops: Hops | None = None,
    timeline: Path | None = None,
) -> Result:
    await asyncio.to_thread(receiver_reset, receiver)
    cpu_before = cpu_snapshot(pids or {})
    cache_ms: list[float] = []
    probes: list[asyncio.Task[None]] = []
    if probe is not None:
        session, delivery = probe
        inner = send

        async def send_and_probe(item: Item) -> int:
            status = await inner(item)
            if item.kind == "publish" and item.token % 100 == 0:
                at = time.time()
                probes.append(
                    asyncio.create_task(cache_probe(session, delivery, item.uri, at, cache_ms))
                )
            return status

        send = send_and_probe
    sent, statuses, first = await offer(items, send, rate, concurrency)
    expected = expected_webhooks([i for i in items if i.token in sent], urls)
    await wait_delivered(receiver, expected)
    cpu_after = cpu_snapshot(pids or {})
    await asyncio.gather(*probes)
    mode = "max" if rate is None else f"{rate:.0f}/s"
    result = await asyncio.to_thread(
        measure, name, mode, items, sent, statuses, first, receiver, expected
    )
    result.cache_ms = cache_ms
    if pids is not None:
        result.cpu_s = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    if hops is not None:
        bootstrap, topics = hops
        stamps = [await first_stamps(bootstrap, topic, int(first * 1000)) for _, topic in topics]
        result.stages = hop_times(
            [what for what, _ in topics], stamps, items, sent, result.first_webhook, first
        )
        if timeline is not None:
            write_timeline(timeline, stamps, items, sent, result.first_webhook, first)
    print(result.line(), flush=True)
    if result.stages:
        print(result.stages_line(), flush=True)
    if result.cpu_s:
        print(result.cpu_line(), flush=True)
    return result


async def first_stamps(bootstrap: str, topic: str, since_ms: int) -> dict[bytes, int]:
    """Per key, the timestamp (ms) of its first record in `topic` from `since_ms` on."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    stamps: dict[bytes, int] = {}
    try:
        await consumer.topics()  # the cluster metadata, for the topic's partitions
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        # From offset 0 (the run's fresh broker): Tansu's answers to offset lookups by time
        # cannot be trusted (see `services.delivery.adapters.scan_topic`).
        for tp in partitions:
            consumer.seek(tp, 0)
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                for record in batch.get(tp, []):
                    if record.key is not None and record.timestamp >= since_ms:
                        stamps.setdefault(record.key, record.timestamp)
        return stamps
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Hop:
    what: str
    last_s: float  # its last record, from the first request
    p50_ms: float  # the time a new story spent from the hop before (or its request) to this one
    p99_ms: float


def new_stories(items: list[Item], sent: dict[int, float]) -> list[Item]:
    """The run's first versions that were sent and accepted (what a hop's latency is of)."""
    return [i for i in items if i.kind == "publish" and i.token in sent]


def write_timeline(
    path: Path,
    stamps: list[dict[bytes, int]],
    items: list[Item],
    sent: dict[int, float],
    first_webhook: dict[int, float],
    first: float,
) -> None:
    """Each new story's way through the run, one CSV row a story: when it was sent, reached each
    hop's topic and its first webhook came, in seconds from the run's first request (empty:
    never). Where a step's p99 came from: a stall at one moment, or a hop falling behind."""
    lines = []
    for item in new_stories(items, sent):
        key = item.uri.encode()
        times = [sent[item.token], *(s.get(key, 0) / 1000 for s in stamps)]
        times.append(first_webhook.get(item.token, 0.0))
        lines.append(",".join(f"{t - first:.4f}" if t else "" for t in times))
    path.write_text("\n".join(lines) + "\n")


def hop_times(
    names: list[str],
    stamps: list[dict[bytes, int]],
    items: list[Item],
    sent: dict[int, float],
    first_webhook: dict[int, float],
    first: float,
) -> list[Hop]:
    """Each hop's share of a new story's latency (request -> each topic -> first webhook), and
    when it wrote its last record: the hop whose rate falls behind is where the stories queue.
    """
    stories = new_stories(items, sent)
    hops: list[Hop] = []
    for n, name in enumerate([*names, "webhook"]):
        spent: list[float] = []
        for item in stories:
            key = item.uri.encode()
            before = sent[item.token] if n == 0 else stamps[n - 1].get(key, 0) / 1000
            after = (
                stamps[n].get(key, 0) / 1000
                if n < len(names)
                else first_webhook.get(item.token, 0.0)
            )
            if before and after:
                spent.append((after - before) * 1000)
        if n < len(names):
            last = max(stamps[n].values(), default=0) / 1000
        else:
            last = max(first_webhook.values(), default=0.0)
        hops.append(
            Hop(
                name,
                max(0.0, last - first),
                percentile(spent, 50),
                percentile(spent, 99),
            )
        )
    return hops


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    stories: int
    rate: float
    paced_seconds: float
    concurrency: int
    profile: bool
    logs: Path
    sweep: tuple[float, ...] = ()
    sweep_seconds: float = 10.0
    sweeps: int = 1


# A measured run on a running stack: (send, subscriber urls, cache probe, hops, pids) -> results.
Measured = Callable[
    [Send, dict[str, list[str]], tuple[aiohttp.ClientSession, str] | None, Hops, dict[str, int]],
    Awaitable[list[Result]],
]
# Runs `Measured` on a fresh stack (broker, Redis, the scenario's processes) named by a tag.
OnFreshStack = Callable[[str, Measured], list[Result]]


def measured_runs(
    name: str, opts: Options, receiver: str, on_fresh_stack: OnFreshStack
) -> list[Result]:
    """The max-rate run and the short paced one, then `--sweeps` sweeps of paced runs at each
    offered rate of `--sweep`; each run on a fresh stack, since Tansu's memory storage slows
    with every batch it holds (20,000 small batches in a topic tripled its CPU at 100/s, see
    docs/benchmarks.md). In a sweep, the highest rate delivered in full, in step with the offer
    and with p99 <= 250 ms is that sweep's sustained rate (`report` takes the sweeps' median).
    The max run and each sweep step account each process's CPU (a paced story costs more than
    one of the burst: smaller batches) and, for ours, the cache is probed: every 100th new
    story is timed until the delivery read API serves it.
    """

    def runs(rate: float | None) -> Measured:
        """The max-rate run and the short paced one (`rate` None), or one paced at `rate`."""

        async def measured(
            send: Send,
            urls: dict[str, list[str]],
            probe: tuple[aiohttp.ClientSession, str] | None,
            hops: Hops,
            pids: dict[str, int],
        ) -> list[Result]:
            tag = uuid.uuid4().hex[:6]
            slug = "".join(c if c.isalnum() else "-" for c in name)
            if rate is not None:
                stories = stream(int(rate * opts.sweep_seconds), f"s{tag}")
                timeline = opts.logs / f"timeline-{slug}-{rate:.0f}-{tag}.csv"
                return [
                    await run_load(
                        name, stories, send, receiver, urls, rate, opts.concurrency, probe,
                        pids=pids, hops=hops, timeline=timeline,
                    )
                ]  # fmt: skip
            burst = stream(opts.stories, f"m{tag}")
            paced = stream(int(opts.rate * opts.paced_seconds), f"p{tag}")
            return [
                await run_load(
                    name, burst, send, receiver, urls, None, opts.concurrency, pids=pids, hops=hops
                ),
                await run_load(
                    name, paced, send, receiver, urls, opts.rate, opts.concurrency, probe
                ),
            ]

        return measured

    results = on_fresh_stack("max", runs(None))
    for number in range(1, opts.sweeps + 1):
        if opts.sweeps > 1:
            print(f"{name}: sweep {number} of {opts.sweeps}", flush=True)
        for rate in sorted(opts.sweep):
            [result] = on_fresh_stack(f"s{number}-{rate:.0f}", runs(rate))
            result.sweep = number
            if opts.sweeps > 1:
                result.mode += f" #{number}"
            results.append(result)
            if not sustained(result):
                break  # higher rates would only pile up a longer backlog
    return results


def scenario_raw(opts: Options, receiver_process: ChildProcess) -> list[Result]:
    receiver = receiver_process.address

    def on_fresh_stack(phase: str, measured: Measured) -> list[Result]:
        with infra(opts.logs, f"raw-{phase}") as running:
            urls = subscriber_urls(receiver)
            topics = start_baseline(running, opts.logs, urls)
            time.sleep(6)  # the hops join their groups
            bootstrap = running.kafka.address
            hops = (bootstrap, list(zip(("sent", "hop 1", "hop 2"), topics, strict=True)))
            pids = running.pids(receiver_process)
            return asyncio.run(_raw_runs(bootstrap, topics[0], receiver, hops, pids, measured))

    return measured_runs("baseline (raw 3 hops)", opts, receiver, on_fresh_stack)


async def _raw_runs(
    bootstrap: str,
    topic: str,
    receiver: str,
    hops: Hops,
    pids: dict[str, int],
    measured: Measured,
) -> list[Result]:
    urls = subscriber_urls(receiver)
    producer = raw_producer(bootstrap)
    await producer.start()
    try:
        send = producer_sender(producer, topic)
        await run_load(
            "warm-up", stream(200, f"rw{uuid.uuid4().hex[:4]}"), send, receiver, urls, None, 32
        )
        return await measured(send, urls, None, hops, pids)
    finally:
        await producer.stop()


async def _ours_runs(
    receiver: str, services: Services, pids: dict[str, int], measured: Measured
) -> list[Result]:
    urls = subscriber_urls(receiver)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ingest_client() as client,
    ):
        send = ingest_sender(client, services.ingest)
        await run_load(
            "warm-up", stream(200, f"w{uuid.uuid4().hex[:4]}"), send, receiver, urls, None, 32
        )
        hops = (services.bootstrap, services.stages)
        return await measured(send, urls, (session, services.delivery), hops, pids)


def profile(
    pids: dict[str, int], seconds: float, logs: Path, phase: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every service for `seconds`, in the background (raw collapsed stacks)."""
    spies = []
    for name, pid in pids.items():
        out = logs / f"profile-{phase}-{name}.txt"
        spies.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(round(seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    return spies


def summarise_profile(path: Path, top: int = 12) -> str:
    """Top functions by own samples and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].split("/")[-1]
            for f in stack.split(";")
        ]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{path.name}: {total} samples"]
    lines += [f"  self {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    framework = ("<module>", "run ", "_run", "run_until", "run_forever")
    busiest = [(f, n) for f, n in inclusive.most_common(top * 3) if not f.startswith(framework)]
    lines += [f"  incl {100 * n / total:5.1f}%  {f}" for f, n in busiest[:top]]
    return "\n".join(lines)


def scenario_ours(
    opts: Options, receiver_process: ChildProcess, enrichers: int, deliverers: int
) -> list[Result]:
    receiver = receiver_process.address
    tag = f"ours{enrichers}{deliverers}"

    def on_fresh_stack(phase: str, measured: Measured) -> list[Result]:
        with infra(opts.logs, f"{tag}-{phase}") as running:
            services = start_services(
                running, opts.logs, f"{tag}-{phase}", enrichers, deliverers, {}
            )
            subscribe_all(services, subscriber_urls(receiver))
            spies: list[subprocess.Popen[bytes]] = []
            if opts.profile:
                # The burst's first 15 s, or a sweep step from its warm-up to its end.
                seconds = 15 if phase == "max" else opts.sweep_seconds + 2
                spies.extend(profile(services.pids, seconds, opts.logs, phase))
            pids = running.pids(receiver_process)
            results = asyncio.run(_ours_runs(receiver, services, pids, measured))
            for spy in spies:
                spy.wait(60)
            for pid_name in services.pids if spies else ():
                path = opts.logs / f"profile-{phase}-{pid_name}.txt"
                if path.exists():
                    print(summarise_profile(path), flush=True)
            return results

    return measured_runs(f"newsflow {enrichers}E/{deliverers}D", opts, receiver, on_fresh_stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stories", type=int, default=20_000, help="stories in the max-rate run")
    parser.add_argument("--rate", type=float, default=1000, help="offered rate of the paced run")
    parser.add_argument("--paced-seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the services (max run and sweep steps)"
    )
    parser.add_argument(
        "--scenarios",
        default="raw,1x1,2x2",
        help="raw (baseline), 1x1, 2x2 (enrichers x deliverers)",
    )
    parser.add_argument(
        "--sweep",
        default="100,200,300,400,500,600,750,1000",
        help="offered rates (stories/s, comma-separated) of paced runs to find the sustained rate",
    )
    parser.add_argument("--sweep-seconds", type=float, default=10.0)
    parser.add_argument(
        "--sweeps",
        type=int,
        default=1,
        help="sweeps a scenario (the box drifts: the sustained rate is the sweeps' median)",
    )
    parser.add_argument(
        "--scheduling",
        choices=("batch", "normal"),
        default="batch",
        help="the CPU scheduling policy of every process of the run, baseline and ours alike "
        "(the services' NEWSFLOW_CPU_SCHEDULING; shared.cpu)",
    )
    parser.add_argument("--logs", type=Path, default=None)
    args = parser.parse_args()
    # Inherited by every process the run starts (broker, Redis, receiver, the raw hops); the
    # services set it again from their setting.
    scheduling = apply_cpu_scheduling(args.scheduling)
    os.environ["NEWSFLOW_CPU_SCHEDULING"] = args.scheduling
    logs = args.logs or Path(tempfile.mkdtemp(prefix="newsflow-bench-"))
    opts = Options(
        args.stories,
        args.rate,
        args.paced_seconds,
        args.concurrency,
        args.profile,
        logs,
        tuple(float(rate) for rate in args.sweep.split(",") if rate),
        args.sweep_seconds,
        args.sweeps,
    )
    uvloop.install()
    print(f"logs in {logs}; {os.cpu_count()} cores; CPU scheduling {scheduling}", flush=True)
    receiver = start_receiver(logs)
    results: list[Result] = []
    try:
        for scenario in args.scenarios.split(","):
            if scenario == "raw":
                results += scenario_raw(opts, receiver)
            else:
                enrichers, deliverers = (int(n) for n in scenario.split("x"))
                results += scenario_ours(opts, receiver, enrichers, deliverers)
    finally:
        receiver.stop()
    report(results)


def report(results: list[Result]) -> None:
    print("\n== summary ==")
    baseline = {r.mode: r for r in results if r.name.startswith("baseline")}
    for result in results:
        line = result.line()
        base = baseline.get(result.mode)
        if base is not None and result is not base and base.rate:
            line += f"  ratio {result.rate / base.rate:.2f}"
            p99 = percentile(result.latencies_ms, 99)
            base_p99 = percentile(base.latencies_ms, 99)
            line += f" (p99 {p99 / base_p99:.1f}x baseline)" if base_p99 else ""
        print(line)
        if result.stages:
            print(result.stages_line())
        if result.cpu_s:
            print(result.cpu_line())
    held: dict[str, float] = {}
    for name in dict.fromkeys(r.name for r in results):
        swept = [r for r in results if r.name == name and r.sweep]
        if not swept:
            continue
        rounds = [
            max((r.rate for r in swept if r.sweep == number and sustained(r)), default=0.0)
            for number in sorted({r.sweep for r in swept})
        ]
        held[name] = statistics.median(rounds)
        each = f" (sweeps: {', '.join(f'{rate:.0f}' for rate in rounds)}; median)"
        print(
            f"{name}: sustained {held[name]:.0f} stories/s{each if len(rounds) > 1 else ''} "
            f"(the highest offered rate delivered in full, in step, with webhook p99 <= "
            f"{SUSTAINED_P99_MS:.0f} ms)"
        )
    raw = next((rate for name, rate in held.items() if name.startswith("baseline")), 0.0)
    for name, rate in held.items():
        if raw and not name.startswith("baseline"):
            print(f"{name}: sustained ratio {rate / raw:.2f} (to the baseline's {raw:.0f}/s)")


SUSTAINED_P99_MS = 250.0


def sustained(result: Result) -> bool:
    offered = float(result.mode.split("/s")[0])
    return (
        result.webhooks >= result.expected_webhooks
        and result.rate >= 0.95 * offered
        and percentile(result.latencies_ms, 99) <= SUSTAINED_P99_MS
    )


if __name__ == "__main__":
    main()
