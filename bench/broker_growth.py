"""Does the embedded broker slow down as a topic fills? Produce -> consume latency of single 3 KB
records at 100/s, and the broker's CPU meanwhile, on a fresh Tansu; then again after each load of
small batches (one record each, as the services write them) into the same topic.

    .venv/bin/python -m bench.broker_growth [--loads 20000,20000]

Why it matters: `bench/e2e.py` ran its runs one after the other on one broker, and each ran
slower than the one before (docs/benchmarks.md); it now starts a fresh stack for each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ops.embedded import start_kafka

TOPIC = "growth"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


async def latency(bootstrap: str, records: int = 300, rate: float = 100) -> tuple[float, float]:
    """p50 and p99 (ms) from a record's send to a consumer's getmany returning it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=10
    )
    await producer.start()
    await consumer.start()
    await asyncio.sleep(1)  # the consumer has its positions
    sent: dict[bytes, float] = {}
    seen: list[float] = []

    async def read() -> None:
        while len(seen) < records:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            seen.extend(
                (now - sent[m.key]) * 1000
                for messages in batches.values()
                for m in messages
                if m.key in sent
            )

    reader = asyncio.create_task(read())
    try:
        for n in range(records):
            key = f"probe-{time.time()}-{n}".encode()
            sent[key] = time.perf_counter()
            await producer.send(TOPIC, b"x" * 3000, key=key)
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
    seen.sort()
    return seen[len(seen) // 2], seen[int(len(seen) * 0.99)]


async def fill(bootstrap: str, records: int) -> None:
    """`records` records in batches of one (a 4 KiB batch holds one 3 KB record)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=4096
    )
    await producer.start()
    try:
        acks = [await producer.send(TOPIC, b"y" * 3000, key=b"k%d" % n) for n in range(records)]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def measure(bootstrap: str, pid: int, loads: list[int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 6, 1)])
    finally:
        await admin.close()
    held = 0
    for load in [0, *loads]:
        if load:
            await fill(bootstrap, load)
            held += load
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        p50, p99 = await latency(bootstrap)
        busy = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
        print(
            f"topic holds {held:>6} small batches: produce -> consume p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms; broker CPU {100 * busy:.0f}% of a core at 100 records/s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loads", default="20000,20000", help="records added before each probe")
    args = parser.parse_args()
    loads = [int(n) for n in args.loads.split(",") if n]
    on_fresh_broker("newsflow-broker-growth-", lambda address, pid: measure(address, pid, loads))


def on_fresh_broker(prefix: str, run: Callable[[str, int], Coroutine[Any, Any, None]]) -> None:
    """Runs `run(address, pid)` against a fresh embedded broker (its log in a new temporary
    directory named `prefix...`), and stops the broker by its pid afterwards."""
    logs = Path(tempfile.mkdtemp(prefix=prefix))
    kafka = start_kafka(log_path=logs / "tansu.log")
    try:
        asyncio.run(run(kafka.address, kafka.pid))
    finally:
        kafka.stop()


if __name__ == "__main__":
    main()
