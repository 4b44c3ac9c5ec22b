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
from typing import cast

import aiohttp
import httptools
import uvloop
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


# The receiver's answers. It shares the cores with the system it measures (~2.5 webhooks a
# story), so it parses requests with llhttp (httptools) in protocol callbacks and answers from
# these bytes: ~10 µs of CPU a request where an aiohttp application took ~45 (`bench.receiver_cpu`,
# 3 KB bodies, 50 connections).
RECEIVER_MAX_BODY = 4 * 1024 * 1024  # aiohttp's `client_max_size` as the receiver had it
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)

# (subscriber, token, received time, withdrawn) of every webhook received.
Mark = tuple[int, int, float, bool]


def _json_answer(document: object) -> bytes:
    body = json.dumps(document).encode()
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class ReceiverProtocol(asyncio.Protocol):
    """One connection to the partner receiver: HTTP/1.1 keep-alive, requests pipelined or split
    across reads alike; the answers to what one read completed go out in one write, in order.

    `POST /s/<n>` records (n, token, time.time() at the complete request, withdrawn) and answers
    200; `GET /count`, `GET /dump` and `POST /reset` answer JSON; anything else 404; a request
    llhttp cannot parse 400 and the connection closes, as after `Connection: close` or HTTP/1.0.
    """

    def __init__(self, marks: list[Mark]) -> None:
        self.marks = marks
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.out: list[bytes] = []
        self.closing = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if not self.closing:
                self.out.append(_BAD_REQUEST)
                self.closing = True
        assert self.transport is not None
        if self.out:
            self.transport.write(self.out[0] if len(self.out) == 1 else b"".join(self.out))
            self.out.clear()
        if self.closing:
            self.transport.close()

    # -- httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.size += len(body)
        if self.size > RECEIVER_MAX_BODY:
            self.body.clear()
            self.out.append(_TOO_LARGE)
            self.closing = True
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        url, parts = self.url, self.body
        self.url, self.body, self.size = b"", [], 0
        method = self.parser.get_method()
        path = url.partition(b"?")[0]
        marks = self.marks
        if method == b"POST" and path.startswith(b"/s/") and path[3:].isdigit():
            now = time.time()
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            match = TOKEN.search(body)
            token = int(match.group(1)) if match else -1
            marks.append((int(path[3:]), token, now, b"story.withdrawn" in body[:120]))
            answer = _OK
        elif method == b"GET" and path == b"/count":
            answer = _json_answer({"count": len(marks)})
        elif method == b"GET" and path == b"/dump":
            answer = _json_answer({"marks": marks})
        elif method == b"POST" and path == b"/reset":
            marks.clear()
            answer = _json_answer({"count": 0})
        else:
            answer = _NOT_FOUND
        if not self.parser.should_keep_alive():  # Connection: close, or HTTP/1.0 without keep-alive
            head, _, rest = answer.partition(b"\r\n")
            answer = head + b"\r\n" + _CLOSE + rest
            self.closing = True
        self.out.append(answer)


async def serve_receiver(
    host: str, port: int, marks: list[Mark] | None = None
) -> asyncio.AbstractServer:
    """The receiver listening on (host, port), recording into `marks` (a new list if None)."""
    recorded: list[Mark] = [] if marks is None else marks
    loop = asyncio.get_running_loop()
    # The backlog aiohttp's `run_app` listened with.
    return await loop.create_server(lambda: ReceiverProtocol(recorded), host, port, backlog=128)


def receiver(port: int) -> None:
    """Answers 200 to every POST /s/<n> and records (subscriber, token, received time, withdrawn);
    `main` installs uvloop first."""

    async def run() -> None:
        server = await serve_receiver("127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


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
