"""The services' producer (`shared.kafka.make_producer`: partitions linger together) against
aiokafka's own per-partition linger, in the same run on one fresh embedded broker: a stream of
3 KB records keyed over 6 partitions, paced, as ingest and enrichment write theirs.

    .venv/bin/python -m bench.linger [--rates 30,300,1000] [--seconds 5] [--rounds 2]

Prints, per rate, produce requests a second, client and broker CPU a record, and the time from
`send` to the broker's ack, for both producers, and the ratios (ours / aiokafka's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.broker_growth import cpu_seconds, on_fresh_broker
from shared.kafka import make_producer
from shared.settings import NewsflowSettings


@dataclass
class Figures:
    requests_per_s: float
    client_us: float
    broker_us: float
    ack_p50_ms: float
    ack_p99_ms: float

    def line(self) -> str:
        return (
            f"{self.requests_per_s:6.0f} produce requests/s, client {self.client_us:5.0f} µs "
            f"a record, broker {self.broker_us:5.0f} µs, ack p50 {self.ack_p50_ms:5.1f} ms "
            f"p99 {self.ack_p99_ms:5.1f} ms"
        )


def produce_requests(producer: AIOKafkaProducer) -> list[int]:
    """Counts the produce requests the client sends from now on, each as the number of
    partitions it carries (the list grows as they go)."""
    sent: list[int] = []
    send = producer.client.send

    async def counting(node_id: int, request: Any, **options: Any) -> Any:
        if type(request).__name__ == "ProduceRequest":
            sent.append(sum(len(partitions) for _, partitions in request._topics))
        return await send(node_id, request, **options)

    producer.client.send = counting
    return sent


async def stream(
    producer: AIOKafkaProducer, topic: str, rate: float, seconds: float, broker_pid: int
) -> Figures:
    requests = produce_requests(producer)
    values = [os.urandom(1500).hex().encode() for _ in range(64)]  # 3 KB, made beforehand
    count = int(rate * seconds)
    acks: list[float] = []

    async def one(n: int) -> None:
        sent = time.perf_counter()
        ack = await producer.send(topic, values[n % len(values)], key=b"story-%d" % n)
        await ack
        acks.append((time.perf_counter() - sent) * 1000)

    broker_before, client_before = cpu_seconds(broker_pid), time.process_time()
    started = time.perf_counter()
    tasks = []
    for n in range(count):
        tasks.append(asyncio.create_task(one(n)))
        wait = started + (n + 1) / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    client_s = time.process_time() - client_before
    broker_s = cpu_seconds(broker_pid) - broker_before
    acks.sort()
    return Figures(
        len(requests) / elapsed,
        1e6 * client_s / count,
        1e6 * broker_s / count,
        acks[len(acks) // 2],
        acks[int(len(acks) * 0.99)],
    )


async def measure(bootstrap: str, broker_pid: int, rates: list[float], seconds: float,
                  rounds: int) -> None:  # fmt: skip
    settings = NewsflowSettings(kafka_bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    names = [f"linger-{n}" for n in range(2 * len(rates) * rounds)]
    try:
        await admin.create_topics([NewTopic(name, 6, 1) for name in names])
    finally:
        await admin.close()
    topics = iter(names)
    for rate in rates:
        for _ in range(rounds):
            figures = {}
            for name, windows in (("aiokafka", False), ("ours", True)):
                producer = make_producer(settings, windows=windows)
                await producer.start()
                try:
                    figures[name] = await stream(producer, next(topics), rate, seconds, broker_pid)
                finally:
                    await producer.stop()
                print(f"{rate:6.0f}/s {name:9} {figures[name].line()}", flush=True)
            ours, base = figures["ours"], figures["aiokafka"]
            print(
                f"{rate:6.0f}/s ratio     requests {ours.requests_per_s / base.requests_per_s:.2f}"
                f"  client CPU {ours.client_us / base.client_us:.2f}"
                f"  broker CPU {ours.broker_us / base.broker_us:.2f}"
                f"  ack p50 {ours.ack_p50_ms / base.ack_p50_ms:.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="30,300,1000", help="records a second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    on_fresh_broker(
        "newsflow-linger-",
        lambda address, pid: measure(address, pid, rates, args.seconds, args.rounds),
    )


if __name__ == "__main__":
    main()
