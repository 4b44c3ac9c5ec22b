"""What the fault tests share: a stack of their own (broker, Redis, the three services as processes
that can be killed and restarted), a partner that records every webhook, a load client, and an
independent reader of the enriched topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from bench.stories import SECTIONS, article
from ops.devrun import http_json, wait_ready
from ops.embedded import ChildProcess, free_port, spawn, start_kafka, start_redis
from shared.events import Topics
from shared.kafka import ensure_topics

API_KEY = "faults-ingest-key-6f1c"
ADMIN_TOKEN = "faults-admin-token-93ad"
# Seals the subscriptions' signing secrets on their topic (made with `newsflow secrets-key`).
SECRETS_KEY = "Kg6uLroPyifynHyVTKENrfoopDjJJmyUOiqDmt8_tNM="
SERVICES = ("ingest", "enrichment", "delivery")
# `make soak` runs the suite with ten times the stories.
SCALE = int(os.environ.get("NEWSFLOW_FAULTS_SCALE", "1"))


@dataclass
class Infra:
    """The test's own broker and Redis, so it may pause, flush or restart them."""

    logs: Path
    kafka: ChildProcess
    redis: ChildProcess
    redis_port: int

    @classmethod
    def start(cls, logs: Path) -> Infra:
        kafka = start_kafka(log_path=logs / "tansu.log")
        port = free_port()
        try:
            redis = start_redis(port, log_path=logs / "redis.log")
        except Exception:
            kafka.stop()
            raise
        return cls(logs, kafka, redis, port)

    def restart_redis(self) -> None:
        """Kill -9 and start again on the same port: everything it held is gone."""
        self.redis.process.send_signal(signal.SIGKILL)
        self.redis.process.wait(10)
        self.redis = start_redis(self.redis_port, log_path=self.logs / "redis.log")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.kafka.pid, signal.SIGCONT)  # in case a test left it paused
        self.redis.stop()
        self.kafka.stop()


