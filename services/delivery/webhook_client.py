"""A lean HTTP/1.1 client for webhook POSTs (the delivery hot path; aiohttp stays for the rest).

Why not aiohttp here: per request it builds a `ClientRequest`, a payload object, a timer context
and a response object with a stream reader — ~40 % of delivery's CPU in the profile. This client
writes each request as one bytes buffer on a kept-alive connection and parses the answer with
`httptools` (llhttp) in the protocol's callbacks: one future per request, one timer for all.

SSRF: the host is resolved through the injected resolver and every address is judged by
`check_addresses` before any connection; the connection goes to exactly a judged address (no
second lookup by the socket layer), with the URL's host in the `Host` header and, for https, as
the TLS server name (certificate verified against it). The vetted addresses of a host are reused
for `dns_ttl_s` (as a connector's DNS cache would), then resolved and judged again; idle
connections are pooled per (scheme, host, port, pinned address).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from services.delivery.domain import Answer
from shared.ssrf import Resolver, TargetRefused, check_addresses, check_scheme

BODY_KEPT = 4096
DRAIN_LIMIT = 256 * 1024  # response bytes read past the kept part before giving up the connection
_ERROR_CHARS = 300

PoolKey = tuple[str, str, int, str]


class _Stale(Exception):
    """A reused connection was closed by the server before any byte of the answer arrived."""


class ServerClosed(Exception):
    """The connection closed before a complete answer."""


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # to resolve, and the TLS server name
    port: int
    head: bytes  # b"POST <path> HTTP/1.1\r\nHost: <host>\r\n"


def _target(url: str) -> _Target:
    host = check_scheme(url)  # raises TargetRefused (not http(s), no host, credentials)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    path = quote(path, safe="/?&=%:@!$'()*+,;~-._[]")  # already-encoded URLs pass unchanged
    ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    default = (parts.scheme, port) in (("http", 80), ("https", 443))
    host_header = shown if default else f"{shown}:{port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii")
    return _Target(parts.scheme, ascii_host, port, head)


# Headers the client writes itself: any given are left out.
_CLIENT_SET = frozenset(("host", "content-length", "transfer-encoding", "connection"))


def _request(target: _Target, body: bytes, headers: dict[str, str]) -> bytes:
    """The request's bytes. A header name or value with a line break, or a name with a colon,
    is refused (`ValueError`): it would write headers of its own into the request."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Each line ends in one CR LF: any other CR or LF is inside a name or a value (one count of
    # the text each, not four searches of every header: 3.9 -> 2.8 µs a webhook).
    lines = len(headers)
    if text.count("\r") != lines or text.count("\n") != lines or ":" in "".join(headers):
        bad = next(
            name
            for name, value in headers.items()
            if ":" in name or any(c in name or c in value for c in "\r\n")
        )
        raise ValueError(f"header {bad!r} has a line break or colon")
    if not _CLIENT_SET.isdisjoint(map(str.lower, headers)):
        text = "".join(
            [f"{name}: {value}\r\n" for name, value in headers.items()
             if name.lower() not in _CLIENT_SET]
        )  # fmt: skip
    return target.head + f"{text}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0  # requests sent on it
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status: int | None = None
        self.retry_after: str | None = None
        self.kept = bytearray()
        self.received = 0  # response bytes received for the current request
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.framed = False  # Content-Length or chunked: the body does not end with the connection

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self._waiter is None:  # bytes while idle: the connection is out of step
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ValueError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ValueError(f"malformed HTTP response: {exc}"))
            return
        if not self.complete and self.received > DRAIN_LIMIT + BODY_KEPT and self.headers_done:
            # A huge answer: keep what we have, do not reuse the connection.
            self.complete = True
            self.keep_alive = False
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self.headers_done and not self.complete and not self.framed:
            # A body delimited by the end of the connection (no length, not chunked) ends here.
            self.complete = True
            self.keep_alive = False
            self._wake()
            return
        if self.received == 0 and self.used > 1:
            self._fail(_Stale())
        else:
            self._fail(ServerClosed("the server closed the connection before a complete answer"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"retry-after":
            self.retry_after = value.decode("latin-1").strip()
        elif lower in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        room = BODY_KEPT - len(self.kept)
        if room > 0:
            self.kept += body[:room]

    def on_message_complete(self) -> None:
        status = self.status or 0
        if 100 <= status < 200:  # informational (100 Continue, 103): the answer follows
            self._reset()
            self.received = 1  # bytes of the answer were read: never retried as stale
            return
        self.complete = True
        self.keep_alive = bool(self._parser.should_keep_alive())
        self._wake()

    # -- use
    def send(self, request: bytes, waiter: asyncio.Future[None]) -> None:
        assert self.transport is not None
        self._reset()
        self.used += 1
        self._waiter = waiter
        self.transport.write(request)

    def finished(self) -> None:
        self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


@dataclass
class _Vetted:
    addresses: list[str]
    until: float


@dataclass
class LeanWebhookSender:
    """POSTs signed webhooks; redirects are not followed (a 3xx is a failure). Never raises:
    any error is an `Answer` with status None and the error.

    A request that met a *reused* keep-alive connection already closed by the server (no byte
    of the answer read) is sent once more on a fresh connection. That is the usual HTTP client
    rule for stale keep-alive connections, with its caveat: a POST is not idempotent, and a
    server that processed the request and then closed without answering gets it twice. Partners
    must de-duplicate by `webhook-id` anyway (retries send the same id)."""

    resolve_host: Resolver
    allow_private: bool
    timeout_s: float
    ssl_context: ssl.SSLContext | None = None
    dns_ttl_s: float = 10.0
    idle_timeout_s: float = 15.0  # aiohttp's default keep-alive
    max_idle_per_key: int = 1024  # above the global cap: fan-out to one host reuses them all
    clock: Callable[[], float] = time.monotonic
    _targets: dict[str, _Target] = field(default_factory=dict)
    _vetted: dict[str, _Vetted] = field(default_factory=dict)
    _idle: dict[PoolKey, list[_Connection]] = field(default_factory=dict)
    _busy: set[_Connection] = field(default_factory=set)
    _swept: float = 0.0
    # The deadline of each answer awaited, (deadline, id, waiter), as a heap: one timer for the
    # earliest, not one per request (a libuv timer started and stopped per webhook).
    _deadlines: list[tuple[float, int, asyncio.Future[None]]] = field(default_factory=list)
    _alarm: asyncio.TimerHandle | None = None
    _alarm_at: float = math.inf

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            target = self._targets.get(url)
            if target is None:
                target = _target(url)
                if len(self._targets) > 10_000:
                    self._targets.clear()
                self._targets[url] = target
            request = _request(target, body, headers)
            conn = await self._exchange(target, request, deadline)
            status = conn.status
            kept = conn.kept.decode("utf-8", "replace") or None
            retry_after = conn.retry_after
            error = None if status and 200 <= status < 300 else f"HTTP {status}"
        except (TimeoutError, OSError, ValueError, ServerClosed, _Stale, ssl.SSLError) as exc:
            # ValueError covers TargetRefused (SSRF) and malformed answers.
            status, kept, retry_after = None, None, None
            name = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
            detail = str(exc) or (
                f"no answer within {self.timeout_s:g} s" if isinstance(exc, TimeoutError) else ""
            )
            error = f"{name}: {detail}"[:_ERROR_CHARS]
        except Exception as exc:  # never an exception out of a send
            status, kept, retry_after = None, None, None
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        return Answer(
            status, error, round((time.perf_counter() - started) * 1000, 2), kept, retry_after
        )

    async def _exchange(self, target: _Target, request: bytes, deadline: float) -> _Connection:
        conn = await self._checkout(target, deadline)
        try:
            await self._round_trip(conn, request, deadline)
        except _Stale:
            # Reused connection closed by the server before answering: once, on a fresh one.
            conn = await self._connect(conn.key, target, deadline)
            await self._round_trip(conn, request, deadline)
        return conn

    async def _round_trip(self, conn: _Connection, request: bytes, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._expire_at(deadline, waiter, loop)
        self._busy.add(conn)
        try:
            conn.send(request, waiter)
            await waiter
        except BaseException:
            conn.abort()
            raise
        finally:
            conn.finished()
            self._busy.discard(conn)
        if conn.keep_alive and not conn.closed:
            self._release(conn)
        else:
            conn.close()

    def _expire_at(
        self, deadline: float, waiter: asyncio.Future[None], loop: asyncio.AbstractEventLoop
    ) -> None:
        """`waiter` fails with TimeoutError at `deadline` unless it is done by then."""
        heap = self._deadlines
        while heap and heap[0][2].done():  # answered: their deadlines no longer matter
            heapq.heappop(heap)
        if len(heap) > 1024 + 4 * len(self._busy):  # answered ones behind a slow one
            heap[:] = [entry for entry in heap if not entry[2].done()]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, id(waiter), waiter))
        if deadline < self._alarm_at:
            if self._alarm is not None:
                self._alarm.cancel()
            self._alarm = loop.call_at(deadline, self._ring, loop)
            self._alarm_at = deadline

    def _ring(self, loop: asyncio.AbstractEventLoop) -> None:
        self._alarm, self._alarm_at = None, math.inf
        heap, now = self._deadlines, loop.time()
        while heap and (heap[0][2].done() or heap[0][0] <= now):
            _, _, waiter = heapq.heappop(heap)
            if not waiter.done():
                waiter.set_exception(TimeoutError())
        if heap:
            self._alarm = loop.call_at(heap[0][0], self._ring, loop)
            self._alarm_at = heap[0][0]

    async def _checkout(self, target: _Target, deadline: float) -> _Connection:
        now = self.clock()
        if now - self._swept > self.idle_timeout_s:
            self._sweep(now)
        vetted = self._vetted.get(target.host)
        if vetted is None or vetted.until <= now:
            vetted = await self._vet(target.host, deadline)
        address = vetted.addresses[0]
        key = (target.scheme, target.host, target.port, address)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if (
                not conn.closed
                and conn.transport is not None
                and not conn.transport.is_closing()
                and now - conn.idle_since < self.idle_timeout_s
            ):
                return conn
            conn.close()
        # A fresh connection: try the vetted addresses in turn; one that works goes first.
        last: Exception | None = None
        for address in list(vetted.addresses):
            try:
                conn = await self._connect(
                    (target.scheme, target.host, target.port, address), target, deadline
                )
            except (OSError, ssl.SSLError) as exc:
                last = exc
                continue
            if address != vetted.addresses[0] and address in vetted.addresses:
                vetted.addresses.remove(address)
                vetted.addresses.insert(0, address)
            return conn
        assert last is not None
        raise last

    async def _vet(self, host: str, deadline: float) -> _Vetted:
        async with asyncio.timeout_at(deadline):
            addresses = await self.resolve_host(host)
        check_addresses(host, addresses, self.allow_private)  # raises TargetRefused
        vetted = _Vetted(list(addresses), self.clock() + self.dns_ttl_s)
        if len(self._vetted) > 10_000:
            self._vetted.clear()
        self._vetted[host] = vetted
        return vetted

    async def _connect(self, key: PoolKey, target: _Target, deadline: float) -> _Connection:
        scheme, host, port, address = key
        if not self._vetted.get(host) or address not in self._vetted[host].addresses:
            raise TargetRefused(f"{address} was not vetted for {host}")  # never happens
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self.ssl_context or _default_context()
        async with asyncio.timeout_at(deadline):
            _, conn = await loop.create_connection(
                lambda: _Connection(key),
                host=address,
                port=port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        return conn

    def _sweep(self, now: float) -> None:
        """Closes idle connections past their keep-alive (or to addresses no longer in use)."""
        self._swept = now
        for key, idle in list(self._idle.items()):
            fresh = [c for c in idle if not c.closed and now - c.idle_since < self.idle_timeout_s]
            for conn in idle:
                if conn not in fresh:
                    conn.close()
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    def _release(self, conn: _Connection) -> None:
        conn.idle_since = self.clock()
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_key:
            conn.close()
            return
        idle.append(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm, self._alarm_at = None, math.inf
        self._deadlines.clear()
        await asyncio.sleep(0)  # let the transports close

    async def __aenter__(self) -> LeanWebhookSender:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


_DEFAULT_CONTEXT: ssl.SSLContext | None = None


def _default_context() -> ssl.SSLContext:
    global _DEFAULT_CONTEXT
    if _DEFAULT_CONTEXT is None:
        _DEFAULT_CONTEXT = ssl.create_default_context()
    return _DEFAULT_CONTEXT
