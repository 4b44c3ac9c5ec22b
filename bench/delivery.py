"""Benchmark: signed webhook deliveries/s through a real delivery process, against a bare aiohttp
POST loop measured in the same run, and with one endpoint that never answers; then delivery's
latency at a paced rate (story on the enriched topic -> webhook received).

    .venv/bin/python bench/delivery.py [--stories 300] [--subscriptions 100] [--paced-rate 30]

Starts its own Tansu broker, Redis, a no-op sink and delivery processes (127.0.0.1 only) and stops
each by pid. Prints the figures, the in-run baseline and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ops.devrun import http_json, wait_ready  # noqa: E402
from ops.embedded import ChildProcess, free_port, spawn, start_kafka, start_redis  # noqa: E402
from shared.events import EventMeta, EventType, Story, Topics  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402

ADMIN = "bench-admin"


STORY_NUMBER = re.compile(rb'"uri":"urn:newsflow:bench:[0-9a-f]+-(\d+)"')


def sink(port: int, slow_port: int) -> None:
    """A no-op partner: 204 to everything, counts per first path segment; `slow_port` hangs.
    For labels starting with `paced`, it also records which story arrived when."""
    counts: Counter[str] = Counter()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    arrivals: dict[str, list[tuple[int, float]]] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        label = request.path.split("/")[1]
        counts[label] += 1
        last[label] = now
        first.setdefault(label, now)
        if label.startswith("paced"):
            match = STORY_NUMBER.search(body)
            arrivals.setdefault(label, []).append((int(match.group(1)) if match else -1, now))
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({**counts, "first": first, "last": last})

    async def arrived(request: web.Request) -> web.Response:
        return web.json_response(arrivals.get(request.query["label"], []))

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(status=204)

    async def serve() -> None:
        fast = web.Application()
        fast.router.add_get("/count", count)
        fast.router.add_get("/arrivals", arrived)
        fast.router.add_post("/{tail:.*}", hook)
        slow = web.Application()
        slow.router.add_post("/{tail:.*}", hang)
        for app, at in ((fast, port), (slow, slow_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", at).start()
        await asyncio.Event().wait()

    import uvloop

    uvloop.run(serve())


def make_story(i: int) -> bytes:
    story = Story.model_validate(
        {
            "uri": f"urn:newsflow:bench:{uuid.uuid4().hex[:8]}-{i}",
            "headline": f"Harbour authority opens terminal {i}",
            "summary": "The terminal doubles capacity for island crossings.",
            "body_html": "<p>" + "The harbour authority opened the new ferry terminal. " * 50,
            "provider": "bench",
            "enrichment": {
                "section": {"id": "world", "name": "International", "confidence": 0.9,
                            "method": "provider"},
            },
        }
    )  # fmt: skip
    return story.model_dump_json(exclude_none=True).encode()


async def bare_loop(url: str, total: int, body: bytes, in_flight: int = 100) -> float:
    """The baseline: the same number of POSTs of the same size, 100 in flight, nothing else."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                async with session.post(url, data=body) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return total / (time.perf_counter() - started)


