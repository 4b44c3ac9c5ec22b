"""Ingest throughput: accepted 3 KB articles/s and p99, against a bare endpoint in the same run.

    .venv/bin/python -m bench.ingest --seconds 10 --concurrency 64 --workers 2

Starts the embedded broker (Tansu) and redis-server, then for each round: the bare endpoint
(same uvicorn stack: JSON parse + raw aiokafka send awaiting the ack, no validation) and the
real ingest service, each loaded by aiohttp clients on loopback. Also prints the server's CPU
time (all its processes, from /proc) per request in the measured window: unlike the rates, it
hardly depends on what else runs on the box. Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI, Request, Response

from bench.processes import process_tree_cpu_s
from ops.embedded import ChildProcess, free_port, spawn, start_kafka, start_redis, wait_for_port
from shared.events import Topics
from shared.kafka import ensure_topics, make_producer
from shared.settings import NewsflowSettings

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"


def bare_app() -> FastAPI:
    """The floor: parse the JSON, send it raw, await the broker's ack, answer 202."""
    settings = NewsflowSettings()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        producer = make_producer(settings)
        await producer.start()
        state["producer"] = producer
        yield
        await producer.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/articles")
    async def post(request: Request) -> Response:
        article = orjson.loads(await request.body())
        ack = await state["producer"].send(
            settings.topics.ingested, orjson.dumps(article), key=article["uri"].encode()
        )
        await ack
        return Response(b'{"status":"accepted"}', 202, media_type="application/json")

    return app


def article(provider: str) -> bytes:
    paragraph = "<p>The harbour authority opened the new ferry terminal on Tuesday, " * 3
    body = (paragraph + "doubling capacity for island crossings.</p>") * 12
    return orjson.dumps(
        {
            "uri": f"urn:newsflow:{provider}:{uuid.uuid4().hex}",
            "headline": "Harbour authority opens the new ferry terminal",
            "summary": "The terminal doubles capacity for island crossings.",
            "body_html": body[:2800],
            "byline": "Bench Desk",
            "provider": provider,
            "section": "Business",
            "language": "en",
        }
    )


@dataclass
class Result:
    name: str
    accepted: int
    other: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[98]

    @property
    def cpu_us(self) -> float:
        """Server CPU (all its processes) per answered request in the measured window."""
        return self.server_cpu_s / max(1, self.accepted + self.other) * 1e6

    def line(self) -> str:
        return (
            f"{self.name:8} {self.rate:8.0f} accepted/s  p50 "
            f"{statistics.median(self.latencies_ms):5.1f} ms  p99 {self.p99:5.1f} ms  "
            f"server CPU {self.cpu_us:4.0f} µs/request  (non-2xx: {self.other})"
        )


async def load(
    name: str, url: str, seconds: float, concurrency: int, server_cpu: Callable[[], float]
) -> Result:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bodies = [article("bench") for _ in range(2000)]
    latencies: list[float] = []
    counts = {"ok": 0, "other": 0}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(offset: int, until: float, record: bool) -> None:
            i = offset
            while time.perf_counter() < until:
                i += concurrency
                started = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)
                    counts["ok" if r.status in (200, 202) else "other"] += 1

        warm = time.perf_counter() + 2
        await asyncio.gather(*(client(i, warm, False) for i in range(concurrency)))
        # Fresh uris for the measured part, so every request publishes a new record.
        bodies[:] = [article("bench") for _ in range(len(bodies))]
        cpu = server_cpu()
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client(i, until, True) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = server_cpu() - cpu
    return Result(name, counts["ok"], counts["other"], elapsed, latencies, cpu)


def start_server(argv: list[str], env: dict[str, str], port: int) -> ChildProcess:
    child = spawn("server", argv, f"127.0.0.1:{port}", None, env)
    try:
        wait_for_port("127.0.0.1", port, 30, child)
    except Exception:
        child.stop()
        raise
    time.sleep(1.0)  # every worker up
    return child


def run_one(
    name: str, make: Callable[[int], list[str]], env: dict[str, str], args: argparse.Namespace
) -> Result:
    port = free_port()
    server = start_server(make(port), {**env, "NEWSFLOW_INGEST_PORT": str(port)}, port)
    try:
        url = f"http://127.0.0.1:{port}/v1/articles"
        return asyncio.run(
            load(name, url, args.seconds, args.concurrency, lambda: process_tree_cpu_s(server.pid))
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    kafka = start_kafka()
    redis = start_redis()
    try:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        asyncio.run(ensure_topics(kafka.address, Topics(prefix).all()))
        env = {
            **os.environ,
            "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka.address,
            "NEWSFLOW_REDIS_URL": redis.address,
            "NEWSFLOW_TOPIC_PREFIX": prefix,
            "NEWSFLOW_REDIS_KEY_PREFIX": prefix,
            "NEWSFLOW_INGEST_API_KEYS": f"bench={KEY}",
            "NEWSFLOW_INGEST_RATE_LIMIT": "100000000",
            "NEWSFLOW_INGEST_WORKERS": str(args.workers),
            "NEWSFLOW_LOG_LEVEL": "WARNING",
            "NEWSFLOW_LOG_FORMAT": "json",
        }
        python = sys.executable
        bare = [python, "-m", "uvicorn", "bench.ingest:bare_app", "--factory", "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning",
                "--workers", str(args.workers), "--port"]  # fmt: skip

        def bare_argv(port: int) -> list[str]:
            return [*bare, str(port)]

        def ingest_argv(port: int) -> list[str]:
            return [python, "-m", "services.ingest"]

        print(
            f"3 KB articles, {args.concurrency} concurrent aiohttp clients, "
            f"{args.workers} uvicorn workers, {args.seconds:.0f} s per run"
        )
        bares, ingests = [], []
        for _ in range(args.rounds):
            bares.append(run_one("bare", bare_argv, env, args))
            print(bares[-1].line(), flush=True)
            ingests.append(run_one("ingest", ingest_argv, env, args))
            print(ingests[-1].line(), flush=True)
        best_bare = max(bares, key=lambda r: r.rate)
        best_ingest = max(ingests, key=lambda r: r.rate)
        print(
            f"best: ingest {best_ingest.rate:.0f}/s (p99 {best_ingest.p99:.1f} ms), "
            f"bare {best_bare.rate:.0f}/s, ratio {best_ingest.rate / best_bare.rate:.2f}; "
            f"server CPU a request: ingest {best_ingest.cpu_us:.0f} µs, "
            f"bare {best_bare.cpu_us:.0f} µs"
        )
    finally:
        redis.stop()
        kafka.stop()


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
