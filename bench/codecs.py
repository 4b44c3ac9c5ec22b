"""CPU per record of each Kafka compression codec on ~3 KB stories, against no compression.

    .venv/bin/python -m bench.codecs [--records 20000]

Starts the embedded broker (Tansu), produces the bench's stories with each codec (acks=all,
linger 5 ms, 256 KiB batches, as the services do) and reads them back; prints the producer's
and the consumer's CPU µs per record, the bytes of one compressed batch of 80 stories, and the
ratio of each to `none` measured in the same run. Stops the broker by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import cramjam
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.stories import stream
from ops.embedded import start_kafka

CODECS = ("none", "zstd", "lz4", "gzip")


async def measure(
    address: str, codec: str, stories: list[bytes], count: int
) -> tuple[float, float]:
    topic = f"bench-codec-{codec}"
    producer = AIOKafkaProducer(
        bootstrap_servers=address,
        acks="all",
        linger_ms=5,
        max_batch_size=262_144,
        compression_type=None if codec == "none" else codec,
    )
    await producer.start()
    started = time.process_time()
    try:
        acks = [await producer.send(topic, stories[i % len(stories)]) for i in range(count)]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    produce_us = (time.process_time() - started) * 1e6 / count
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=address, auto_offset_reset="earliest", fetch_max_wait_ms=20
    )
    await consumer.start()
    started = time.process_time()
    try:
        read = 0
        while read < count:
            batches = await consumer.getmany(timeout_ms=500)
            read += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    return produce_us, (time.process_time() - started) * 1e6 / count


def batch_size(codec: str, batch: bytes) -> int:
    if codec == "none":
        return len(batch)
    if codec == "gzip":
        return len(cramjam.gzip.compress(batch))
    return len(bytes(getattr(cramjam, codec).compress(batch)))


async def run(records: int) -> None:
    stories = [item.body for item in stream(2000, "codecs") if item.body]
    broker = start_kafka()
    try:
        figures = {c: await measure(broker.address, c, stories, records) for c in CODECS}
    finally:
        broker.stop()
    batch = b"".join(stories[:80])
    base_produce, base_consume = figures["none"]
    print(f"{records} records of ~{sum(map(len, stories)) // len(stories)} bytes each")
    for codec, (produce, consume) in figures.items():
        print(
            f"{codec:5} produce {produce:6.1f} µs/record ({produce / base_produce:4.2f}x none)  "
            f"consume {consume:5.1f} µs/record ({consume / base_consume:4.2f}x none)  "
            f"80 stories -> {batch_size(codec, batch):,} bytes"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    asyncio.run(run(parser.parse_args().records))


if __name__ == "__main__":
    main()
