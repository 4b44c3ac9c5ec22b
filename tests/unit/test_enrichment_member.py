"""The enrichment group member takes its records from the story table while the table keeps them,
and fetches them itself while it does not: every record from the committed offset on is handed
out once, in order, whichever source it comes from; a rewind hands records out again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from services.enrichment.adapters import KafkaStoryTable, TableFedMember
from shared.events import Article, EventMeta, EventType, InvalidEvent, encode
from shared.kafka import IncomingRecord
from tests.factories import article_payload

pytestmark = pytest.mark.unit

TOPIC = "articles.ingested.v1"
P0 = TopicPartition(TOPIC, 0)
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
META = EventMeta.new(EventType.PUBLISHED, "urn:test")


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    article = Article.model_validate(
        article_payload(uri=f"urn:test:{offset}", versioncreated=T0 + timedelta(minutes=offset))
    )
    meta = EventMeta.new(EventType.PUBLISHED, "urn:test")
    return ConsumerRecord(
        TOPIC, 0, offset, offset, 0, article.uri.encode(), encode(article), None, 0, 0,
        tuple(meta.to_headers()),
    )  # fmt: skip


class GroupConsumer:
    """The group member's own consumer: it fetches from `log` at its position when resumed."""

    def __init__(self, log: list[ConsumerRecord[bytes, bytes]], committed: int) -> None:
        self.log = log
        self.committed = committed
        self.assigned = {P0}
        self.paused: set[TopicPartition] = set()
        self.at: dict[TopicPartition, int] = {}
        self.per_fetch = 8
        self.polls = 0

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def position(self, partition: TopicPartition) -> int:
        return self.at.get(partition, self.committed)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.at[partition] = offset

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.polls += 1
        found = {}
        for partition in partitions:
            if partition in self.paused:
                continue
            start = self.at.get(partition, self.committed)
            taken = [r for r in self.log if r.offset >= start][: self.per_fetch]
            if taken:
                found[partition] = taken
                self.at[partition] = taken[-1].offset + 1
        return found


async def table_keeping(kept: int, *offsets: range) -> KafkaStoryTable:
    table = KafkaStoryTable("127.0.0.1:1", TOPIC, lambda *_: None, recent_per_partition=kept)
    await table.stop()  # its own consumer is not needed here: records are handed to it
    for span in offsets:
        await observe(table, span)
    return table


async def observe(table: KafkaStoryTable, offsets: range) -> None:
    chunk = [record(offset) for offset in offsets]
    await table._observe_chunk(chunk, [None] * len(chunk))


async def take(member: TableFedMember, times: int = 10) -> list[int]:
    handed: list[int] = []
    for _ in range(times):
        for messages in (await member.getmany(timeout_ms=1, max_records=500)).values():
            handed += [m.offset for m in messages]
    return handed


def member_of(table: KafkaStoryTable, consumer: GroupConsumer) -> TableFedMember:
    member = TableFedMember(consumer, table, TOPIC)  # type: ignore[arg-type]
    member._reassigned = True  # as after `on_partitions_assigned`
    return member


async def test_a_member_behind_what_the_table_keeps_fetches_up_to_it_then_follows_the_table() -> (
    None
):
    table = await table_keeping(5, range(20))  # keeps 15..19
    consumer = GroupConsumer([record(o) for o in range(40)], committed=0)
    member = member_of(table, consumer)

    handed = await take(member)
    assert handed == list(range(20))  # 0..15 fetched (8 a fetch), then 16..19 from the table
    assert (member.fetched, member.from_table) == (16, 4)
    assert P0 in consumer.paused  # no longer fetched by the member

    await observe(table, range(20, 23))
    assert await take(member) == [20, 21, 22]
    assert member.from_table == 7
    assert await member.position(P0) == 23

    # Following the table, the member still polls its consumer: aiokafka takes a consumer that
    # goes `max_poll_interval_ms` without a poll out of the group.
    polls = consumer.polls
    await take(member, times=3)
    assert consumer.polls >= polls + 3


async def test_a_member_that_falls_behind_while_following_fetches_the_gap_itself() -> None:
    table = await table_keeping(5, range(10))
    consumer = GroupConsumer([record(o) for o in range(40)], committed=8)
    member = member_of(table, consumer)
    assert await take(member) == [8, 9]
    assert member.fetched == 0

    await observe(table, range(10, 40))  # the table keeps only 35..39 now
    handed = await take(member)
    assert handed == list(range(10, 40))
    assert (member.fetched, member.from_table) == (30, 2)
    await observe(table, range(40, 43))
    assert await take(member) == [40, 41, 42]
    assert member.from_table == 5


async def test_a_rewind_hands_the_records_out_again_from_the_table_or_fetched() -> None:
    table = await table_keeping(5, range(20))
    consumer = GroupConsumer([record(o) for o in range(20)], committed=17)
    member = member_of(table, consumer)
    assert await take(member) == [17, 18, 19]

    member.seek(P0, 16)  # a batch failed: read again from its first record
    assert await take(member) == [16, 17, 18, 19]
    member.seek(P0, 3)  # further back than the table keeps
    assert await take(member) == list(range(3, 20))
    assert P0 in consumer.paused


async def test_a_new_assignment_starts_from_the_committed_offsets() -> None:
    table = await table_keeping(5, range(20))
    consumer = GroupConsumer([record(o) for o in range(20)], committed=18)
    member = member_of(table, consumer)
    assert await take(member) == [18, 19]

    await member.on_partitions_revoked({P0})
    assert await member.position(P0) == 18  # not yet taken on: where the group left it
    assert await take(member) == []
    consumer.committed = 16  # what the group had committed, say, before another took it over
    await member.on_partitions_assigned({P0})
    assert await take(member) == [16, 17, 18, 19]


async def test_with_nothing_kept_the_member_fetches_everything() -> None:
    table = await table_keeping(0, range(20))
    consumer = GroupConsumer([record(o) for o in range(20)], committed=0)
    member = member_of(table, consumer)
    assert await take(member) == list(range(20))
    assert member.from_table == 0


async def test_the_enricher_takes_the_article_the_table_decoded_else_decodes_the_record() -> None:
    table = await table_keeping(5, range(3))  # observed (decoded) 0..2; 3 never read
    incoming = [
        IncomingRecord(TOPIC, 0, r.offset, r.key, r.value, list(r.headers), META, r.timestamp)
        for r in (record(offset) for offset in range(4))
    ]
    assert set(table._decoded) == {(0, 0), (0, 1), (0, 2)}

    first = [table.article_of(r) for r in incoming]
    again = [table.article_of(r) for r in incoming]  # a batch read again after a rebalance

    assert [a.uri for a in first] == [a.uri for a in again] == [f"urn:test:{o}" for o in range(4)]
    assert first == again
    assert table._decoded == {}  # each decoded article is handed out once, then let go
    poison = IncomingRecord(TOPIC, 0, 9, None, b"{}", [], META, 0)
    with pytest.raises(InvalidEvent):
        table.article_of(poison)
