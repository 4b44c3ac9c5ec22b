"""The benchmark's helper processes: the partner receiver and the three hops of the raw baseline.

Each runs as its own process (`python -m bench.processes receiver|hop ...`) so that, like the
services, it has a core's worth of event loop of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.settings import NewsflowSettings

TOKEN = re.compile(rb'"bench-(\d+)"')


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every live descendant of it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree}
        grew = not found <= tree
        tree |= found
    ticks = 0
    for member in tree:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def receiver(port: int) -> None:
    """Answers 200 to every POST and records (subscriber, token, received time, withdrawn)."""
    marks: list[tuple[int, int, float, bool]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        match = TOKEN.search(body)
        token = int(match.group(1)) if match else -1
        marks.append((int(request.match_info["n"]), token, now, b"story.withdrawn" in body[:120]))
        return web.Response(status=200)

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"count": len(marks)})

    async def dump(_: web.Request) -> web.Response:
        return web.json_response({"marks": marks})

    async def reset(_: web.Request) -> web.Response:
        marks.clear()
        return web.json_response({"count": 0})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.add_routes(
        [
            web.post("/s/{n}", hook),
            web.get("/count", count),
            web.get("/dump", dump),
            web.post("/reset", reset),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _consumer(bootstrap: str, topic: str, group: str, fetch_max_wait_ms: int) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        # The same as the service in that place (`bench.e2e.start_baseline`).
        fetch_max_wait_ms=fetch_max_wait_ms,
    )


def raw_producer(bootstrap: str) -> AIOKafkaProducer:
    """The baseline's plain aiokafka producer, batched and compressed like the services'."""
    codec = NewsflowSettings().kafka_compression
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=262_144,
        compression_type=None if codec == "none" else codec,
    )


async def hop(
    bootstrap: str,
    source: str,
    target: str | None,
    urls: dict[str, list[str]],
    fetch_max_wait_ms: int,
) -> None:
    """consume -> produce (or -> POST to every subscriber of the record's section), no work."""
    consumer = _consumer(bootstrap, source, f"bench-hop-{source}", fetch_max_wait_ms)
    producer = raw_producer(bootstrap)
    await consumer.start()
    await producer.start()
    # As many connections as delivery keeps in flight by default (`delivery_max_in_flight`):
    # unbounded, a batch of 500 stories opened ~1,250 connections and ran at half the speed.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            if target is not None:
                futures = [
                    await producer.send(target, r.value, key=r.key, headers=list(r.headers))
                    for r in records
                ]
                await asyncio.gather(*futures)
            else:
                posts = [
                    _post(session, url, r.value)
                    for r in records
                    for url in urls.get(dict(r.headers).get("section", b"").decode(), [])
                ]
                await asyncio.gather(*posts)
            await consumer.commit()
    finally:
        await session.close()
        await producer.stop()
        await consumer.stop()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    rec = sub.add_parser("receiver")
    rec.add_argument("--port", type=int, required=True)
    hop_args = sub.add_parser("hop")
    hop_args.add_argument("--bootstrap", required=True)
    hop_args.add_argument("--source", required=True)
    hop_args.add_argument("--target")
    hop_args.add_argument("--urls", default="{}", help="JSON {section_id: [url, ...]}")
    hop_args.add_argument(
        "--fetch-max-wait-ms", type=int, default=NewsflowSettings().kafka_fetch_max_wait_ms
    )
    args = parser.parse_args()
    uvloop.install()
    if args.mode == "receiver":
        receiver(args.port)
    else:
        urls = json.loads(args.urls)
        asyncio.run(hop(args.bootstrap, args.source, args.target, urls, args.fetch_max_wait_ms))


if __name__ == "__main__":
    main()