async def produce(kafka: str, topic: str, stories: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        futures = []
        for value in stories:
            meta = EventMeta.new(EventType.PUBLISHED.value, "urn:bench")
            key = json.loads(value)["uri"].encode()
            futures.append(await producer.send(topic, value, key=key, headers=meta.to_headers()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def sink_count(sink_url: str, label: str) -> int:
    return int(http_json("GET", f"{sink_url}/count")[1].get(label, 0))


@contextmanager
def delivery_process(
    kafka: str, redis_url: str, sink_url: str, slow_url: str | None, subs: int, logs: Path,
    workers: int, kind: str = "bench",
) -> Iterator[tuple[Topics, str]]:  # fmt: skip
    """A fresh delivery (own topics and keys) with `subs` subscriptions on the sink, each under
    `<sink>/<label>/<n>`; yields its topics and the label."""
    prefix = f"{kind}{uuid.uuid4().hex[:6]}."
    topics = Topics(prefix)
    asyncio.run(ensure_topics(kafka, topics.all()))
    port = free_port()
    env = {
        **os.environ,
        "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "NEWSFLOW_REDIS_URL": redis_url,
        "NEWSFLOW_TOPIC_PREFIX": prefix,
        "NEWSFLOW_REDIS_KEY_PREFIX": prefix,
        "NEWSFLOW_ADMIN_TOKEN": ADMIN,
        "NEWSFLOW_DELIVERY_PORT": str(port),
        "NEWSFLOW_DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "NEWSFLOW_DELIVERY_TIMEOUT_S": "5",
        "NEWSFLOW_LOG_LEVEL": "WARNING",
        "NEWSFLOW_LOG_FORMAT": "json",
    }
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "services.delivery"]
    if workers > 1:  # one sender per worker, all in one consumer group
        argv = [
            sys.executable, "-m", "uvicorn", "services.delivery.main:create", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    if os.environ.get("BENCH_PROFILE"):  # cProfile the delivery process into this file
        argv[1:1] = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"] + prefix + "prof"]
    child = spawn("delivery", argv, url, logs / f"delivery-{prefix}log", env)
    try:
        wait_ready("delivery", f"{url}/readyz", child)
        label = prefix.rstrip(".")
        for i in range(subs):
            body = {"url": f"{sink_url}/{label}/{i}"}
            assert http_json("POST", f"{url}/v1/subscriptions", body, token=ADMIN)[0] == 201
        if slow_url:
            body = {"url": f"{slow_url}/{label}/slow"}
            assert http_json("POST", f"{url}/v1/subscriptions", body, token=ADMIN)[0] == 201
        time.sleep(2)  # other workers learn of new subscriptions from the topic within ~1 s
        yield topics, label
    finally:
        child.stop()


def run_delivery(
    kafka: str, redis_url: str, sink_url: str, slow_url: str | None, stories: int, subs: int,
    logs: Path, workers: int,
) -> float:  # fmt: skip
    """Deliveries/s to the good endpoints, from the first story produced to the last webhook."""
    process = delivery_process(kafka, redis_url, sink_url, slow_url, subs, logs, workers)
    with process as (topics, label):
        values = [make_story(i) for i in range(stories)]
        target = stories * subs
        started = time.perf_counter()
        asyncio.run(produce(kafka, topics.enriched, values))
        produced_at = time.time()
        while sink_count(sink_url, label) < target:
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"only {sink_count(sink_url, label)} of {target} arrived")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        seen = http_json("GET", f"{sink_url}/count")[1]
        print(
            f"  {label}: first webhook {seen['first'][label] - produced_at:+.2f} s after the "
            f"stories were on the broker, last {seen['last'][label] - produced_at:+.2f} s; "
            f"steady rate {target / (seen['last'][label] - seen['first'][label]):.0f}/s"
        )
        return target / elapsed


async def produce_paced(kafka: str, topic: str, stories: list[bytes], rate: float) -> list[float]:
    """One story every 1/rate s (open loop); returns when each was handed to the producer."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        sent, futures = [], []
        started = time.perf_counter()
        for i, value in enumerate(stories):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            meta = EventMeta.new(EventType.PUBLISHED.value, "urn:bench")
            key = json.loads(value)["uri"].encode()
            sent.append(time.time())
            futures.append(await producer.send(topic, value, key=key, headers=meta.to_headers()))
        await asyncio.gather(*futures)
        return sent
    finally:
        await producer.stop()


def run_paced(
    kafka: str, redis_url: str, sink_url: str, subs: int, logs: Path, workers: int, rate: float,
    seconds: float,
) -> list[float]:  # fmt: skip
    """Latencies (ms) from a story handed to the producer of the enriched topic to each of its
    webhooks received, at an open-loop `rate` far below capacity."""
    process = delivery_process(kafka, redis_url, sink_url, None, subs, logs, workers, "paced")
    with process as (topics, label):
        values = [make_story(i) for i in range(int(rate * seconds))]
        sent = asyncio.run(produce_paced(kafka, topics.enriched, values, rate))
        target = len(values) * subs
        deadline = time.time() + 60
        while sink_count(sink_url, label) < target:
            if time.time() > deadline:
                raise RuntimeError(f"only {sink_count(sink_url, label)} of {target} arrived")
            time.sleep(0.05)
        arrivals = http_json("GET", f"{sink_url}/arrivals?label={label}")[1]
        return sorted((at - sent[n]) * 1000 for n, at in arrivals)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q / 100))]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        sink(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=300)
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="delivery worker processes")
    parser.add_argument("--paced-rate", type=float, default=30, help="stories/s of the latency run")
    parser.add_argument("--paced-seconds", type=float, default=10, help="0: no latency run")
    parser.add_argument("--paced-subscriptions", type=int, default=20)
    args = parser.parse_args()
    logs = ROOT / ".newsflow" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[ChildProcess] = []
    try:
        kafka = start_kafka(log_path=logs / "tansu.log")
        children.append(kafka)
        redis = start_redis(log_path=logs / "redis.log")
        children.append(redis)
        port, slow_port = free_port(), free_port()
        sink_url, slow_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{slow_port}"
        sink_child = spawn(
            "sink", [sys.executable, __file__, "sink", str(port), str(slow_port)], sink_url,
            logs / "sink.log", None,
        )  # fmt: skip
        children.append(sink_child)
        wait_ready("sink", f"{sink_url}/count", sink_child)

        total = args.stories * args.subscriptions
        body = b'{"type":"story.published","timestamp":"2026-01-01T00:00:00Z","data":' + (
            make_story(0) + b"}"
        )
        baseline = asyncio.run(bare_loop(f"{sink_url}/bare/0", total, body))
        # The run with the timing-out endpoint goes first, so any warm-up favours the run
        # without it: the ratio errs on the pessimistic side.
        with_slow = run_delivery(
            kafka.address, redis.address, sink_url, slow_url, args.stories, args.subscriptions,
            logs, args.workers,
        )  # fmt: skip
        ours = run_delivery(
            kafka.address, redis.address, sink_url, None, args.stories, args.subscriptions, logs,
            args.workers,
        )  # fmt: skip
        figures: dict[str, Any] = {
            "deliveries": total,
            "delivery_workers": args.workers,
            "bare_aiohttp_posts_per_s": round(baseline),
            "delivery_signed_per_s": round(ours),
            "ratio_to_bare": round(ours / baseline, 2),
            "delivery_with_one_endpoint_timing_out_per_s": round(with_slow),
            "slow_endpoint_throughput_ratio": round(with_slow / ours, 2),
        }
        if args.paced_seconds > 0:
            latencies = run_paced(
                kafka.address, redis.address, sink_url, args.paced_subscriptions, logs,
                args.workers, args.paced_rate, args.paced_seconds,
            )  # fmt: skip
            figures |= {
                "paced_stories_per_s": args.paced_rate,
                "paced_webhooks": len(latencies),
                "paced_latency_p50_ms": round(percentile(latencies, 50), 1),
                "paced_latency_p99_ms": round(percentile(latencies, 99), 1),
                "paced_latency_max_ms": round(latencies[-1], 1),
                "paced_latency_mean_ms": round(statistics.fmean(latencies), 1),
            }
        for name, value in figures.items():
            print(f"{name:48} {value}")
        print(json.dumps(figures))
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    main()
