"""Benchmark: latest-news cache reads over HTTP (req/s, p50/p99), against the same server's
`/healthz` (the HTTP ceiling without Redis) measured in the same run.

    .venv/bin/python bench/cache.py [--workers 2] [--seconds 10] [--concurrency 32] [--client wrk]

The load comes from `wrk` (C, one thread) when it is installed (`apt-get install wrk`; `make bench`
installs it when run as root), otherwise from aiohttp in this process. The aiohttp client needs
about a core of its own on this 2-core box, and its own event-loop delays land in the latencies it
measures; wrk costs a fraction of that, so its figures are closer to what the server does.

Starts its own Tansu broker, Redis and delivery (uvicorn workers) on 127.0.0.1 and stops each by
pid. The cache is filled with 1,000 stories of ~3 KB; reads are `GET /v1/latest?limit=20`
(~60 KB answers), `GET /v1/latest?section=…&limit=10` and `GET /v1/stories/{uri}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ops.devrun import wait_ready  # noqa: E402
from ops.embedded import ChildProcess, free_port, spawn, start_kafka, start_redis  # noqa: E402
from services.delivery.adapters import CachedStory, RedisStoryCache  # noqa: E402
from shared.events import Topics  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402

SECTIONS = ["world", "business", "sport", "culture", "science"]


async def fill(redis_url: str, prefix: str, count: int) -> list[str]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    cache = RedisStoryCache(redis, prefix, per_section=1000)
    uris = []
    batch = []
    for i in range(count):
        uri = f"urn:newsflow:bench:{i}"
        section = SECTIONS[i % len(SECTIONS)]
        body = json.dumps(
            {"uri": uri, "version": 1, "headline": f"Story {i}", "section": section,
             "body_html": "<p>" + "The harbour authority opened the terminal. " * 60 + "</p>"}
        ).encode()  # fmt: skip
        batch.append(CachedStory(uri, section, 1_700_000_000 + i, False, body, section, 1))
        uris.append(uri)
        if len(batch) == 100:
            await cache.apply(batch)
            batch = []
    await cache.apply(batch)
    await cache.mark_built()
    await redis.aclose()
    return uris


async def hammer(
    paths: list[str], base: str, seconds: float, concurrency: int
) -> tuple[float, float, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            rng = random.Random()
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.get(base + rng.choice(paths)) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    rate = len(latencies) / elapsed
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return rate, p50, p99


def run_hammer(
    paths: list[str], base: str, seconds: float, concurrency: int
) -> tuple[float, float, float]:
    return asyncio.run(hammer(paths, base, seconds, concurrency))


WRK_SCRIPT = """
paths = {%s}
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), bad))
end
"""


def hammer_wrk(
    paths: list[str], base: str, seconds: float, concurrency: int
) -> tuple[float, float, float]:
    """The same load from wrk: one thread, `concurrency` connections, a random path each request."""
    listed = ", ".join(json.dumps(path) for path in paths)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % listed)
        script.flush()
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "-s", script.name, base]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, bad = (int(x) for x in line.split()[1:])
    if bad:
        raise RuntimeError(f"wrk saw {bad} failed or non-2xx answers:\n{out.stdout}")
    return requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="connections kept busy (at 64 the server is past saturation: /healthz p99 ~22 ms)",
    )
    parser.add_argument(
        "--client",
        choices=["wrk", "aiohttp"],
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="load generator (default: wrk when installed)",
    )
    args = parser.parse_args()
    load = hammer_wrk if args.client == "wrk" else run_hammer
    logs = ROOT / ".newsflow" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[ChildProcess] = []
    try:
        kafka = start_kafka(log_path=logs / "tansu-cache.log")
        children.append(kafka)
        redis = start_redis(log_path=logs / "redis-cache.log")
        children.append(redis)
        prefix = f"cbench{uuid.uuid4().hex[:6]}."
        asyncio.run(ensure_topics(kafka.address, Topics(prefix).all()))
        uris = asyncio.run(fill(redis.address, prefix, 1000))
        port = free_port()
        env = {
            **os.environ,
            "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka.address,
            "NEWSFLOW_REDIS_URL": redis.address,
            "NEWSFLOW_TOPIC_PREFIX": prefix,
            "NEWSFLOW_REDIS_KEY_PREFIX": prefix,
            "NEWSFLOW_LOG_LEVEL": "WARNING",
            "NEWSFLOW_LOG_FORMAT": "json",
        }
        argv = [
            sys.executable, "-m", "uvicorn", "services.delivery.main:create", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
            "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        server = spawn("delivery", argv, base, logs / "delivery-cache.log", env)
        children.append(server)
        wait_ready("delivery", f"{base}/readyz", server)
        time.sleep(2)  # every worker up

        reads = (
            ["/v1/latest?limit=20"] * 4
            + [f"/v1/latest?section={s}&limit=10" for s in SECTIONS]
            + [f"/v1/stories/{quote(u, safe='')}" for u in random.sample(uris, 50)]
        )
        load(reads, base, 2, args.concurrency)  # warm-up
        ceiling = load(["/healthz"], base, args.seconds, args.concurrency)
        cache = load(reads, base, args.seconds, args.concurrency)
        latest = load(["/v1/latest?limit=20"], base, args.seconds, args.concurrency)
        figures = {
            "client": args.client,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "healthz_req_per_s": round(ceiling[0]),
            "healthz_p99_ms": round(ceiling[2], 1),
            "cache_mix_req_per_s": round(cache[0]),
            "cache_mix_p50_ms": round(cache[1], 1),
            "cache_mix_p99_ms": round(cache[2], 1),
            "cache_mix_ratio_to_healthz": round(cache[0] / ceiling[0], 2),
            "latest20_req_per_s": round(latest[0]),
            "latest20_p99_ms": round(latest[2], 1),
        }
        for name, value in figures.items():
            print(f"{name:32} {value}")
        print(json.dumps(figures))
    finally:
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    main()