@dataclass
class Stack:
    """The three services as processes on `infra`, with a topic and key prefix of their own."""

    infra: Infra
    extra_env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:8]}.")
    children: dict[str, ChildProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @property
    def kafka(self) -> str:
        return self.infra.kafka.address

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "NEWSFLOW_REDIS_URL": self.infra.redis.address,
            "NEWSFLOW_TOPIC_PREFIX": self.prefix,
            "NEWSFLOW_REDIS_KEY_PREFIX": self.prefix,
            "NEWSFLOW_INGEST_API_KEYS": API_KEY,
            "NEWSFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
            "NEWSFLOW_DELIVERY_SECRETS_KEY": SECRETS_KEY,
            "NEWSFLOW_INGEST_RATE_LIMIT": "100000000",
            "NEWSFLOW_DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
            "NEWSFLOW_LOG_FORMAT": "json",
            "NEWSFLOW_ENRICHMENT_GROUP_ID": f"{self.prefix}enrichment",
            "NEWSFLOW_DELIVERY_GROUP_ID": f"{self.prefix}delivery",
            "NEWSFLOW_DELIVERY_SENDER_GROUP_ID": f"{self.prefix}delivery-sender",
            **{f"NEWSFLOW_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
            **self.extra_env,
        }

    def start(self) -> Stack:
        asyncio.run(ensure_topics(self.kafka, self.topics.all()))
        self.ports = {name: free_port() for name in SERVICES}
        for name in SERVICES:
            self._spawn(name)
        for name in SERVICES:
            self.wait_ready(name)
        return self

    def _spawn(self, name: str) -> None:
        self.children[name] = spawn(
            name,
            [sys.executable, "-m", f"services.{name}"],
            self.url(name),
            self.infra.logs / f"{name}.log",
            self.env,
        )

    def wait_ready(self, name: str, timeout: float = 90) -> None:
        child = self.children[name]
        wait_ready(name, f"{child.address}/readyz", child, timeout)

    def kill(self, name: str) -> None:
        """kill -9: no shutdown hook runs, nothing is flushed."""
        child = self.children[name]
        child.process.send_signal(signal.SIGKILL)
        child.process.wait(10)

    def restart(self, name: str) -> None:
        self._spawn(name)

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()

    def log_text(self) -> str:
        return "\n".join(
            (self.infra.logs / f"{n}.log").read_text(errors="replace")
            for n in SERVICES
            if (self.infra.logs / f"{n}.log").exists()
        )

    def subscribe(self, url: str, sections: list[str]) -> dict[str, Any]:
        status, created = http_json(
            "POST",
            f"{self.url('delivery')}/v1/subscriptions",
            {"url": url, "sections": sections},
            token=ADMIN_TOKEN,
        )
        assert status == 201, created
        return dict(created)


# --- the partner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    path: str
    webhook_id: str
    kind: str
    uri: str
    version: int
    section: str
    at: float
    answered: int


Behaviour = Callable[[str], Awaitable[int]]


async def always_ok(_: str) -> int:
    return 200


class Partner:
    """Webhook endpoints on 127.0.0.1 (one aiohttp server in a thread): records every request
    and answers what `behaviour(path)` says (a status, after sleeping if it likes)."""

    def __init__(self, behaviour: Behaviour = always_ok) -> None:
        self.behaviour = behaviour
        self.hooks: list[Hook] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = free_port()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time()
        path = request.match_info["path"]
        status = await self.behaviour(path)
        payload = json.loads(body)
        data = payload.get("data") or {}
        section = ((data.get("enrichment") or {}).get("section") or {}).get("id", "")
        hook = Hook(
            path,
            request.headers.get("webhook-id", ""),
            str(payload.get("type")),
            str(data.get("uri")),
            int(data.get("version") or 0),
            section,
            at,
            status,
        )
        with self._lock:
            self.hooks.append(hook)
        return web.Response(status=status)

    def start(self) -> Partner:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def delivered(self, path: str) -> list[Hook]:
        with self._lock:
            return [h for h in self.hooks if h.path == path and h.answered < 300]

    def wait(self, done: Callable[[], bool], within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.2)
        raise AssertionError(f"not within {within_s:.0f}s: {what}")


# --- load -------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What the newsroom was told: the accepted (uri, version)s and every answer it got."""

    accepted: dict[tuple[str, int], str] = field(default_factory=dict)  # -> CloudEvents type
    answers: dict[str, int] = field(default_factory=dict)
    accepted_at: dict[tuple[str, int], float] = field(default_factory=dict)
    created_at: list[float] = field(default_factory=list)  # when each 202 came back

    def count(self, status: str) -> int:
        return self.answers.get(status, 0)


def story(uri: str, version: int, label: str, token: int) -> dict[str, Any]:
    """A realistic 3 KB article (the benchmark's); `label` is the provider's section."""
    return article(random.Random(token), uri, label, version, token)


def stories(run: str, count: int, corrections: int = 0) -> list[dict[str, Any]]:
    """`count` new stories over every section, then `corrections` version 2s of the first ones."""
    labels = list(SECTIONS)
    out = [
        story(f"urn:newsflow:faults:{run}:{n}", 1, labels[n % len(labels)], n) for n in range(count)
    ]
    out += [
        {**out[n], "version": 2, "headline": out[n]["headline"] + " (corrected)"}
        for n in range(corrections)
    ]
    return out


async def post_stories(
    ingest: str,
    payloads: Iterable[dict[str, Any]],
    sent: Sent,
    *,
    rate: float | None = None,
    concurrency: int = 8,
    retry_for_s: float = 120,
    timeout_s: float = 60,
) -> None:
    """POSTs every payload; a refusal (5xx, no answer) is retried as a CMS would, for a while."""
    headers = {"authorization": f"Bearer {API_KEY}"}
    queue = iter(enumerate(payloads))
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def post(session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        deadline = time.monotonic() + retry_for_s
        while time.monotonic() < deadline:
            try:
                async with session.post(
                    f"{ingest}/v1/articles", json=payload, headers=headers
                ) as response:
                    body = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                sent.answers["no answer"] = sent.answers.get("no answer", 0) + 1
                await asyncio.sleep(0.5)
                continue
            sent.answers[str(status)] = sent.answers.get(str(status), 0) + 1
            if status in (200, 202):
                key = (payload["uri"], payload["version"])
                sent.accepted[key] = body["type"]
                sent.accepted_at[key] = time.time()
                if status == 202:
                    sent.created_at.append(time.time())
                return
            if status < 500:
                raise AssertionError(f"{status} {body} for {payload['uri']}")
            await asyncio.sleep(0.5)

    async def worker(session: aiohttp.ClientSession) -> None:
        for index, payload in queue:
            if rate is not None:
                await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            await post(session, payload)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


# --- reading back -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Enriched:
    uri: str
    version: int
    type: str
    section: str
    withdrawn: bool


async def read_topic(
    bootstrap: str, topic: str, quiet_s: float = 3.0, within_s: float = 60
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every record on `topic`, with plain aiokafka: read until nothing new came for `quiet_s`."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    try:
        deadline = time.monotonic() + within_s
        last_new = time.monotonic()
        while time.monotonic() - last_new < quiet_s and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                found.extend((r.key, r.value, dict(r.headers)) for r in records)
                last_new = time.monotonic()
    finally:
        await consumer.stop()
    return found


def enriched_stories(stack: Stack) -> list[Enriched]:
    out = []
    for _key, value, headers in asyncio.run(read_topic(stack.kafka, stack.topics.enriched)):
        if value is None:
            continue
        story_ = json.loads(value)
        out.append(
            Enriched(
                story_["uri"],
                story_["version"],
                headers.get("ce_type", b"").decode(),
                story_["enrichment"]["section"]["id"],
                story_.get("pubstatus") == "canceled",
            )
        )
    return out


def latest_versions(stories: list[Enriched]) -> dict[str, Enriched]:
    latest: dict[str, Enriched] = {}
    for item in stories:
        if item.uri not in latest or item.version > latest[item.uri].version:
            latest[item.uri] = item
    return latest


async def cache_views(delivery: str, uris: Iterable[str]) -> dict[str, tuple[int, int | None]]:
    """GET /v1/stories/{uri} for each: (status, version or None)."""
    out: dict[str, tuple[int, int | None]] = {}
    semaphore = asyncio.Semaphore(16)

    async def one(session: aiohttp.ClientSession, uri: str) -> None:
        async with semaphore, session.get(f"{delivery}/v1/stories/{quote(uri, safe='')}") as r:
            body = await r.json(content_type=None)
            version = body.get("version") if r.status == 200 else None
            out[uri] = (r.status, version)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, uri) for uri in uris))
    return out


def cache_mismatches(stack: Stack, latest: dict[str, Enriched]) -> list[str]:
    """Stories whose cached view differs from the last version on the enriched topic."""
    views = asyncio.run(cache_views(stack.url("delivery"), latest))
    wrong = []
    for uri, item in latest.items():
        status, version = views[uri]
        expected = (404, None) if item.withdrawn else (200, item.version)
        if (status, version) != expected:
            wrong.append(f"{uri}: cache {status} v{version}, topic v{item.version}")
    return wrong
