"""Enrichment benchmark: stories/s end to end through Kafka with 100k stories indexed, related
lookup latency, RSS, and the ratio to a plain aiokafka consume->produce passthrough.

    .venv/bin/python bench/enrichment.py [--indexed 100000] [--stories 20000] [--feature-workers 1]

Starts its own embedded broker (Tansu, memory only) and one enrichment process (with its feature
worker processes), and stops both by pid. Stories are synthetic (~3 KB, clustered around events,
with named people and places). CPU per measured story is the enrichment process's, and its
children's (the feature workers), over the measured stories.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ops.embedded import ChildProcess, free_port, spawn, start_kafka
from shared.events import Article, EventMeta, EventType, Topics, encode
from shared.kafka import ensure_topics

T0 = datetime(2026, 5, 1, tzinfo=UTC)
SYLLABLE_TEXT = "ka ri to mel san dor vek lin po ash ter qua bel mon dru fen gal hor isk jun"
SYLLABLES = SYLLABLE_TEXT.split()


class Newsroom:
    """Synthetic stories: each is about one of many events, with its words, people and places."""

    def __init__(self, seed: int = 7, events: int = 20_000) -> None:
        self.rng = random.Random(seed)
        words = {self._word(2, 4) for _ in range(40_000)}
        self.vocabulary = sorted(words)
        self.weights = [1.0 / (rank + 10) for rank in range(len(self.vocabulary))]
        self.events = [
            (
                self.rng.sample(self.vocabulary[2000:], 10),
                [f"{self._name()} {self._name()}" for _ in range(2)],
                self._name(),
            )
            for _ in range(events)
        ]

    def _word(self, low: int, high: int) -> str:
        return "".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(low, high)))

    def _name(self) -> str:
        return self._word(2, 3).capitalize()

    def story(self, n: int, at: datetime) -> Article:
        event_words, people, place = self.events[self.rng.randrange(len(self.events))]
        filler = self.rng.choices(self.vocabulary, self.weights, k=260)
        core = self.rng.sample(event_words, 6)
        headline = f"{people[0]} in {place}: {' '.join(core[:4])}"
        summary = f"{' '.join(core)} {' '.join(filler[:20])} said {people[1]}."
        sentences = [" ".join(filler[i : i + 14]) for i in range(20, 260, 14)]
        body = ". ".join(s.capitalize() for s in sentences)
        body += f". {people[0]} and {people[1]} spoke in {place} about {' '.join(event_words)}."
        return Article.model_validate(
            {
                "uri": f"urn:newsflow:bench:{n}",
                "headline": headline,
                "summary": summary,
                "body_html": f"<p>{body}</p>",
                "provider": "bench",
                "section": None if n % 2 else "International",
                "versioncreated": at,
            }
        )


def records(newsroom: Newsroom, start: int, count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for n in range(start, start + count):
        article = newsroom.story(n, T0 + timedelta(seconds=2 * n))
        out.append((article.uri.encode(), encode(article)))
    return out


def stories(
    indexed: int, count: int, cache: str | None
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The stories to index and the stories to measure; generating them takes minutes, so they
    can be kept in `cache` (a directory) between runs.
    """
    kept = Path(cache) / f"enrichment-stories-{indexed}-{count}.pickle" if cache else None
    if kept is not None and kept.exists():
        print(f"reading {indexed} + {count} synthetic stories from {kept}", flush=True)
        loaded: tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]
        loaded = pickle.loads(kept.read_bytes())  # noqa: S301 (written by this script)
        return loaded
    newsroom = Newsroom()
    print(f"generating {indexed} + {count} synthetic stories ...", flush=True)
    made = records(newsroom, 0, indexed), records(newsroom, indexed, count)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(pickle.dumps(made, protocol=pickle.HIGHEST_PROTOCOL))
    return made


async def produce(bootstrap: str, topic: str, batch: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144
    )
    await producer.start()
    started = time.perf_counter()
    try:
        headers = EventMeta.new(EventType.PUBLISHED, "urn:bench").to_headers()
        futures = [await producer.send(topic, v, key=k, headers=headers) for k, v in batch]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def count_until(bootstrap: str, topic: str, count: int, timeout_s: float) -> float:
    """Read `topic` from the beginning until `count` records; returns when the last arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            seen += sum(len(b) for b in batches.values())
    finally:
        await consumer.stop()
    if seen < count:
        raise RuntimeError(f"only {seen} of {count} records on {topic}")
    return time.perf_counter()


async def skip_to_end(bootstrap: str, topic: str, group: str) -> None:
    """Commit the group's offsets at the end, so the indexed stories are not enriched again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(ends)
    finally:
        await consumer.stop()


async def passthrough(bootstrap: str, source: str, target: str, count: int) -> float:
    """Plain aiokafka consume->produce, batched: the most a Kafka hop can do on this broker."""
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"{source}.passthrough",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144
    )
    await consumer.start()
    await producer.start()
    moved = 0
    started = time.perf_counter()
    try:
        while moved < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            futures = [
                await producer.send(target, m.value, key=m.key, headers=list(m.headers))
                for b in batches.values()
                for m in b
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            moved += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()
    return count / (time.perf_counter() - started)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (localhost)
            return bool(response.status == 200)
    except OSError:
        return False


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (localhost)
        return str(response.read().decode())


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in children.read_text().split()]
    return found


def cpu_by_process(pid: int) -> dict[int, float]:
    """CPU seconds so far of the service process and each of its child processes."""
    out = {}
    for member in [pid, *children_of(pid)]:
        try:
            out[member] = cpu_s(member)
        except OSError:
            continue  # it has just exited
    return out


