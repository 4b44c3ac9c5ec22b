"""Every service's producer puts a keyed record where the Java client (and aiokafka's own
partitioner) would: the faster murmur2 gives the same hash for every key."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from shared.kafka import KeyPartitioner, murmur2

pytestmark = pytest.mark.unit

# Apache Kafka's own vectors (clients' UtilsTest.testMurmur2), as signed 32-bit values.
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
def test_the_hash_is_the_java_clients(key: bytes, expected: int) -> None:
    signed = murmur2(key) - (1 << 32) if murmur2(key) >= 1 << 31 else murmur2(key)
    assert signed == expected


def test_the_hash_is_aiokafkas_for_keys_of_every_length() -> None:
    rng = random.Random(7)
    keys = [
        bytes(rng.getrandbits(8) for _ in range(size)) for size in range(0, 90) for _ in range(20)
    ]
    keys += [f"urn:newsflow:acme:2026-{n:06d}".encode() for n in range(500)]
    assert [murmur2(key) for key in keys] == [aiokafka_murmur2(key) for key in keys]


def test_keyed_records_go_where_the_default_partitioner_puts_them() -> None:
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    for count in (1, 3, 6, 12):
        partitions = list(range(count))
        for n in range(300):
            key = f"sub-{n}".encode()
            assert ours(key, partitions, partitions) == theirs(key, partitions, partitions)


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    ours = KeyPartitioner()
    assert {ours(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
    assert {ours(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}
