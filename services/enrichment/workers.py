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
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import BinaryIO, Protocol, cast

import numpy as np
import numpy.typing as npt

from services.enrichment.index import (
    Features,
    FloatArray,
    IntArray,
    Shingler,
    features_of,
    with_changes,
)
from shared.events import InvalidEvent, decode_article

FoundFeatures = list[Features | None]
# A chunk's features as a worker sends them: each story's features without its term counts; all
# the term ids (the worker's own numbering) and counts in one pair of arrays, story after story;
# how many terms each story has; and the terms the worker numbered for this chunk, in order.
Packed = tuple[FoundFeatures, npt.NDArray[np.int32], npt.NDArray[np.int32], list[int], list[str]]


class Numbering(Protocol):
    """The index the features are for: it numbers terms, and takes counts given as its ids."""

    def term_ids(self, terms: Iterable[str], *, create: bool) -> IntArray: ...

    def numbered(self, features: Features, ids: IntArray, counts: FloatArray) -> Features: ...


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

    def __init__(self, processes: int, numbering: Numbering) -> None:
        """Features come back with their term counts given as `numbering`'s term ids."""
        if processes < 1:
            raise ValueError("feature workers need at least one process")
        self.processes = processes
        self._numbering = numbering
        self._workers: list[_Worker] = []
        self._turn = 0

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for n in range(self.processes):
            name = f"newsflow-feature-worker-{n}"
            self._workers.append(await _Worker.start(context, name, self._numbering))
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
    async def start(cls, context: SpawnContext, name: str, numbering: Numbering) -> _Worker:
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
        answers = _Answers(numbering)
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

    def __init__(self, numbering: Numbering) -> None:
        self.awaited: deque[asyncio.Future[FoundFeatures]] = deque()
        self._numbering = numbering
        # The index's id of each term the worker numbered, by the worker's id (the first
        # `_numbered` entries).
        self._ids: IntArray = np.zeros(1024, dtype=np.int64)
        self._numbered = 0
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
            packed = pickle.loads(memoryview(self._buffer)[_HEADER.size : end])  # noqa: S301 (ours)
            del self._buffer[:end]
            found = self._unpack(packed)
            answer = self.awaited.popleft()
            if not answer.cancelled():
                answer.set_result(found)

    def _unpack(self, packed: Packed) -> FoundFeatures:
        """The features with their term counts given as the index's ids. Every answer is
        unpacked, also one no longer awaited: the worker's numbering goes on from it.
        """
        found, local_ids, local_counts, sizes, new_terms = packed
        if new_terms:
            numbered = self._numbering.term_ids(new_terms, create=True)
            total = self._numbered + len(numbered)
            if total > len(self._ids):
                self._ids = np.resize(self._ids, max(total, 2 * len(self._ids)))
            self._ids[self._numbered : total] = numbered
            self._numbered = total
        ids = self._ids[local_ids]
        counts = local_counts.astype(np.float64)
        unpacked: FoundFeatures = []
        at = 0
        for features, size in zip(found, sizes, strict=True):
            if features is None:
                unpacked.append(None)
                continue
            story = slice(at, at + size)
            unpacked.append(self._numbering.numbered(features, ids[story], counts[story]))
            at += size
        return unpacked

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
    numbering: dict[str, int] = {}
    # Buffered: a read or write of n bytes is all n bytes (or the end of the input).
    with _file(requests, "rb", -1) as incoming, _file(answers, "wb", -1) as outgoing:
        while len(header := incoming.read(_HEADER.size)) == _HEADER.size:
            (size,) = _HEADER.unpack(header)
            message = incoming.read(size)
            if len(message) < size:
                return  # the service died while writing
            values = pickle.loads(message)  # noqa: S301 (from the service that started it)
            packed = pack(features_of_values(values), numbering)
            message = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
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


def pack(found: FoundFeatures, numbering: dict[str, int]) -> Packed:
    """The features as a worker sends them (`Packed`), its terms numbered in `numbering`, which
    goes on from one chunk to the next (the service keeps the same numbering from the answers).
    """
    new_terms: list[str] = []
    ids: list[int] = []
    counts: list[int] = []
    sizes: list[int] = []
    bare: FoundFeatures = []
    for features in found:
        if features is None:
            bare.append(None)
            sizes.append(0)
            continue
        term_counts = features.term_counts
        for term in term_counts:
            term_id = numbering.get(term)
            if term_id is None:
                term_id = numbering[term] = len(numbering)
                new_terms.append(term)
            ids.append(term_id)
        counts.extend(term_counts.values())
        sizes.append(len(term_counts))
        bare.append(with_changes(features, term_counts={}))
    return (
        bare,
        np.array(ids, dtype=np.int32),
        np.array(counts, dtype=np.int32),
        sizes,
        new_terms,
    )


@cache
def _shingler() -> Shingler:
    return Shingler()
