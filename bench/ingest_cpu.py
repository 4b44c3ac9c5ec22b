"""ingest's CPU cost per accepted article, in-process: the real app, producer and Redis client,
no HTTP server and no load generator in the process, so the figure is what one request costs.

    .venv/bin/python -m bench.ingest_cpu --requests 4000 --concurrency 32 [--profile out.pstats]

Starts the embedded broker and redis-server, calls the ASGI app directly with ~3 KB articles
(fresh uri each) from `concurrency` tasks, and prints process CPU µs per request (broker and
Redis run in their own processes and are not counted). `--bare`: the bench's bare endpoint.
Every process started here is stopped by its pid.

    .venv/bin/python -m bench.ingest_cpu --rate 1000 --requests 6000 --claim-windows 0,2

`--rate`: requests start at that many a second, each on time (a paced load client's arrivals),
and the broker's and Redis's CPU a request are printed too; a paced request costs far more than
one among 32 in flight. `--claim-windows`: one run per NEWSFLOW_INGEST_CLAIM_WINDOW_MS value,
in turn, each round (an interleaved A/B in one process).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import time
import uuid
from typing import Any

from bench.ingest import KEY, article, bare_app
from bench.processes import process_tree_cpu_s
from ops.embedded import start_kafka, start_redis
from services.ingest.app import create_app
from services.ingest.main import open_runtime
from services.ingest.settings import IngestSettings
from shared.events import Topics
from shared.kafka import ensure_topics


async def post(app: Any, body: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/articles",
        "raw_path": b"/v1/articles",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8001),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(
    settings: IngestSettings,
    requests: int,
    concurrency: int,
    profile: str,
    bare: bool,
    rate: float = 0.0,
    others: dict[str, int] | None = None,
) -> None:
    """`rate`: requests started at that many a second (each on time, however many are in
    flight), not `concurrency` at a time. `others`: processes (name -> pid) whose CPU over the
    measured requests is printed too (the broker, Redis)."""
    app = bare_app() if bare else create_app(settings, open_runtime)
    bodies = [article("bench") for _ in range(requests + 500)]
    async with app.router.lifespan_context(app):
        statuses: dict[int, int] = {}

        async def client(start: int, count: int) -> None:
            for i in range(start, start + count * concurrency, concurrency):
                status = await post(app, bodies[i])
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client(i, 500 // concurrency) for i in range(concurrency)))
        statuses.clear()
        profiler = cProfile.Profile() if profile else None
        per_task = requests // concurrency
        done = per_task * concurrency
        others = others or {}
        before = {name: process_tree_cpu_s(pid) for name, pid in others.items()}
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        if rate:
            await paced(app, bodies[500 : 500 + done], rate, statuses)
        else:
            await asyncio.gather(*(client(500 + i, per_task) for i in range(concurrency)))
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        elsewhere = "".join(
            f", {name} {(process_tree_cpu_s(pid) - before[name]) / done * 1e6:.0f}"
            for name, pid in others.items()
        )
        window = f" (claim window {settings.ingest_claim_window_ms:g} ms)" if rate else ""
        print(
            f"{'bare' if bare else 'ingest'}{window}: {done} requests, statuses {statuses}: "
            f"{cpu / done * 1e6:.0f} µs CPU a request{elsewhere}, "
            f"{done / wall:.0f} req/s in-process",
            flush=True,
        )


async def paced(app: Any, bodies: list[bytes], rate: float, statuses: dict[int, int]) -> None:
    """Starts a request every 1/rate seconds (as a paced load client's arrive)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[int]] = []
    for n, body in enumerate(bodies):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(post(app, body)))
    for status in await asyncio.gather(*tasks):
        statuses[status] = statuses.get(status, 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="", help="write cProfile stats of the last round")
    parser.add_argument("--bare", action="store_true", help="the bare endpoint instead")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="pace the requests at this many a second"
    )
    parser.add_argument(
        "--claim-windows",
        default="",
        help="with --rate: comma-separated NEWSFLOW_INGEST_CLAIM_WINDOW_MS values, one after the "
        "other in each round (an interleaved A/B)",
    )
    args = parser.parse_args()
    kafka, redis = start_kafka(), start_redis()
    try:
        prefix = f"cpu{uuid.uuid4().hex[:6]}."
        asyncio.run(ensure_topics(kafka.address, Topics(prefix).all()))
        os.environ.update(
            NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS=kafka.address, NEWSFLOW_TOPIC_PREFIX=prefix
        )  # the bare endpoint reads its settings from the environment
        settings = IngestSettings(
            kafka_bootstrap_servers=kafka.address,
            redis_url=redis.address,
            topic_prefix=prefix,
            redis_key_prefix=prefix,
            ingest_api_keys=f"bench={KEY}",
            ingest_rate_limit=100_000_000,
            log_level="WARNING",
            log_format="json",
        )
        import uvloop

        windows = [float(w) for w in args.claim_windows.split(",") if w]
        arms = [settings.model_copy(update={"ingest_claim_window_ms": w}) for w in windows]
        others = {"broker": kafka.pid, "redis": redis.pid}
        for round_ in range(args.rounds):
            last = round_ == args.rounds - 1
            profile = args.profile if last else ""
            for arm in arms or [settings]:
                uvloop.run(
                    run(arm, args.requests, args.concurrency, profile, args.bare, args.rate, others)
                )
    finally:
        redis.stop()
        kafka.stop()


if __name__ == "__main__":
    os.environ.setdefault("NEWSFLOW_LOG_LEVEL", "WARNING")
    main()
