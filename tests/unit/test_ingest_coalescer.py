"""ingest's `Coalescer`: calls of one tick go as one batch; while calls keep coming, those within
its window go together; a quiet stream's call goes at once; a failed batch fails each call."""

from __future__ import annotations

import asyncio

import pytest

from services.ingest.adapters import Coalescer

pytestmark = pytest.mark.unit


class _Batches:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[list[int]] = []
        self.fail = fail

    async def run(self, items: list[int]) -> list[int]:
        self.sent.append(items)
        if self.fail:
            raise ConnectionError("redis away")
        return [item * 10 for item in items]


async def test_the_calls_of_one_tick_go_as_one_batch_and_each_gets_its_answer() -> None:
    batches = _Batches()
    coalescer = Coalescer(batches.run)
    assert await asyncio.gather(*(coalescer.submit(n) for n in range(5))) == [0, 10, 20, 30, 40]
    assert batches.sent == [[0, 1, 2, 3, 4]]


async def test_calls_that_keep_coming_wait_out_the_window_and_a_quiet_one_goes_at_once() -> None:
    batches = _Batches()
    coalescer = Coalescer(batches.run, window_s=0.05)
    loop = asyncio.get_running_loop()

    started = loop.time()
    assert await coalescer.submit(1) == 10  # nothing before it: at once
    assert loop.time() - started < 0.04

    started = loop.time()  # the next ones come right after that batch: a busy stream
    second = asyncio.ensure_future(coalescer.submit(2))
    await asyncio.sleep(0.01)
    third = asyncio.ensure_future(coalescer.submit(3))
    assert await asyncio.gather(second, third) == [20, 30]
    assert loop.time() - started >= 0.045  # the window, counted from the first of them
    assert batches.sent == [[1], [2, 3]]

    await asyncio.sleep(0.06)  # quiet again for longer than the window
    started = loop.time()
    assert await coalescer.submit(4) == 40
    assert loop.time() - started < 0.04
    assert batches.sent[-1] == [4]


async def test_a_failed_batch_fails_every_call_in_it() -> None:
    coalescer = Coalescer(_Batches(fail=True).run, window_s=0.01)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
