"""The story table's reading in chunks: whichever chunk's features come back first, every record is
observed in the order it was fetched; and the features a worker computes are the ones the index
would have computed itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from bench.enrichment import Newsroom
from services.enrichment.adapters import (
    KafkaStoryTable,
    KnownEnds,
    ReadTarget,
    ahead_in_time,
    read_in_order,
)
from services.enrichment.index import Features, Shingler, StoryIndex, features_of
from services.enrichment.workers import FeatureWorkers, features_of_values
from shared.events import EventMeta, EventType, encode
from shared.kafka import IncomingRecord

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


async def test_chunks_are_observed_in_fetch_order_whichever_extraction_ends_first() -> None:
    batches = [list(range(150)), [], list(range(150, 170)), list(range(170, 400))]
    extractions: list[tuple[list[int], asyncio.Future[list[int]]]] = []
    observed: list[int] = []

    async def fetch(wait: bool) -> list[int]:
        # It waits for records only when nothing fetched is still on its way to the index.
        assert not wait or sum(len(c) for c, _ in extractions) == len(observed)
        await asyncio.sleep(0)
        return batches.pop(0) if batches else []

    def extract(chunk: list[int]) -> asyncio.Future[list[int]]:
        extraction: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        extractions.append((chunk, extraction))
        return extraction

    async def observe(chunk: list[int], found: list[int]) -> None:
        assert found == [n * 10 for n in chunk]
        observed.extend(chunk)

    reader = asyncio.create_task(read_in_order(fetch, extract, observe, chunk_size=64, in_flight=3))
    try:
        while True:
            for _ in range(10):  # the reader hands out what it can before anything finishes
                await asyncio.sleep(0)
            if len(observed) == 400:
                break
            running = [(chunk, e) for chunk, e in extractions if not e.done()]
            assert 1 <= len(running) <= 3
            chunk, newest = running[-1]  # the last handed out finishes first
            newest.set_result([n * 10 for n in chunk])
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    assert observed == list(range(400))
    assert all(1 <= len(chunk) <= 64 for chunk, _ in extractions)
    # A fetched batch is cut into chunks, never merged with the next one.
    assert [len(chunk) for chunk, _ in extractions] == [64, 64, 22, 20, 64, 64, 64, 38]


def test_a_worker_computes_the_features_the_index_would_and_none_for_what_it_skips() -> None:
    newsroom = Newsroom(events=200)
    stories = [newsroom.story(n, T0 + timedelta(minutes=n)) for n in range(40)]
    withdrawn = stories[3].model_copy(update={"version": 2, "pubstatus": "canceled"})
    values: list[bytes | None] = [encode(s) for s in stories]
    values += [encode(withdrawn), b"\xff\xfe", b'{"uri": "urn:p:2"}', None]

    found = features_of_values(values)

    shingler = Shingler()
    for story, features in zip(stories, found, strict=False):
        assert features is not None
        assert same_features(features, features_of(story, shingler))
    assert found[len(stories) :] == [None, None, None, None]


def same_features(a: Features, b: Features) -> bool:
    return all(
        np.array_equal(getattr(a, f.name), getattr(b, f.name))
        if f.name == "signature"
        else getattr(a, f.name) == getattr(b, f.name)
        for f in fields(Features)
    )


async def test_features_from_a_worker_come_numbered_as_the_index_numbers_terms() -> None:
    # The worker numbers terms itself and sends ids; the service turns them into the index's ids
    # (numbering the new ones), chunk after chunk, so the index never looks a term up by name.
    newsroom = Newsroom(events=50)
    stories = [newsroom.story(n, T0 + timedelta(minutes=n)) for n in range(60)]
    chunks: list[list[bytes | None]] = [
        [encode(s) for s in stories[:30]],
        [b"not json", *(encode(s) for s in stories[30:]), None],
    ]
    by_worker = StoryIndex()
    by_worker.term_ids(["numbered", "before", "the", "worker", "started"], create=True)
    by_name = StoryIndex()
    shingler = Shingler()
    workers = FeatureWorkers(1, by_worker)
    await workers.start()
    try:
        found = [await workers.features(chunk) for chunk in chunks]
    finally:
        await workers.stop()

    assert found[1][0] is None and found[1][-1] is None
    sent = [f for f in [*found[0], *found[1]] if f is not None]
    assert len(sent) == len(stories)
    for story, features in zip(stories, sent, strict=True):
        expected = features_of(story, shingler)
        assert same_features(features, expected)
        assert list(features.term_counts.items()) == list(expected.term_counts.items())
        ids, _ = by_worker.terms_of(features, create=False)
        assert ids.tolist() == by_worker.term_ids(expected.term_counts, create=False).tolist()
        by_worker.add(story, features)
        by_name.add(story, expected)
    for story in stories:
        assert by_worker.neighbours(by_worker.features(story), 5, 0.0) == by_name.neighbours(
            by_name.features(story), 5, 0.0
        )


def incoming(partition: int, offset: int, timestamp: int) -> IncomingRecord:
    meta = EventMeta.new(EventType.PUBLISHED, "urn:test")
    return IncomingRecord(
        "articles.ingested.v1", partition, offset, b"k", b"{}", meta.to_headers(), meta, timestamp
    )


def test_a_batch_waits_for_what_came_before_it_not_for_the_burst_behind_it() -> None:
    # Partitions 0 and 1 each hold a burst of 1,000 records (timestamps 1,000 ms apart from
    # 0); the batch is partition 0's first three records.
    ends = {0: 1000, 1: 1000, 2: 0}
    target = ReadTarget.of([incoming(0, 0, 0), incoming(0, 1, 1000), incoming(0, 2, 2000)], ends)

    # Its own records must be read, even when every other partition is far ahead.
    assert not target.met_by({0: 2, 1: 900}, {0: 1000, 1: 899_000})
    # Both partitions are read past the batch's newest (2,000): what came before it is read.
    assert target.met_by({0: 4, 1: 3}, {0: 3000, 1: 2001})
    # A record with the batch's newest timestamp may still have a twin unread behind it.
    assert not target.met_by({0: 4, 1: 3}, {0: 3000, 1: 2000})
    assert not target.met_by({0: 3, 1: 3}, {0: 2000, 1: 2001})
    # A partition read to its end as of the batch needs nothing newer (partition 2 is empty).
    quiet = ReadTarget.of([incoming(0, 0, 5000)], {0: 1, 1: 40})
    assert quiet.met_by({0: 1, 1: 40}, {0: 5000, 1: 10})
    assert not quiet.met_by({0: 1, 1: 39}, {0: 5000, 1: 10})
    # A partition the end offsets did not list yet still needs the batch's records there.
    assert not ReadTarget.of([incoming(7, 4, 0)], ends).met_by(
        {0: 1000, 1: 1000, 7: 4}, {0: 1, 1: 1, 7: 0}
    )


def test_end_offsets_answer_for_the_records_fetched_before_the_lookup_began() -> None:
    # Looked up once the table had fetched partition 0 up to offset 10 and partition 1 to 4.
    known = KnownEnds(covers={0: 10, 1: 4}, ends={0: 12, 1: 4, 2: 0})

    assert known.cover({0: 10})  # records at offsets 0-9: fetched before the lookup
    assert known.cover({0: 3, 1: 4})
    assert not known.cover({0: 11})  # fetched after it: a later lookup answers for it
    assert not known.cover({2: 1})  # nothing of partition 2 was fetched before it
    assert KnownEnds({}, {}).cover({})


class _PolledConsumer:
    """What the table reads of its consumer's last fetch responses, per partition (stamped, as
    aiokafka does, with the wall clock: `clock_ms`)."""

    def __init__(self) -> None:
        self.polled: dict[TopicPartition, int] = {}
        self.high: dict[TopicPartition, int] = {}
        self.clock_ms = 1_000_000

    def respond(self, highwaters: dict[int, int]) -> None:
        self.clock_ms += 1
        for partition, high in highwaters.items():
            tp = TopicPartition("in", partition)
            self.polled[tp], self.high[tp] = self.clock_ms, high

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.polled.get(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp)


async def _table_on(consumer: Any) -> KafkaStoryTable:
    table = KafkaStoryTable("127.0.0.1:1", "in", lambda article, features: None)
    await table.stop()  # its own consumer, never started: the fake answers instead
    table._consumer = consumer
    table._partitions = [TopicPartition("in", p) for p in (0, 1)]
    table._highwater_wait_s = 0.2
    return table


async def test_end_offsets_come_from_the_fetch_responses_after_the_records_were_fetched() -> None:
    consumer = _PolledConsumer()
    table = await _table_on(consumer)
    consumer.respond({0: 5, 1: 3})  # a response from before: it does not answer
    waiting = asyncio.create_task(table._highwaters_after())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    consumer.respond({0: 9, 1: 4})  # the next responses: every partition's high watermark
    assert await asyncio.wait_for(waiting, 1) == {0: 9, 1: 4}

    # The wall clock stepped back: the next responses are stamped earlier, and still answer.
    waiting = asyncio.create_task(table._highwaters_after())
    await asyncio.sleep(0.01)
    consumer.clock_ms -= 60_000
    consumer.respond({0: 12, 1: 6})
    assert await asyncio.wait_for(waiting, 1) == {0: 12, 1: 6}


async def test_end_offsets_are_looked_up_when_a_partition_is_held_or_gives_no_new_answer() -> None:
    consumer = _PolledConsumer()
    table = await _table_on(consumer)
    consumer.respond({0: 5, 1: 3})
    waiting = asyncio.create_task(table._highwaters_after())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    consumer.respond({0: 9})  # partition 1 answers no more (its records wait unread)
    assert await waiting is None
    assert time.monotonic() - started >= 0.15  # it waited for an answer, then gave up
    table._ahead = {TopicPartition("in", 1)}  # paused to keep the partitions in step
    started = time.monotonic()
    assert await table._highwaters_after() is None
    assert time.monotonic() - started < 0.1  # no waiting at all


def test_the_table_pauses_partitions_fetched_ahead_in_time_of_one_still_behind() -> None:
    # partition: (next offset to fetch, newest timestamp fetched, end offset)
    fetched: dict[int, tuple[int, int, int | None]] = {
        0: (900, 5_000, 2_000),  # far ahead in time
        1: (300, 1_000, 2_000),  # the slowest with records left: never paused
        2: (300, 1_000, 2_000),  # level with it
        3: (50, 9_000, 50),  # ahead, and nothing left to fetch
        4: (10, 200, 10),  # behind but nothing left to fetch: holds no one back
    }
    assert ahead_in_time(fetched) == {0, 3}
    # Once the slowest catches up, nothing is paused.
    fetched[1] = fetched[2] = (900, 9_000, 2_000)
    fetched[0] = (1_000, 9_000, 2_000)
    assert ahead_in_time(fetched) == set()
    # A partition not fetched yet (newest -1, end unknown) holds the others back until it is.
    assert ahead_in_time({0: (0, -1, None), 1: (64, 300, None)}) == {1}
    # When every partition is read to its end, none is paused.
    assert ahead_in_time({0: (5, 900, 5), 1: (7, 100, 7)}) == set()


async def test_a_stream_is_busy_when_its_fetches_come_close_or_many_records_came_of_late() -> None:
    table = KafkaStoryTable(
        "127.0.0.1:1", "in", lambda article, features: None, fetch_max_wait_ms=10,
        fetch_interval_ms=15,
    )  # fmt: skip
    await table.stop()
    busy = []
    at = 100.0
    for records, gap_s in [(1, 1.0), (1, 0.005), (1, 0.033), (1, 0.033), (1, 0.033)]:
        at += gap_s
        table._note_records_fetched(records, at)
        busy.append(table._busy)
    # 30 stories/s: one record a fetch ~33 ms apart is quiet (its end offsets looked up at once).
    assert busy == [False, True, False, False, False]
    busy = []
    for records, gap_s in [(12, 0.016), (14, 0.045), (11, 0.030), (3, 0.300)]:
        at += gap_s
        table._note_records_fetched(records, at)
        busy.append(table._busy)
    # 800/s: a dozen records a fetch, even 30-45 ms apart (the loop late to fetch), is busy;
    # a few records after a long pause are not.
    assert busy == [True, True, True, False]
