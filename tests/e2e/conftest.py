"""The three real services as processes on the session's broker and Redis, with their own prefix."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.devrun import wait_ready
from ops.embedded import ChildProcess, free_port, spawn
from services.delivery.adapters import SecretSealer
from shared.events import Topics
from shared.kafka import ensure_topics
from tests.receiver import WebhookReceiver


@dataclass(frozen=True)
class RunningStack:
    ingest: str
    delivery: str
    enrichment: str
    api_key: str
    admin_token: str
    topics: Topics
    kafka: str
    redis_url: str
    pids: dict[str, int]  # by service name


@pytest.fixture(scope="session")
def stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.all()))
    logs: Path = tmp_path_factory.mktemp("logs")
    ports = {name: free_port() for name in ("ingest", "enrichment", "delivery")}
    env = {
        **os.environ,
        "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "NEWSFLOW_REDIS_URL": redis_url,
        "NEWSFLOW_TOPIC_PREFIX": prefix,
        "NEWSFLOW_REDIS_KEY_PREFIX": prefix,
        "NEWSFLOW_INGEST_API_KEYS": "e2e-ingest-key",
        "NEWSFLOW_ADMIN_TOKEN": "e2e-admin-token",
        # Webhooks in these tests are signed with secrets sealed on the subscriptions topic.
        "NEWSFLOW_DELIVERY_SECRETS_KEY": SecretSealer.new_key(),
        "NEWSFLOW_DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "NEWSFLOW_DELIVERY_RETRY_DELAYS_S": "[0, 0.2, 0.5]",
        "NEWSFLOW_LOG_FORMAT": "json",
        **{f"NEWSFLOW_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    children: list[ChildProcess] = []
    try:
        for name, port in ports.items():
            children.append(
                spawn(name, [sys.executable, "-m", f"services.{name}"], f"http://127.0.0.1:{port}",
                      logs / f"{name}.log", env)
            )  # fmt: skip
        for child in children:
            wait_ready(child.name, f"{child.address}/readyz", child)
        yield RunningStack(
            ingest=children[0].address,
            enrichment=children[1].address,
            delivery=children[2].address,
            api_key="e2e-ingest-key",
            admin_token="e2e-admin-token",
            topics=topics,
            kafka=kafka_bootstrap,
            redis_url=redis_url,
            pids={child.name: child.process.pid for child in children},
        )
    finally:
        for child in children:
            child.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()
