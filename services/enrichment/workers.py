"""enrichment's feature workers: `features_of` for raw ingested values, in other processes.

The story table hands them chunks of record values; the service process then only inserts the
features, so tokenising, entities and MinHash run on another core. The processes are spawned,
never forked: they hold none of the service's Kafka or HTTP sockets.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import cache

from services.enrichment.index import Features, Shingler, features_of
from shared.events import InvalidEvent, decode_article

# How often a worker checks that the service that started it is still there.
ORPHAN_CHECK_S = 1.0


class FeatureWorkers:
    """A pool of `processes` worker processes computing story features, started once."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("feature workers need at least one process")
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )
        # The pool would start its processes on first use; start (and warm) them all now, so a
        # process that cannot start fails the service's start-up, not its first story.
        await asyncio.gather(*(self.features([]) for _ in range(self.processes)))

    async def stop(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
            self._pool = None

    async def features(self, values: list[bytes | None]) -> list[Features | None]:
        """Each value's features, in order; None for a withdrawal or a value that is no Article."""
        if self._pool is None:
            raise RuntimeError("feature workers not started")
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._pool, features_of_values, values)
        return [None if f is None else _with_shared_terms(f) for f in found]


def features_of_values(values: list[bytes | None]) -> list[Features | None]:
    """In a worker: decode each value and compute its features, as `StoryIndex.add` would."""
    shingler = _shingler()
    found: list[Features | None] = []
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


def _with_shared_terms(features: Features) -> Features:
    # Unpickled terms are fresh strings per story; the index keeps the recent stories' terms, and
    # one shared string per term (as the tokeniser's cache gives in process) keeps that small.
    intern = sys.intern
    counts = {intern(term): count for term, count in features.term_counts.items()}
    return replace(features, term_counts=counts)


def _start_worker(service_pid: int) -> None:
    # Ctrl-C reaches the whole process group: the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_when_orphaned, args=(service_pid,), name="orphan-check", daemon=True
    ).start()


def _exit_when_orphaned(service_pid: int) -> None:
    # A service killed outright (SIGKILL, OOM killer) cannot stop its pool, and the pool's queue
    # never reports it gone to a waiting worker: the worker notices its new parent and leaves.
    while os.getppid() == service_pid:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)