def _mean_ms(metrics: str, histogram: str) -> float:
    values = {
        line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith((f"{histogram}_sum ", f"{histogram}_count "))
    }
    count = values.get(f"{histogram}_count", 0.0)
    return values.get(f"{histogram}_sum", 0.0) / count * 1000 if count else float("nan")


def lookup_percentiles(metrics: str) -> dict[str, float]:
    """p50/p99 upper bounds (ms) from the service's related-lookup histogram buckets."""
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith("newsflow_enrichment_related_lookup_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    out = {"count": total, "mean": _mean_ms(metrics, "newsflow_enrichment_related_lookup_seconds")}
    for name, share in (("p50", 0.5), ("p99", 0.99)):
        out[name] = next((b * 1000 for b, n in buckets if n >= share * total), float("inf"))
    return out


async def run(args: argparse.Namespace) -> None:
    broker = start_kafka()
    service: ChildProcess | None = None
    try:
        bootstrap = broker.address
        topics = Topics("bench.")
        raw = Topics("raw.")
        await ensure_topics(bootstrap, topics.all() + raw.all())
        preload, measured = stories(args.indexed, args.stories, args.stories_cache)
        size = statistics.mean(len(v) for _, v in measured)
        await produce(bootstrap, topics.ingested, preload)
        # The service's group carries the topic prefix (see services/enrichment/main.py).
        await skip_to_end(bootstrap, topics.ingested, topics.prefix + "bench-enrichment")

        port = free_port()
        env = {
            **os.environ,
            "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "NEWSFLOW_TOPIC_PREFIX": topics.prefix,
            "NEWSFLOW_ENRICHMENT_GROUP_ID": "bench-enrichment",
            "NEWSFLOW_ENRICHMENT_PORT": str(port),
            "NEWSFLOW_LOG_LEVEL": "WARNING",
            "NEWSFLOW_LOG_FORMAT": "json",
            "NEWSFLOW_ENRICHMENT_FEATURE_WORKERS": str(args.feature_workers),
        }
        started = time.perf_counter()
        service = spawn(
            "enrichment",
            [sys.executable, "-m", "services.enrichment"],
            f"http://127.0.0.1:{port}",
            Path(args.log),
            env,
        )
        while not http_ok(f"{service.address}/readyz"):
            if service.process.poll() is not None:
                raise RuntimeError(f"enrichment exited; see {args.log}")
            await asyncio.sleep(0.5)
        rebuild_s = time.perf_counter() - started
        print(f"index of {args.indexed} stories rebuilt from the topic in {rebuild_s:.1f} s")

        cpu_before = cpu_by_process(service.pid)
        features_before = json.loads(http_text(f"{service.address}/v1/index"))["features"]
        started = time.perf_counter()
        reader = asyncio.create_task(
            count_until(bootstrap, topics.enriched, args.stories, timeout_s=600)
        )
        await produce(bootstrap, topics.ingested, measured)
        finished = await reader
        enriched_rate = args.stories / (finished - started)
        cpu_after = cpu_by_process(service.pid)
        used = {p: cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after}
        service_cpu_us = used.pop(service.pid) / args.stories * 1e6
        children_cpu_us = sum(used.values()) / args.stories * 1e6
        rss = peak_rss_mib(service.pid)
        children_rss = sum(peak_rss_mib(p) for p in children_of(service.pid))
        metrics = http_text(f"{service.address}/metrics")
        features_after = json.loads(http_text(f"{service.address}/v1/index"))["features"]
        features = {k: features_after[k] - features_before[k] for k in features_after}
        lookup = lookup_percentiles(metrics)
        enrich_ms = _mean_ms(metrics, "newsflow_enrichment_seconds")
        service.stop()
        service = None

        await produce(bootstrap, raw.ingested, measured)
        raw_rate = await passthrough(bootstrap, raw.ingested, raw.enriched, args.stories)
    finally:
        if service is not None:
            service.stop()
        broker.stop()

    print(f"stories: {args.stories} measured, {args.indexed} indexed, {size / 1024:.1f} KB each")
    print(f"enrichment end to end: {enriched_rate:,.0f} stories/s")
    print(f"raw consume->produce passthrough: {raw_rate:,.0f} records/s")
    print(f"ratio enrichment / passthrough: {enriched_rate / raw_rate:.2f}")
    print(
        f"related lookup with {args.indexed}+ stories indexed (service histogram, "
        f"{lookup['count']:.0f} lookups): p50 <= {lookup['p50']:.1f} ms, "
        f"p99 <= {lookup['p99']:.1f} ms, mean {lookup['mean']:.2f} ms"
    )
    print(f"enriching one story (lookup included), mean: {enrich_ms:.2f} ms")
    print(
        f"enrichment CPU per measured story: {service_cpu_us + children_cpu_us:,.0f} us "
        f"(service process {service_cpu_us:,.0f} us, child processes {children_cpu_us:,.0f} us; "
        f"feature workers: {args.feature_workers})"
    )
    print(
        f"measured stories whose features the service process computed itself (while it "
        f"waited for its story table): {features['here']:,}; the feature workers: "
        f"{features['workers']:,}"
    )
    print(f"enrichment peak RSS: {rss:,.0f} MiB (child processes: {children_rss:,.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--indexed", type=int, default=100_000)
    parser.add_argument("--stories", type=int, default=20_000)
    parser.add_argument(
        "--feature-workers",
        type=int,
        default=1,
        help="NEWSFLOW_ENRICHMENT_FEATURE_WORKERS for the service (0: features in process)",
    )
    parser.add_argument(
        "--stories-cache",
        metavar="DIR",
        help="keep the generated stories in DIR and reuse them on the next run",
    )
    parser.add_argument(
        "--log", default=str(Path(tempfile.gettempdir()) / "newsflow-bench-enrichment.log")
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
