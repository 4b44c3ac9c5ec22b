"""enrichment's feature workers: `features_of` for raw ingested values, in other processes.

The story table hands them chunks of record values; the service process then only inserts the
features, so tokenising, entities and MinHash run on another core. Each worker is spawned, never
forked (it holds none of the service's Kafka or HTTP sockets), and talks over two pipes: chunks
in, features out, in order. When the service's end of the pipe closes (it stopped, or it was
killed outright), the worker's next read ends and it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import multiprocessing
import os
import pickle
import signal
import struct
from collections import deque
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import BinaryIO, cast

from services.enrichment.index import Features, Shingler, features_of
from shared.events import InvalidEvent, decode_article

FoundFeatures = list[Features | None]
_HEADER = struct.Struct("!Q")  # each message: its length, then the pickled value
# A pipe holds 64 KiB by default, less than one chunk (~230 KB in, ~90 KB out): then a worker
# waits for the service's event loop to pass each piece on, and that loop is busy inserting the
# chunk before. Pipes this large (Linux's default limit) hold the chunks in flight.
PIPE_BYTES = 1 << 20
STOP_WITHIN_S = 5.0


class FeatureWorkers:
    """`processes` worker processes computing story features, started once; chunks go to them
    in turn.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("feature workers need at least one process")
        self.processes = processes
        self._workers: list[_Worker] = []
        self._turn = 0

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for n in range(self.processes):
            self._workers.append(await _Worker.start(context, f"newsflow-feature-worker-{n}"))
        # Each answers once it has imported everything: one that cannot start fails start-up.
        await asyncio.gather(*(worker.features([]) for worker in self._workers))

    async def stop(self) -> None:
        workers, self._workers = self._workers, []
        await asyncio.gather(*(worker.stop() for worker in workers))

    async def features(self, values: list[bytes | None]) -> FoundFeatures:
        """Each value's features, in order; None for a withdrawal or a value that is no Article."""
        if not self._workers:
            raise RuntimeError("feature workers not started")
        worker = self._workers[self._turn % len(self._workers)]
        self._turn += 1
        return await worker.features(values)


@dataclass
class _Worker:
    process: SpawnProcess
    requests: asyncio.WriteTransport
    answers: _Answers

    @classmethod
    async def start(cls, context: SpawnContext, name: str) -> _Worker:
        loop = asyncio.get_running_loop()
        their_requests, our_requests = context.Pipe(duplex=False)
        our_answers, their_answers = context.Pipe(duplex=False)
        process = context.Process(
            target=serve, args=(their_requests, their_answers), name=name, daemon=True
        )
        process.start()
        # Only the worker holds its ends now: each side sees the other's end close.
        their_requests.close()
        their_answers.close()
        for pipe in (our_requests, our_answers):
            _enlarge(pipe)
        answers = _Answers()
        await loop.connect_read_pipe(lambda: answers, _file(our_answers, "rb"))
        requests, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, _file(our_requests, "wb"))
        return cls(process, requests, answers)

    def features(self, values: list[bytes | None]) -> asyncio.Future[FoundFeatures]:
        answer: asyncio.Future[FoundFeatures] = asyncio.get_running_loop().create_future()
        if self.answers.gone is not None:
            answer.set_exception(self.answers.gone)
            return answer
        self.answers.awaited.append(answer)
        message = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
        # Not awaited: the table bounds how many chunks are in flight, hence this buffer.
        self.requests.write(_HEADER.pack(len(message)) + message)
        return answer

    async def stop(self) -> None:
        self.requests.close()  # the worker reads the end of its input and exits
        await asyncio.to_thread(self.process.join, STOP_WITHIN_S)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join)
        self.answers.close()


class _Answers(asyncio.Protocol):
    """The service's side of a worker's answers: each message resolves the oldest request."""

    def __init__(self) -> None:
        self.awaited: deque[asyncio.Future[FoundFeatures]] = deque()
        self.gone: Exception | None = None
        self._buffer = bytearray()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + size
            if len(self._buffer) < end:
                return
            found = pickle.loads(memoryview(self._buffer)[_HEADER.size : end])  # noqa: S301 (ours)
            del self._buffer[:end]
            answer = self.awaited.popleft()
            if not answer.cancelled():
                answer.set_result(found)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = RuntimeError("a feature worker exited")
        while self.awaited:
            answer = self.awaited.popleft()
            if not answer.done():
                answer.set_exception(self.gone)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _enlarge(pipe: Connection) -> None:
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is not None:
        with contextlib.suppress(OSError):  # above the system's limit: the default size
            fcntl.fcntl(pipe.fileno(), set_size, PIPE_BYTES)


def _file(connection: Connection, mode: str, buffering: int = 0) -> BinaryIO:
    """The connection's pipe as a file of its own (the connection is closed)."""
    fd = os.dup(connection.fileno())
    connection.close()
    return cast(BinaryIO, open(fd, mode, buffering=buffering))


# --- in the worker process ----------------------------------------------------------------------


def serve(requests: Connection, answers: Connection) -> None:
    """A worker's life: read a chunk of values, answer with their features, until the input ends."""
    # Ctrl-C reaches the whole process group: the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Buffered: a read or write of n bytes is all n bytes (or the end of the input).
    with _file(requests, "rb", -1) as incoming, _file(answers, "wb", -1) as outgoing:
        while len(header := incoming.read(_HEADER.size)) == _HEADER.size:
            (size,) = _HEADER.unpack(header)
            message = incoming.read(size)
            if len(message) < size:
                return  # the service died while writing
            values = pickle.loads(message)  # noqa: S301 (from the service that started it)
            message = pickle.dumps(features_of_values(values), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                outgoing.write(_HEADER.pack(len(message)) + message)
                outgoing.flush()
            except BrokenPipeError:
                return  # the service is gone


def features_of_values(values: list[bytes | None]) -> FoundFeatures:
    """Decode each value and compute its features, as `StoryIndex.add` would."""
    shingler = _shingler()
    found: FoundFeatures = []
    for value in values:
        try:
            article = decode_article(value)
        except InvalidEvent:
            found.append(None)  # the service skips it (and its consumer group parks it)
            continue
        found.append(None if article.is_withdrawn else features_of(article, shingler))
    return found


@cache
def _shingler() -> Shingler:
    return Shingler()
