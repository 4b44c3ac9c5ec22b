"""The benchmark's partner receiver (`bench.processes`) and the load client's sender to ingest
(`bench.e2e.ingest_sender`), over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bench.e2e import ingest_client, ingest_sender, receiver_get, receiver_reset
from bench.processes import Mark, serve_receiver
from bench.stories import Item
from ops.embedded import free_port, spawn, wait_for_port

pytestmark = pytest.mark.unit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def webhook(token: int | None, kind: str = "story.published") -> bytes:
    """A body like delivery's: the event type in its first bytes, the story's keywords later."""
    keywords = ["markets", f"bench-{token}"] if token is not None else ["markets"]
    return json.dumps({"type": kind, "data": {"body": "x" * 3000, "keywords": keywords}}).encode()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Mark]]]:
    marks: list[Mark] = []
    port = free_port()
    server = await serve_receiver("127.0.0.1", port, marks)
    try:
        yield f"http://127.0.0.1:{port}", marks
    finally:
        server.close()
        await server.wait_closed()


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def test_pipelined_keep_alive_posts_are_answered_in_order_and_recorded(
    receiver: tuple[str, list[Mark]],
) -> None:
    url, marks = receiver
    reader, writer = await connect(url)
    withdrawn = webhook(7, "story.withdrawn")
    split = post("/s/19", webhook(None))
    before = time.time()
    # Two whole requests and half of a third in one write, the rest of the third in another.
    writer.write(post("/s/3", webhook(41)) + post("/s/12", withdrawn) + split[:1500])
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2 * len(OK)), 5) == 2 * OK
    assert len(marks) == 2
    writer.write(split[1500:])
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(OK)), 5) == OK
    # The same connection goes on: a 404, and a POST to a subscriber that is no number.
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n" + post("/s/abc", b"{}"))
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2 * len(NOT_FOUND)), 5) == 2 * NOT_FOUND
    after = time.time()
    await close(writer)

    count = await asyncio.to_thread(receiver_get, url, "/count")
    assert count == {"count": 3}
    dump = await asyncio.to_thread(receiver_get, url, "/dump")
    assert [mark[:2] + mark[3:] for mark in dump["marks"]] == [
        [3, 41, False],
        [12, 7, True],
        [19, -1, False],
    ]
    assert all(before <= mark[2] <= after for mark in dump["marks"])
    assert [list(mark) for mark in marks] == dump["marks"]

    await asyncio.to_thread(receiver_reset, url)
    assert await asyncio.to_thread(receiver_get, url, "/count") == {"count": 0}
    assert marks == []


async def test_a_chunked_body_and_a_large_one_split_in_many_reads(
    receiver: tuple[str, list[Mark]],
) -> None:
    url, marks = receiver
    reader, writer = await connect(url)
    body = webhook(5)
    chunked = (
        b"POST /s/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{100:x}\r\n".encode()
        + body[:100]
        + f"\r\n{len(body) - 100:x}\r\n".encode()
        + body[100:]
        + b"\r\n0\r\n\r\n"
    )
    large = post("/s/2", webhook(6).replace(b"x" * 3000, b"y" * 2_000_000))
    writer.write(chunked)
    for start in range(0, len(large), 65_536):
        writer.write(large[start : start + 65_536])
        await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2 * len(OK)), 5) == 2 * OK
    await close(writer)
    assert [(n, token, withdrawn) for n, token, _, withdrawn in marks] == [
        (1, 5, False),
        (2, 6, False),
    ]


async def test_connection_close_and_http_1_0_close_after_the_answer(
    receiver: tuple[str, list[Mark]],
) -> None:
    url, marks = receiver
    for request in (
        post("/s/4", webhook(1), "Connection: close\r\n"),
        b"GET /count HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await connect(url)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 5)  # to the end: the receiver closed
        await close(writer)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(body) == length
    assert json.loads(body) == {"count": 1}
    assert len(marks) == 1


async def test_a_malformed_request_gets_400_and_the_connection_closes(
    receiver: tuple[str, list[Mark]],
) -> None:
    url, marks = receiver
    reader, writer = await connect(url)
    writer.write(post("/s/1", webhook(2)) + b"NOT HTTP AT ALL\r\n\r\n" + post("/s/2", webhook(3)))
    answer = await asyncio.wait_for(reader.read(), 5)
    await close(writer)
    assert answer == OK + BAD
    assert [mark[:2] for mark in marks] == [(1, 2)]


async def test_the_receiver_process_answers_on_uvloop() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bench.processes", "receiver", "--port", str(port)]
    child = spawn("receiver", argv, f"http://127.0.0.1:{port}", None, None)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30, child)
        reader, writer = await connect(child.address)
        writer.write(post("/s/9", webhook(11)) + post("/s/9", webhook(12)))
        assert await asyncio.wait_for(reader.readexactly(2 * len(OK)), 5) == 2 * OK
        await close(writer)
        dump = await asyncio.to_thread(receiver_get, child.address, "/dump")
        assert [mark[:2] for mark in dump["marks"]] == [[9, 11], [9, 12]]
    finally:
        child.stop()


# --- the load client's sender to ingest ------------------------------------------------------

Answerer = Callable[[int, int], Awaitable[bytes | None]]  # (connection, request) -> answer


async def fake_ingest(answer: Answerer) -> tuple[asyncio.AbstractServer, str, list[bytes]]:
    """A server that reads each request's head and body and answers what `answer` says (None:
    closes the connection without answering); returns the server, its address, the request
    lines."""
    lines: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                lines.append(head.split(b"\r\n")[0])
                reply = await answer(mine, len(lines))
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}", lines


def status(code: int) -> bytes:
    return f"HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\n{{}}".encode()


def item(token: int, kind: Any = "publish") -> Item:
    return Item(kind, f"urn:x:{token}", "s", token, b'{"a": 1}')


async def test_ingest_sender_resends_after_a_lost_answer_and_takes_409_for_202() -> None:
    async def answer(_: int, request: int) -> bytes | None:
        return {1: None, 2: status(503), 3: status(409)}.get(request, status(202))

    server, url, lines = await fake_ingest(answer)
    try:
        async with ingest_client() as client:
            send = ingest_sender(client, url)
            assert await send(item(1)) == 202  # lost, 503, then 409 for the one that was lost
            assert await send(item(2, "withdraw")) == 202
    finally:
        server.close()
        await server.wait_closed()
    assert lines[:3] == [b"POST /v1/articles HTTP/1.1"] * 3
    assert lines[3] == b"POST /v1/articles/urn%3Ax%3A2/withdraw HTTP/1.1"


async def test_ingest_sender_keeps_a_connection_per_request_in_flight() -> None:
    """Four sends at once are four requests in flight on four connections (none waits for
    another's answer): nothing is answered until all four have arrived."""
    arrived = asyncio.Event()
    seen: set[int] = set()

    async def answer(connection: int, _: int) -> bytes:
        seen.add(connection)
        if len(seen) == 4:
            arrived.set()
        await asyncio.wait_for(arrived.wait(), 5)
        return status(202)

    server, url, lines = await fake_ingest(answer)
    try:
        async with ingest_client() as client:
            send = ingest_sender(client, url)
            statuses = await asyncio.gather(*(send(item(n)) for n in range(4)))
            assert statuses == [202] * 4
            # Answered, the four connections are kept: the next four reuse them.
            assert await asyncio.gather(*(send(item(n)) for n in range(4, 8))) == [202] * 4
    finally:
        server.close()
        await server.wait_closed()
    assert seen == {1, 2, 3, 4}
    assert len(lines) == 8
