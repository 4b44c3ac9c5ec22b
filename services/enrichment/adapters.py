"""enrichment's adapters: the global story table every instance reads the whole ingested topic into,
and the instance's member of the consumer group, which takes its records from that table.

Each instance consumes every partition of `articles.ingested.v1` with its own group-less consumer
and feeds each version to its `StoryEnricher`, so every instance's index holds every story,
whichever partitions the consumer group gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from services.enrichment.index import Features
from shared.events import Article, EventMeta, InvalidEvent, decode_article
from shared.kafka import FetchSpacing, IncomingRecord
from shared.logging import get_logger

log = get_logger(__name__)
YIELD_EVERY_S = 0.005
# Articles the story table decoded, kept until the group member's enricher takes them (it
# usually does within milliseconds; those of partitions another instance enriches age out).
DECODED_KEPT = 2048

Record = TypeVar("Record")
Found = TypeVar("Found")
IngestedRecord: TypeAlias = ConsumerRecord[bytes, bytes]
# Features of raw record values, in order (None: none needed, or none to be had).
FeatureSource = Callable[[list[bytes | None]], Awaitable[list[Features | None]]]


class StoryFeed(Protocol):
    """Where the enricher's state comes from; enrichment waits until it has read far enough."""

    @property
    def rebuilt(self) -> bool: ...

    def each_once_read(
        self, records: Sequence[IncomingRecord]
    ) -> AsyncIterator[IncomingRecord]: ...

    def article_of(self, record: IncomingRecord) -> Article:
        """The record's article; raises `InvalidEvent`."""
        ...


def offsets_after(records: Sequence[IncomingRecord]) -> dict[int, int]:
    """Per partition, the offset after the last of the records there."""
    after: dict[int, int] = {}
    for record in records:
        after[record.partition] = max(after.get(record.partition, 0), record.offset + 1)
    return after


@dataclass(frozen=True)
class ReadTarget:
    """How far the story table must have read before records are enriched.

    In each partition: past the records' own, and past what came before them: the partition's
    last record as of when they arrived, or a record there newer than the newest of them (by
    Kafka timestamp; a partition's timestamps rise with its offsets while its producers' clocks
    agree). So a story waits only for what came before it, not for a burst behind it: the table
    analyses the next stories while this one is enriched.
    """

    ends: Mapping[int, int]  # partition -> its end offset when the records arrived
    own: Mapping[int, int]  # partition -> the offset after the last of the records there
    newest: int  # the records' newest Kafka timestamp, in ms

    @classmethod
    def of(cls, records: Sequence[IncomingRecord], ends: Mapping[int, int]) -> ReadTarget:
        newest = max((record.timestamp for record in records), default=-1)
        return cls(ends, offsets_after(records), newest)

    def met_by(self, read: Mapping[int, int], newest_read: Mapping[int, int]) -> bool:
        """`read`: partition -> the next offset to read; `newest_read`: partition -> the
        timestamp of the last record read there."""
        for partition in self.ends.keys() | self.own.keys():
            offset = read.get(partition, 0)
            if offset < self.own.get(partition, 0):
                return False
            past_end = offset >= self.ends.get(partition, 0)
            if not past_end and newest_read.get(partition, -1) <= self.newest:
                return False
        return True


@dataclass(frozen=True)
class KnownEnds:
    """Partition end offsets, looked up once the table had fetched each partition up to
    `covers` (the offset after its last record fetched then)."""

    covers: Mapping[int, int]
    ends: Mapping[int, int]

    def cover(self, own: Mapping[int, int]) -> bool:
        """Looked up after the records up to these offsets (partition -> offset) were fetched."""
        return all(self.covers.get(partition, 0) >= offset for partition, offset in own.items())


# How often the end-offsets tracker looks for fresh high watermarks (a fetch cycle is ~1-5 ms).
HIGHWATER_POLL_S = 0.001
# A stream is busy while the records fetched over about the last `BUSY_WINDOW_S` (a decayed
# count) number `BUSY_RECORDS` or more: ~100 stories a second. At 30/s the count is ~3.
BUSY_WINDOW_S = 0.1
BUSY_RECORDS = 10
# How long a busy table waits for the next fetch responses' high watermarks before it looks the
# end offsets up: the next fetch comes once the loop gets to it (a chunk being observed or
# enriched first), and on the embedded broker a lookup under load took 30-60 ms itself.
BUSY_HIGHWATER_WAIT_S = 0.1


