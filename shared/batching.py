"""Calls made close together, sent as one batch call: one round trip for many callers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Gathers the calls made during one event-loop tick into one batch call (a pipeline); while
    calls keep coming (one within `window_s` of the last batch), those made within `window_s`.

    Under load, dozens of requests claim ledger entries in the same tick: one round trip and one
    pool checkout serve them all. A paced stream brings one request a tick: at 1,000 a second
    each claim was a round trip of its own, and every round trip wakes Redis and then this
    process again. A quiet stream's call goes at once. A caller cancelled while it waits leaves
    its item in the batch.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], window_s: float = 0.0) -> None:
        self._run = run
        self._window_s = window_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flushed_at = -1e9  # when the last batch went (the loop's clock)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            if loop.time() - self._flushed_at < self._window_s:
                loop.call_later(self._window_s, self._flush)
            else:
                loop.call_soon(self._flush)
        self._pending.append((item, future))
        return await future

    def _flush(self) -> None:
        self._flushed_at = asyncio.get_running_loop().time()
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
