"""delivery's lean webhook client against real HTTP servers on 127.0.0.1 (aiohttp, and raw
asyncio servers for what a framework would not do: closing kept-alive connections, garbage).
Names resolve through a stub resolver to 127.0.0.1 only; nothing else is ever contacted."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
import uvloop
from aiohttp import web

from services.delivery.webhook_client import BODY_KEPT, LeanWebhookSender

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)  # client address of each request


async def serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> tuple[int, Seen, web.AppRunner]:
    seen = Seen()

    async def recording(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.requests.append(
            (request.path_qs, {k.lower(): v for k, v in request.headers.items()}, body)
        )
        seen.peers.append(
            request.transport.get_extra_info("peername") if request.transport else None
        )
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port: int = runner.addresses[0][1]
    return port, seen, runner


def stub(
    answers: dict[str, list[str]], asked: list[str] | None = None
) -> Callable[[str], Awaitable[list[str]]]:
    async def resolve(host: str) -> list[str]:
        if asked is not None:
            asked.append(host)
        return answers.get(host, [])

    return resolve


LOCAL = stub({"partner.test": ["127.0.0.1"]})


@pytest.fixture
async def sender() -> AsyncIterator[LeanWebhookSender]:
    client = LeanWebhookSender(LOCAL, allow_private=True, timeout_s=5)
    yield client
    await client.close()


async def test_posts_body_and_headers_with_the_host_named_in_the_url_and_reuses_the_connection(
    sender: LeanWebhookSender,
) -> None:
    port, seen, runner = await serve(lambda _: _answer(web.Response(status=204)))
    try:
        headers = {"content-type": "application/json", "webhook-id": "msg_1"}
        first = await sender.post(f"http://partner.test:{port}/hooks/a?x=1", b'{"a":1}', headers)
        second = await sender.post(f"http://partner.test:{port}/hooks/a?x=1", b'{"a":2}', headers)
    finally:
        await runner.cleanup()
    assert (first.status, first.error, first.body) == (204, None, None)
    assert second.status == 204
    path, got, body = seen.requests[0]
    assert path == "/hooks/a?x=1" and body == b'{"a":1}'
    assert got["host"] == f"partner.test:{port}"
    assert got["content-type"] == "application/json" and got["webhook-id"] == "msg_1"
    assert got["content-length"] == "7"
    assert seen.peers[0] == seen.peers[1]  # one kept-alive connection for both


async def test_redirects_are_answers_not_followed(sender: LeanWebhookSender) -> None:
    async def moved(_: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"location": "/elsewhere"}, text="moved")

    port, seen, runner = await serve(moved)
    try:
        answer = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await runner.cleanup()
    assert (answer.status, answer.error, answer.body) == (302, "HTTP 302", "moved")
    assert [path for path, _, _ in seen.requests] == ["/h"]


async def test_gone_and_too_many_requests_with_retry_after(sender: LeanWebhookSender) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/gone":
            return web.Response(status=410, text="bye")
        return web.Response(status=429, headers={"Retry-After": "7"})

    port, _, runner = await serve(answer)
    try:
        gone = await sender.post(f"http://partner.test:{port}/gone", b"{}", {})
        busy = await sender.post(f"http://partner.test:{port}/busy", b"{}", {})
    finally:
        await runner.cleanup()
    assert (gone.status, gone.error, gone.body, gone.retry_after) == (410, "HTTP 410", "bye", None)
    assert (busy.status, busy.error, busy.retry_after) == (429, "HTTP 429", "7")


async def test_chunked_and_big_answers_keep_the_first_4_kb_and_the_connection(
    sender: LeanWebhookSender,
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200 if request.path == "/chunked" else 202)
        response.enable_chunked_encoding()
        await response.prepare(request)
        if request.path == "/chunked":
            for part in (b"hello ", b"chunked ", b"world"):
                await response.write(part)
        else:
            for _ in range(100):  # 100 KB, in 1 KB chunks
                await response.write(b"x" * 1023 + b"\n")
        await response.write_eof()
        return response

    port, seen, runner = await serve(answer)
    try:
        chunked = await sender.post(f"http://partner.test:{port}/chunked", b"{}", {})
        big = await sender.post(f"http://partner.test:{port}/big", b"{}", {})
        after = await sender.post(f"http://partner.test:{port}/chunked", b"{}", {})
    finally:
        await runner.cleanup()
    assert (chunked.status, chunked.body) == (200, "hello chunked world")
    assert big.status == 202 and big.body is not None and len(big.body) == BODY_KEPT
    assert after.status == 200
    assert len(set(seen.peers)) == 1  # the big answer was drained, not a reason to reconnect


async def test_a_slow_endpoint_times_out_as_an_answer() -> None:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(status=204)

    port, _, runner = await serve(slow)
    try:
        async with LeanWebhookSender(LOCAL, allow_private=True, timeout_s=0.3) as sender:
            answer = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await runner.cleanup()
    assert answer.status is None and (answer.error or "").startswith("TimeoutError")
    assert 250 <= answer.duration_ms < 2000


async def test_each_request_times_out_at_its_own_deadline_while_others_are_answered() -> None:
    async def by_path(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(2)
        return web.Response(status=204)

    port, _, runner = await serve(by_path)
    try:
        async with LeanWebhookSender(LOCAL, allow_private=True, timeout_s=0.4) as sender:

            async def post(path: str, after_s: float) -> tuple[int | None, str | None, float]:
                await asyncio.sleep(after_s)
                answer = await sender.post(f"http://partner.test:{port}{path}", b"{}", {})
                return answer.status, answer.error, answer.duration_ms

            found = await asyncio.gather(
                post("/slow", 0), post("/fast", 0.1), post("/slow", 0.2), post("/fast", 0.5)
            )
            again = await post("/fast", 0)  # after every deadline passed
    finally:
        await runner.cleanup()
    (slow_1, _, ms_1), fast_1, (slow_2, _, ms_2), fast_2 = found
    assert (slow_1, slow_2) == (None, None)
    assert 350 <= ms_1 < 1000 and 350 <= ms_2 < 1000  # each its own 0.4 s, not the first's
    assert [fast_1[:2], fast_2[:2], again[:2]] == [(204, None)] * 3


class RawServer:
    """A raw HTTP server: per connection, answers `answered` requests with 200, then reads one
    more request and closes without answering (a server dropping an idle kept-alive connection
    just as a request arrives). `answered=0`: closes on the first request."""

    def __init__(self, answered: int, reply: bytes | None = None, close: bool = False) -> None:
        self.answered = answered
        self.close = close  # closes right after its first answer
        self.reply = reply or b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        self.connections = 0
        self.requests = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in range(self.answered + 1):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if n == self.answered:
                    break
                writer.write(self.reply)
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def start(self) -> int:
        self._server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


async def test_a_kept_alive_connection_the_server_dropped_is_retried_once_on_a_fresh_one(
    sender: LeanWebhookSender,
) -> None:
    raw = RawServer(answered=1)
    port = await raw.start()
    try:
        first = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
        # Reuses the kept-alive connection; the server reads the request and closes: no byte
        # of an answer, so it goes again on a fresh connection, which answers.
        second = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await raw.stop()
    assert (first.status, second.status, second.body) == (200, 200, "ok")
    assert (raw.connections, raw.requests) == (2, 3)


async def test_a_fresh_connection_closed_without_an_answer_is_not_retried(
    sender: LeanWebhookSender,
) -> None:
    raw = RawServer(answered=0)
    port = await raw.start()
    try:
        answer = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await raw.stop()
    assert answer.status is None and "closed the connection" in (answer.error or "")
    assert (raw.connections, raw.requests) == (1, 1)


async def test_a_garbled_answer_is_an_error_not_an_exception(sender: LeanWebhookSender) -> None:
    raw = RawServer(answered=1, reply=b"HTTP/1.1 ABC nonsense\r\n\r\n")
    port = await raw.start()
    try:
        answer = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await raw.stop()
    assert answer.status is None and "malformed HTTP response" in (answer.error or "")


async def test_an_answer_ended_by_closing_the_connection(sender: LeanWebhookSender) -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    raw = RawServer(answered=1, reply=reply, close=True)
    port = await raw.start()
    try:
        answer = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
        again = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await raw.stop()
    assert (answer.status, answer.body, again.status) == (200, "all of it", 200)
    assert raw.connections == 2  # not reused after `Connection: close`


async def test_refused_targets_are_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    connects: list[Any] = []
    real = loop.create_connection

    async def counting(*args: Any, **kwargs: Any) -> Any:
        connects.append((args, kwargs))
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", counting)
    asked: list[str] = []
    resolve = stub(
        {"evil.test": ["169.254.169.254"], "mixed.test": ["93.184.215.14", "10.0.0.8"]}, asked
    )
    async with LeanWebhookSender(resolve, allow_private=False, timeout_s=5) as sender:
        metadata = await sender.post("http://evil.test/h", b"{}", {})
        mixed = await sender.post("https://mixed.test/h", b"{}", {})
        unknown = await sender.post("http://nowhere.test/h", b"{}", {})
        scheme = await sender.post("ftp://partner.test/h", b"{}", {})
        again = await sender.post("http://evil.test/h", b"{}", {})
    assert metadata.status is None and "non-public" in (metadata.error or "")
    assert mixed.status is None and "non-public" in (mixed.error or "")
    assert unknown.status is None and "does not resolve" in (unknown.error or "")
    assert scheme.status is None and "scheme" in (scheme.error or "")
    assert again.status is None and "non-public" in (again.error or "")
    assert asked == ["evil.test", "mixed.test", "nowhere.test", "evil.test"]  # refusals not kept
    assert connects == []


async def test_the_connection_goes_to_the_vetted_address_and_dns_is_judged_again_later() -> None:
    port, seen, runner = await serve(lambda _: _answer(web.Response(status=200)))
    asked: list[str] = []
    answers = {"partner.test": ["127.0.0.1"]}
    now = [0.0]
    sender = LeanWebhookSender(
        stub(answers, asked), allow_private=False, timeout_s=5, clock=lambda: now[0]
    )
    try:
        # Private addresses are refused unless allowed: 127.0.0.1 is refused here.
        refused = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
        sender.allow_private = True
        ok = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
        cached = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
        # The name now points elsewhere: after the TTL it is judged again and refused.
        now[0] += 60
        answers["partner.test"] = ["169.254.169.254"]
        sender.allow_private = False
        rebound = await sender.post(f"http://partner.test:{port}/h", b"{}", {})
    finally:
        await sender.close()
        await runner.cleanup()
    assert refused.status is None and "non-public" in (refused.error or "")
    assert (ok.status, cached.status) == (200, 200)
    assert rebound.status is None and "non-public" in (rebound.error or "")
    assert asked == ["partner.test"] * 3
    assert len(seen.requests) == 2 and seen.requests[0][1]["host"] == f"partner.test:{port}"


async def test_https_verifies_the_certificate_for_the_host_named_in_the_url() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("partner.test").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    port, seen, runner = await serve(
        lambda _: _answer(web.Response(status=200, text="tls")), server_context
    )
    resolve = stub({"partner.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    try:
        async with LeanWebhookSender(
            resolve, allow_private=True, timeout_s=5, ssl_context=trusting
        ) as sender:
            ok = await sender.post(f"https://partner.test:{port}/h", b"{}", {})
            again = await sender.post(f"https://partner.test:{port}/h", b"{}", {})
            wrong_name = await sender.post(f"https://other.test:{port}/h", b"{}", {})
        async with LeanWebhookSender(resolve, allow_private=True, timeout_s=5) as default:
            untrusted = await default.post(f"https://partner.test:{port}/h", b"{}", {})
    finally:
        await runner.cleanup()
    assert (ok.status, ok.body, again.status) == (200, "tls", 200)
    assert seen.peers[0] == seen.peers[1]
    assert wrong_name.status is None and "certificate" in (wrong_name.error or "").lower()
    assert untrusted.status is None and "certificate" in (untrusted.error or "").lower()
    assert len(seen.requests) == 2


async def test_header_injection_is_refused(sender: LeanWebhookSender) -> None:
    for headers in (
        {"x-a": "1\r\nx-b: 2"},
        {"x-ok": "1", "x-a": "1\rx-b: 2"},
        {"x-a": "1\nx-b: 2"},
        {"x-a\r\nx-b": "2"},
        {"x-a: 1\r\nx-b": "2"},
        {"x-b:": "2"},
    ):
        answer = await sender.post("http://partner.test:1/h", b"{}", headers)
        assert answer.status is None and "line break or colon" in (answer.error or ""), headers


async def test_the_framing_headers_are_the_clients_own(sender: LeanWebhookSender) -> None:
    port, seen, runner = await serve(lambda _: _answer(web.Response(status=204)))
    given = {"Content-Length": "1", "Host": "elsewhere.test", "connection": "close", "x-a": "1"}
    try:
        answer = await sender.post(f"http://partner.test:{port}/h", b'{"a":1}', given)
    finally:
        await runner.cleanup()
    assert answer.status == 204
    _, got, body = seen.requests[0]
    assert body == b'{"a":1}' and got["content-length"] == "7" and got["x-a"] == "1"
    assert got["host"] == f"partner.test:{port}"


async def _answer(response: web.StreamResponse) -> web.StreamResponse:
    return response


def test_under_uvloop_as_in_production() -> None:
    """The services run on uvloop, whose transports differ from asyncio's own."""

    async def scenario() -> tuple[list[int | None], list[Any], str | None, str | None]:
        async def answer(request: web.Request) -> web.StreamResponse:
            if request.path == "/slow":
                await asyncio.sleep(2)
            return web.Response(status=200, text="fine")

        port, seen, runner = await serve(answer)
        raw = RawServer(answered=1)
        raw_port = await raw.start()
        try:
            async with LeanWebhookSender(LOCAL, allow_private=True, timeout_s=0.5) as sender:
                answers = [
                    await sender.post(f"http://partner.test:{port}/h", b"{}", {}),
                    await sender.post(f"http://partner.test:{port}/h", b"{}", {}),
                    await sender.post(f"http://partner.test:{port}/slow", b"{}", {}),
                    await sender.post(f"http://partner.test:{raw_port}/h", b"{}", {}),
                    await sender.post(f"http://partner.test:{raw_port}/h", b"{}", {}),
                ]
        finally:
            await raw.stop()
            await runner.cleanup()
        return [a.status for a in answers], seen.peers[:2], answers[2].error, answers[4].body

    statuses, peers, timeout_error, after_stale = uvloop.run(scenario())
    assert statuses == [200, 200, None, 200, 200] and peers[0] == peers[1]
    assert (timeout_error or "").startswith("TimeoutError")
    assert after_stale == "ok"