class KafkaStoryTable:
    """A group-less reader of every partition of the ingested topic, from the beginning."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        observe: Callable[[Article, Features | None], None],
        *,
        features: FeatureSource | None = None,
        in_flight: int = 3,
        here_while_waiting: bool = True,
        here_up_to: int = 0,
        max_records: int = 2000,
        fetch_max_wait_ms: int = 20,
        recent_per_partition: int = 0,
        fetch_interval_ms: int = 0,
    ) -> None:
        """`features` computes the records' features elsewhere (worker processes), up to
        `in_flight` chunks at once; without it `observe` computes them in this process, as it
        does for chunks of at most `here_up_to` records. With `here_while_waiting`, this process
        also computes a chunk's features itself while a caller waits for the reader (see
        `_features_of`). The table keeps its latest `recent_per_partition` records of each
        partition once observed, for the group member (`TableFedMember`).
        """
        self._topic = topic
        self._observe = observe
        self._features = features
        self._in_flight = in_flight if features is not None else 1
        self._here_while_waiting = here_while_waiting
        self._here_up_to = here_up_to
        self._max_records = max_records
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Small fetches a partition (~70 stories) keep the partitions close in time (see
            # `_keep_in_step`); the embedded broker still answers with whole producer batches.
            max_partition_fetch_bytes=256 * 1024,
            # The enricher waits for this reader before each story (`each_once_read`): a
            # partition left out of a fetch in flight is read again only once that fetch comes
            # back, up to this wait later, on every story's path (aiokafka's default, 500 ms,
            # was most of the end-to-end latency).
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self._partitions: list[TopicPartition] = []
        self._to_follow: set[int] = set()  # partitions found since start, read from the next fetch
        self._spacing = FetchSpacing(fetch_interval_ms / 1000)
        self._ahead: set[TopicPartition] = set()  # paused to keep the partitions in step
        self._read: dict[int, int] = {}  # partition -> next offset to observe
        self._fetched_to: dict[int, int] = {}  # partition -> offset after the last fetched
        # The partitions' end offsets, looked up after the table had fetched up to `covers`
        # (see `_track_ends`), and whether records were fetched since that lookup began.
        self._ends = KnownEnds({}, {})
        self._fetched_since_lookup = asyncio.Event()
        # How the end offsets were known: from the fetch responses' high watermarks, or looked
        # up (`_track_ends`).
        self.ends_from_fetches = 0
        self.ends_looked_up = 0
        # How long `_track_ends` waits for fetch responses to bring high watermarks before it
        # looks the end offsets up. Under load the next response comes within a few ms (records
        # are there); when it is quiet the broker holds a fetch for a while, and a lookup is
        # quicker then (and cheap: a quiet broker has the CPU). Plus the fetch interval while
        # the partitions rest between spaced fetches. One fetch wait, not 3 ms: at 400 stories/s
        # a lookup took 7-18 ms to come back anyway, and a fifth of the waits ran out.
        self._highwater_wait_s = max(0.003, fetch_max_wait_ms / 1000)
        # Records fetched within this of the ones before, or many records of late (`BUSY_*`):
        # busy, the next response comes soon. Otherwise the lookup goes at once (waiting, it
        # would queue behind a held fetch). Gaps alone misjudged both ends: a window of the
        # fetch interval and two waits made every story at 30 stories/s wait for the next (held)
        # fetch, +12 ms p50 end to end (docs/benchmarks.md, seventeenth session); two waits
        # alone counted 800/s as quiet whenever the loop was late to fetch, and each story then
        # waited for a lookup of 30-60 ms (eighteenth session).
        self._busy_within_s = 2 * fetch_max_wait_ms / 1000
        self._busy = False
        self._recent_records = 0.0  # records fetched, decayed over `BUSY_WINDOW_S`
        self._records_fetched_at = 0.0
        # partition -> the Kafka timestamp of the last record fetched (ahead of the observed)
        self._fetched: dict[TopicPartition, int] = {}
        self._newest: dict[int, int] = {}  # partition -> Kafka timestamp of the last observed
        self._progress = asyncio.Condition()
        self._rebuilt = asyncio.Event()
        self._rebuild_target: dict[int, int] = {}
        self._waiting = 0  # callers waiting for this reader to read further
        self._here: set[int] = set()  # chunks (by id) whose features this process computes
        self.skipped = 0
        # The latest records observed, per partition: every one from `_kept_from` on.
        self._recent_per_partition = recent_per_partition
        self._recent: dict[int, deque[IngestedRecord]] = {}
        self._kept_from: dict[int, int] = {}
        self._kept_more = asyncio.Event()
        self._decoded: dict[tuple[int, int], Article] = {}  # (partition, offset) -> article
        # Records whose features this process computed, and those the workers computed.
        self.computed_here = 0
        self.computed_by_workers = 0

    @property
    def rebuilt(self) -> bool:
        return self._rebuilt.is_set()

    async def start(self) -> None:
        await self._consumer.start()
        partitions = await self._partitions_of_topic()
        self._partitions = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._read = {tp.partition: 0 for tp in self._partitions}

    async def stop(self) -> None:
        await self._consumer.stop()

    def follow(self, partitions: Iterable[int]) -> None:
        """Read these partitions of the topic too, from the beginning, if the table does not
        yet: partitions added to the topic while it runs (the group hands them to a member, or
        a record of one is to be enriched). Without this their stories would wait forever."""
        new = set(partitions).difference(self._read)
        if new - self._to_follow:
            self._to_follow |= new
            log.info("story table will read new partitions", partitions=sorted(new))

    async def run(self) -> None:
        """Read forever; the first time the reader reaches the end, the index is rebuilt."""
        target = self._rebuild_target = await self._end_offsets()
        log.info("rebuilding the story index", topic=self._topic, records=sum(target.values()))
        if self._reached(target):
            self._rebuilt.set()
        tracker = asyncio.create_task(self._track_ends(), name="enrichment-end-offsets")
        try:
            await read_in_order(
                self._fetch, self._features_of, self._observe_chunk, in_flight=self._in_flight
            )
        finally:
            tracker.cancel()
            await asyncio.gather(tracker, return_exceptions=True)

    async def wait_rebuilt(self) -> None:
        self._waiting += 1
        try:
            await self._rebuilt.wait()
        finally:
            self._waiting -= 1

    async def each_once_read(
        self, records: Sequence[IncomingRecord]
    ) -> AsyncIterator[IncomingRecord]:
        """The records (in time order), each once this instance has read it and every story
        that came to the topic before it (see `ReadTarget`): the index then holds every story
        before it. The first can be enriched while the table still reads up to the last.
        """
        self.follow(record.partition for record in records)
        ends = await self._ends_after(records)
        for record in records:
            await self._read_to(ReadTarget.of([record], ends))
            yield record

    async def _ends_after(self, records: Sequence[IncomingRecord]) -> Mapping[int, int]:
        """End offsets looked up after this table had fetched the records: by then every story
        that came to the topic before them was in it. Under load such a lookup has already
        come back (`_track_ends`), so a batch no longer waits for one round trip of its own."""
        own = offsets_after(records)
        if not self._ends.cover(own):
            self._waiting += 1
            try:
                async with self._progress:
                    await self._progress.wait_for(lambda: self._ends.cover(own))
            finally:
                self._waiting -= 1
        return self._ends.ends

    async def _track_ends(self) -> None:
        """Learns the end offsets after each fetch of new records, one at a time: they answer
        for every record fetched before.

        From the high watermarks of the consumer's next fetch responses, when every partition's
        comes back soon (they cost nothing: every fetch response carries them) while records
        keep coming; else (quiet, a partition paused, or no answer within a fetch wait) by
        looking them up. A lookup is a round trip, and the embedded broker's costs CPU in
        proportion to the batches it holds: 2.5 ms at 6,000.
        """
        while True:
            await self._fetched_since_lookup.wait()
            self._fetched_since_lookup.clear()
            covers = dict(self._fetched_to)
            ends = await self._highwaters_after() if self._busy else None
            if ends is not None:
                self.ends_from_fetches += 1
            else:
                try:
                    ends = await self._end_offsets()
                except Exception as exc:  # the broker away: the waiting batches wait on
                    log.warning("end offsets lookup failed; trying again", error=repr(exc))
                    self._fetched_since_lookup.set()
                    await asyncio.sleep(0.5)
                    continue
                self.ends_looked_up += 1
            self._ends = KnownEnds(covers, ends)
            async with self._progress:
                self._progress.notify_all()

    async def _read_to(self, target: ReadTarget) -> None:
        if target.met_by(self._read, self._newest):
            return
        self._waiting += 1
        try:
            async with self._progress:
                await self._progress.wait_for(lambda: target.met_by(self._read, self._newest))
        finally:
            self._waiting -= 1

    async def _fetch(self, wait: bool) -> list[IngestedRecord]:
        if self._to_follow:
            await self._take_new_partitions()
        if not wait and self._spacing.resting:
            return []  # nothing is fetched between two spaced fetches
        if wait:
            await self._spacing.before_fetch(self._consumer)
        batches: dict[TopicPartition, list[IngestedRecord]] = await self._consumer.getmany(
            timeout_ms=200 if wait else 0, max_records=self._max_records
        )
        for tp, messages in batches.items():
            self._fetched[tp] = messages[-1].timestamp
            self._fetched_to[tp.partition] = messages[-1].offset + 1
        if batches:
            self._note_records_fetched(sum(map(len, batches.values())), time.monotonic())
            self._fetched_since_lookup.set()
        await self._keep_in_step()
        fetched = list(heapq.merge(*batches.values(), key=lambda m: m.timestamp))
        self._spacing.after_fetch(self._consumer, self._partitions, len(fetched))
        return fetched

    def _note_records_fetched(self, records: int, now: float) -> None:
        """Whether the stream is busy: records fetched soon after the ones before, or many of
        late (see `_busy_within_s`)."""
        since = now - self._records_fetched_at
        decay = math.exp(-since / BUSY_WINDOW_S) if since > 0 else 1.0
        self._recent_records = self._recent_records * decay + records
        self._busy = since < self._busy_within_s or self._recent_records >= BUSY_RECORDS
        self._records_fetched_at = now

    async def _take_new_partitions(self) -> None:
        """Adds the partitions to `follow`, and every other the topic has now, to the consumer's
        assignment: the index holds the stories of every partition, whichever instance enriches
        them. Assigning anew resets every partition's position and pause, so the others are put
        back where they were."""
        consumer = self._consumer
        await consumer.topics()  # fresh metadata: the partitions the topic has now
        found = await self._partitions_of_topic() | self._to_follow
        self._to_follow.clear()
        new = [TopicPartition(self._topic, p) for p in sorted(found.difference(self._read))]
        if not new:
            return
        positions = {tp: await consumer.position(tp) for tp in self._partitions}
        paused = consumer.paused()
        self._partitions = sorted([*self._partitions, *new])
        consumer.assign(self._partitions)
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        await consumer.seek_to_beginning(*new)
        consumer.pause(*paused)
        for tp in new:
            self._read[tp.partition] = 0
        log.info("story table reads new partitions", partitions=[tp.partition for tp in new])

    async def _keep_in_step(self) -> None:
        """Fetch the partitions side by side in time (see `ahead_in_time`): the broker hands
        out hundreds of one partition's records at a time, and a story waits until every
        partition is read past its time (`ReadTarget`).
        """
        # The consumer's position also steps over offsets that hold no record for us (e.g.
        # transaction markers), so a partition read to its end never looks behind.
        ahead = ahead_in_time(
            {
                tp: (
                    await self._consumer.position(tp),
                    self._fetched.get(tp, -1),
                    self._consumer.highwater(tp),
                )
                for tp in self._partitions
            }
        )
        self._ahead = ahead
        self._consumer.pause(*ahead)
        self._consumer.resume(*(tp for tp in self._partitions if tp not in ahead))

    async def _features_of(self, chunk: list[IngestedRecord]) -> list[Features | None]:
        """The chunk's features from the workers; None for each (`observe` computes them) when
        there are no workers, when the chunk is small (the steady flow: a worker's round trip
        would cost more than it saves), or when the enricher waits for this reader and this
        process has no chunk of its own yet: its core is idle then (the rebuild, or a burst to
        catch up).
        """
        if self._features is None or len(chunk) <= self._here_up_to:
            self.computed_here += len(chunk)
            return [None] * len(chunk)
        if self._here_while_waiting and self._waiting and not self._here:
            self._here.add(id(chunk))
            self.computed_here += len(chunk)
            return [None] * len(chunk)
        self.computed_by_workers += len(chunk)
        return await self._features([message.value for message in chunk])

    async def _observe_chunk(
        self, chunk: list[IngestedRecord], features: list[Features | None]
    ) -> None:
        # A record counts as read once it is observed: `each_once_read` waits for that.
        handed_on = time.perf_counter()
        for message, found in zip(chunk, features, strict=True):
            self._apply(message, found)
            self._keep(message)
            if time.perf_counter() - handed_on > YIELD_EVERY_S:
                await asyncio.sleep(0)  # computing features here takes a while: let others run
                handed_on = time.perf_counter()
        self._here.discard(id(chunk))
        async with self._progress:
            self._progress.notify_all()
        if not self._rebuilt.is_set() and self._reached(self._rebuild_target):
            self._rebuilt.set()
            log.info("story index rebuilt", observed=sum(self._read.values()))

    def _apply(self, message: IngestedRecord, features: Features | None) -> None:
        self._read[message.partition] = message.offset + 1
        self._newest[message.partition] = message.timestamp
        try:
            EventMeta.check_headers(message.headers)
            article = decode_article(message.value)
        except InvalidEvent:
            self.skipped += 1  # the consumer group parks it on the DLQ
            return
        self._observe(article, features)
        if self._recent_per_partition:
            decoded = self._decoded
            decoded[(message.partition, message.offset)] = article
            if len(decoded) > DECODED_KEPT:
                del decoded[next(iter(decoded))]  # the oldest

    def _keep(self, message: IngestedRecord) -> None:
        """Keeps an observed record (a poison one too: the group member parks it)."""
        if not self._recent_per_partition:
            return
        kept = self._recent.setdefault(message.partition, deque())
        if len(kept) >= self._recent_per_partition:
            self._kept_from[message.partition] = kept.popleft().offset + 1
        kept.append(message)
        self._kept_more.set()

    def article_of(self, record: IncomingRecord) -> Article:
        """The record's article: the one the table decoded when it read the record, where it
        still has it (decoding a 3 KB story is ~3 % of enrichment's CPU), else decoded now.
        Raises `InvalidEvent`."""
        article = self._decoded.pop((record.partition, record.offset), None)
        return article if article is not None else decode_article(record.value)

    def keeps_from(self, partition: int) -> int:
        """The table holds every record of the partition from this offset on that it has
        observed, and will hold each one it observes next (until newer ones push it out)."""
        if not self._recent_per_partition:
            return self._read.get(partition, 0)
        return self._kept_from.get(partition, 0)

    def kept_from_offset(self, partition: int, offset: int, limit: int) -> list[IngestedRecord]:
        """Up to `limit` observed records of the partition, from `offset` on, in order."""
        kept = self._recent.get(partition)
        if not kept or kept[-1].offset < offset:
            return []
        start = len(kept)
        while start > 0 and kept[start - 1].offset >= offset:
            start -= 1
        return list(itertools.islice(kept, start, start + limit))

    def expect_more(self) -> None:
        """Before looking at what is kept: `more` then waits for a record kept after this."""
        self._kept_more.clear()

    async def more(self, timeout_s: float) -> None:
        """Returns once a record is kept after `expect_more`, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kept_more.wait(), timeout_s)

    def highwater(self, partition: int) -> int | None:
        high: int | None = self._consumer.highwater(TopicPartition(self._topic, partition))
        return high

    def _reached(self, target: dict[int, int]) -> bool:
        return all(self._read.get(p, 0) >= offset for p, offset in target.items())

    async def _highwaters_after(self) -> dict[int, int] | None:
        """Every partition's high watermark from a fetch response processed from now on,
        waiting for such responses up to `_highwater_wait_s` (plus the rest between spaced
        fetches; a busy table up to `BUSY_HIGHWATER_WAIT_S`); None if some partition's does not
        come (it is paused to keep the partitions in step, or its records wait unread in the
        consumer).

        The consumer has one fetch in flight at a time, so such a response was asked for after
        every record fetched before now had come: the broker's end offsets then are past each
        of them, and past every story that came before them. A partition's response is known
        to be newer by its poll stamp having changed, not by comparing stamps with a clock: a
        wall clock stepped back cannot let an older response pass. (Two responses stamped in
        the same millisecond look like one: the wait then ends in a lookup, never in a wrong
        answer.)
        """
        consumer = self._consumer
        before = {tp: consumer.last_poll_timestamp(tp) for tp in self._partitions}
        resting = self._spacing.interval_s if self._spacing.resting else 0.0
        waits = self._highwater_wait_s + resting
        if self._busy:
            waits = max(waits, BUSY_HIGHWATER_WAIT_S)
        deadline = time.monotonic() + waits
        while not self._ahead:
            ends: dict[int, int] = {}
            for tp in self._partitions:
                polled = consumer.last_poll_timestamp(tp)
                high = consumer.highwater(tp)
                if polled is None or high is None or polled == before.get(tp):
                    break
                ends[tp.partition] = high
            else:
                return ends
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(HIGHWATER_POLL_S)
        return None

    async def _end_offsets(self) -> dict[int, int]:
        ends = await self._consumer.end_offsets(self._partitions)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def _partitions_of_topic(self) -> set[int]:
        for _ in range(100):
            partitions = self._consumer.partitions_for_topic(self._topic)
            if partitions:
                return set(partitions)
            await self._consumer.topics()  # refreshes the cluster metadata
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {self._topic} has no partitions")


Partition = TypeVar("Partition")


def ahead_in_time(fetched: Mapping[Partition, tuple[int, int, int | None]]) -> set[Partition]:
    """The partitions fetched further in time than one that still has records to fetch, from
    each partition's (next offset to fetch, newest timestamp fetched or -1, end offset or None
    when unknown). Reading pauses those until the one behind catches up; one with nothing left
    to fetch holds none back.
    """
    behind = [
        newest for next_offset, newest, end in fetched.values() if end is None or next_offset < end
    ]
    if not behind:
        return set()
    slowest = min(behind)
    return {partition for partition, (_, newest, _) in fetched.items() if newest > slowest}


async def read_in_order(
    fetch: Callable[[bool], Awaitable[list[Record]]],
    extract: Callable[[list[Record]], Awaitable[list[Found]]],
    insert: Callable[[list[Record], list[Found]], Awaitable[None]],
    *,
    chunk_size: int = 64,
    in_flight: int = 3,
) -> None:
    """Reads forever: each fetched batch is cut into chunks of at most `chunk_size` records, up
    to `in_flight` chunks are extracted at once, and every chunk is inserted with what was
    extracted from it in the order the records were fetched, whichever extraction ends first.

    `fetch(wait)` waits for records only when nothing is being extracted; otherwise it takes
    what has already arrived, so fetching, extracting and inserting overlap.
    """
    fetched: deque[list[Record]] = deque()
    extracting: deque[tuple[list[Record], asyncio.Future[list[Found]]]] = deque()
    try:
        while True:
            if not fetched:
                batch = await fetch(not extracting)
                fetched.extend(batch[i : i + chunk_size] for i in range(0, len(batch), chunk_size))
            while fetched and len(extracting) < in_flight:
                chunk = fetched.popleft()
                extracting.append((chunk, asyncio.ensure_future(extract(chunk))))
            if extracting:
                chunk, extraction = extracting[0]
                found = await extraction
                extracting.popleft()
                await insert(chunk, found)
    finally:
        for _, extraction in extracting:
            extraction.cancel()


# While some partitions are fetched by the member itself, the longest it waits for them at a time
# before it looks at the table again.
FETCH_SLICE_MS = 10


class TableFedMember(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """This instance's member of the enrichment group, taking its records from the story table.

    The group still gives each instance its partitions and keeps the committed offsets; but the
    table reads every partition anyway and keeps its latest records (`recent_per_partition`),
    so the member does not fetch them a second time: that saves a fetch cycle on every story's
    path and the CPU of reading each record twice, here and in the broker. A partition whose next
    record the table no longer keeps (a group far behind, or a new one, which starts from the
    beginning) is fetched by the member itself, as a plain consumer would, until it is back
    within what the table keeps. `consume_forever` drives it like an `AIOKafkaConsumer`.
    """

    def __init__(self, consumer: AIOKafkaConsumer, table: KafkaStoryTable, topic: str) -> None:
        """`consumer`: a group member not yet subscribed (`start` subscribes it to `topic`)."""
        self._consumer = consumer
        self._table = table
        self._topic = topic
        self._positions: dict[TopicPartition, int] = {}  # the next offset to hand out
        self._fetching: set[TopicPartition] = set()  # fetched by the member itself
        self._reassigned = False
        # Records handed out from the table, and fetched by the member itself.
        self.from_table = 0
        self.fetched = 0

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe([self._topic], listener=self)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._positions = {}
        self._fetching = set()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # Nothing is fetched until the member knows where each partition stands.
        self._consumer.pause(*assigned)
        self._reassigned = True

    def assignment(self) -> set[TopicPartition]:
        assigned: set[TopicPartition] = self._consumer.assignment()
        return assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self._consumer.commit(offsets)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._positions[partition] = offset
        self._place(partition, moved=True)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._table.highwater(partition.partition)

    async def position(self, partition: TopicPartition) -> int:
        if partition in self._positions:
            return self._positions[partition]
        # Just assigned, not yet taken on: where the group left it.
        position: int = await self._consumer.position(partition)
        return position

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[IngestedRecord]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        limit = max_records or 10_000
        while True:
            if self._reassigned:
                await self._take_assignment()
            self._table.expect_more()
            found = self._from_table(limit)
            if self._fetching:
                wait_ms = 0 if found else min(FETCH_SLICE_MS, max(timeout_ms, 0))
                fetched = await self._consumer.getmany(
                    *self._fetching, timeout_ms=wait_ms, max_records=limit
                )
                for partition, messages in fetched.items():
                    if partition in self._fetching and messages:
                        found[partition] = messages
                        self.fetched += len(messages)
                        self._positions[partition] = messages[-1].offset + 1
                        self._place(partition)
            else:
                # A poll all the same: aiokafka takes a consumer that goes
                # `max_poll_interval_ms` without one out of the group. Every partition is
                # paused, so none of its records come back (and none would be handed out).
                await self._consumer.getmany(timeout_ms=0)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            if not self._fetching:
                await self._table.more(remaining)

    async def _take_assignment(self) -> None:
        """From the committed offsets (or the beginning, for a new group) of the partitions the
        group gave this member."""
        self._reassigned = False
        positions: dict[TopicPartition, int] = {}
        try:
            for partition in self._consumer.assignment():
                positions[partition] = await self._consumer.position(partition)
        except IllegalStateError:  # given away again meanwhile: the next assignment follows
            self._reassigned = True
            return
        self._positions = positions
        self._fetching = set()
        # A partition added to the topic since the table started: the table reads it too.
        self._table.follow(tp.partition for tp in positions)
        for partition in positions:
            self._place(partition, moved=True)

    def _from_table(self, limit: int) -> dict[TopicPartition, list[IngestedRecord]]:
        found: dict[TopicPartition, list[IngestedRecord]] = {}
        for partition, offset in self._positions.items():
            if partition in self._fetching or limit <= 0:
                continue
            if offset < self._table.keeps_from(partition.partition):
                self._place(partition)  # fell behind what the table keeps: fetch it here
                continue
            kept = self._table.kept_from_offset(partition.partition, offset, limit)
            if kept:
                found[partition] = kept
                self.from_table += len(kept)
                self._positions[partition] = kept[-1].offset + 1
                limit -= len(kept)
        return found

    def _place(self, partition: TopicPartition, moved: bool = False) -> None:
        """Takes the partition from the table when the table keeps its next record, or fetches
        it (from its position) while it does not. `moved`: its position was set anew."""
        position = self._positions[partition]
        if position >= self._table.keeps_from(partition.partition):
            if partition in self._fetching or moved:
                self._fetching.discard(partition)
                self._consumer.pause(partition)
        elif partition not in self._fetching or moved:
            self._fetching.add(partition)
            self._consumer.seek(partition, position)
            self._consumer.resume(partition)
