"""delivery as a partner and ops meet it: a real delivery process on the real broker and Redis,
real HTTP receivers on 127.0.0.1, stories put straight on `stories.enriched.v1`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from aiokafka import AIOKafkaProducer
from redis import Redis
from standardwebhooks.webhooks import Webhook

from ops.devrun import http_json, wait_ready
from ops.embedded import ChildProcess, free_port, spawn
from shared.events import Enrichment, EventMeta, EventType, SectionAssignment, Story, Topics
from shared.kafka import ensure_topics
from tests.factories import article_payload
from tests.integration.kafka_reading import read_records
from tests.receiver import Received, WebhookReceiver

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "delivery-admin-token"
SCHEMA = json.loads((ROOT / "tests/data/ninjs/ninjs-schema_2.2.json").read_text())


@dataclass
class Delivery:
    """One delivery process of our own (restartable), and where it talks."""

    env: dict[str, str]
    topics: Topics
    prefix: str
    kafka: str
    redis_url: str
    logs: Path
    port: int
    child: ChildProcess | None = None
    producer_loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.child = spawn(
            "delivery", [sys.executable, "-m", "services.delivery"], self.url,
            self.logs / "delivery.log", self.env,
        )  # fmt: skip
        wait_ready("delivery", f"{self.url}/readyz", self.child)

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye to the group."""
        assert self.child is not None
        os.kill(self.child.pid, signal.SIGKILL)
        self.child.process.wait(10)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, self.url + path, body, token=ADMIN)

    def publish(self, *stories: tuple[Story, EventType]) -> None:
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.kafka)
            await producer.start()
            try:
                for story, kind in stories:
                    meta = EventMeta.new(kind.value, "urn:test")
                    await producer.send_and_wait(
                        self.topics.enriched,
                        story.model_dump_json(exclude_none=True).encode(),
                        key=story.uri.encode(),
                        headers=meta.to_headers(),
                    )
            finally:
                await producer.stop()

        self.producer_loop.run_until_complete(send())


@pytest.fixture(scope="module")
def delivery(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Delivery]:
    prefix = f"dlv{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.all()))
    port = free_port()
    env = {
        **os.environ,
        "NEWSFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "NEWSFLOW_REDIS_URL": redis_url,
        "NEWSFLOW_TOPIC_PREFIX": prefix,
        "NEWSFLOW_REDIS_KEY_PREFIX": prefix,
        "NEWSFLOW_ADMIN_TOKEN": ADMIN,
        "NEWSFLOW_DELIVERY_PORT": str(port),
        "NEWSFLOW_DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "NEWSFLOW_DELIVERY_RETRY_DELAYS_S": "[0, 0.3, 0.6, 1.0]",
        "NEWSFLOW_DELIVERY_TIMEOUT_S": "1.5",
        "NEWSFLOW_DELIVERY_AUTO_DISABLE_AFTER_S": "3",
        "NEWSFLOW_DELIVERY_BREAKER_COOLDOWN_S": "0.5",
        "NEWSFLOW_DELIVERY_ORDER_RECHECK_S": "0.2",
        "NEWSFLOW_EMBARGO_POLL_S": "0.2",
        "NEWSFLOW_CACHE_CHECK_INTERVAL_S": "0.5",
        "NEWSFLOW_CACHE_PER_SECTION": "50",
        "NEWSFLOW_LOG_FORMAT": "json",
    }
    running = Delivery(
        env, topics, prefix, kafka_bootstrap, redis_url, tmp_path_factory.mktemp("dlv"), port
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        running.producer_loop.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def story(section: str = "world", **overrides: Any) -> Story:
    names = {"world": "International", "sport": "Sport", "business": "Business"}
    return Story.model_validate(
        {
            **article_payload(**overrides),
            "enrichment": Enrichment(
                section=SectionAssignment(
                    id=section, name=names.get(section, section), confidence=0.9, method="provider"
                )
            ).model_dump(),
        }
    )


def subscribe(delivery: Delivery, receiver: WebhookReceiver, **fields: Any) -> dict[str, Any]:
    status, created = delivery.api(
        "POST", "/v1/subscriptions", {"url": f"{receiver.url}/hooks", **fields}
    )
    assert status == 201, created
    return dict(created)


def about(uri: str, kind: str | None = None) -> Callable[[Received], bool]:
    def matches(received: Received) -> bool:
        payload = json.loads(received.body)
        data = payload.get("data", {})
        return bool(data.get("uri") == uri and (kind is None or payload["type"] == kind))

    return matches


def verified(secret: str, received: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


def wait_until(check: Callable[[], Any], timeout: float = 15, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def test_webhook_is_signed_filtered_and_verifiable(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    sub = subscribe(delivery, receiver, sections=["world"], keywords=["ferry"], max_urgency=4)
    wanted = story(urgency=3, keywords=["Ferry"])
    too_calm = story(urgency=6, keywords=["ferry"])
    other_section = story(section="sport", urgency=1, keywords=["ferry"])
    delivery.publish(
        (too_calm, EventType.PUBLISHED), (other_section, EventType.PUBLISHED),
        (wanted, EventType.PUBLISHED),
    )  # fmt: skip

    [hook] = receiver.wait_for(about(wanted.uri))
    payload = verified(sub["secret"], hook)
    assert payload["type"] == "story.published"
    assert hook.headers["webhook-id"].startswith("msg_")
    time.sleep(0.5)
    assert [json.loads(r.body)["data"]["uri"] for r in receiver.received] == [wanted.uri]


def test_ninjs2_rendering_validates_against_iptc_schema(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    sub = subscribe(delivery, receiver, format="ninjs2")
    item = story(
        images=[{"href": "https://img.example/p.jpg", "caption": "Quay", "credit": "Desk"}],
        keywords=["harbour"],
    )
    delivery.publish((item, EventType.PUBLISHED))
    [hook] = receiver.wait_for(about(item.uri))
    data = verified(sub["secret"], hook)["data"]
    jsonschema.validate(data, SCHEMA)
    assert data["headlines"][0]["value"] == item.headline


def test_test_ping_and_secret_rotation_send_both_signatures(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    sub = subscribe(delivery, receiver)
    status, pinged = delivery.api("POST", f"/v1/subscriptions/{sub['id']}/test")
    assert status == 200 and pinged["status_code"] == 200
    assert verified(sub["secret"], receiver.received[0])["type"] == "ping"

    status, rotated = delivery.api("POST", f"/v1/subscriptions/{sub['id']}/rotate-secret")
    assert status == 200
    item = story()
    delivery.publish((item, EventType.PUBLISHED))
    [hook] = receiver.wait_for(about(item.uri))
    assert len(hook.headers["webhook-signature"].split(" ")) == 2
    assert verified(rotated["secret"], hook)["data"]["uri"] == item.uri
    assert verified(sub["secret"], hook)["data"]["uri"] == item.uri  # old secret, during overlap

    delivery.api("POST", f"/v1/subscriptions/{sub['id']}/rotate-secret", {"overlap_s": 0})
    later = story()
    delivery.publish((later, EventType.PUBLISHED))
    [hook] = receiver.wait_for(about(later.uri))
    assert len(hook.headers["webhook-signature"].split(" ")) == 1


def test_failures_are_retried_with_the_same_id_and_logged(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    answers = iter([(500, {}), (302, {"location": "http://127.0.0.1:9/"})])
    receiver.answer = lambda _: next(answers, (200, {}))
    sub = subscribe(delivery, receiver)
    item = story()
    delivery.publish((item, EventType.PUBLISHED))

    hooks = receiver.wait_for(about(item.uri), count=3)
    assert len({h.headers["webhook-id"] for h in hooks}) == 1
    for hook in hooks:
        verified(sub["secret"], hook)

    def logged() -> list[dict[str, Any]]:
        _, found = delivery.api("GET", f"/v1/subscriptions/{sub['id']}/attempts")
        return list(found["items"]) if len(found["items"]) >= 3 else []

    attempts = list(reversed(wait_until(logged, what="3 attempts")))
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 302, 200]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "delivered"]
    assert attempts[0]["next_retry_at"] and attempts[0]["story_uri"] == item.uri
    on_topic = asyncio.run(read_records(delivery.kafka, delivery.topics.attempts, 1))
    assert json.loads(on_topic[0].value or b"{}")["webhook_id"].startswith("msg_")


def test_a_correction_never_overtakes_its_original(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    # The original fails twice; its correction, published right after, must wait for it.
    first_tries = iter([(503, {}), (503, {})])

    def answer(received: Received) -> tuple[int, dict[str, str]]:
        if json.loads(received.body)["data"]["version"] == 1:
            return next(first_tries, (200, {}))
        return 200, {}

    receiver.answer = answer
    sub = subscribe(delivery, receiver)
    original = story()
    correction = original.model_copy(update={"version": 2, "headline": "Corrected"})
    withdrawal = original.model_copy(update={"version": 3, "pubstatus": "canceled"})
    delivery.publish(
        (original, EventType.PUBLISHED), (correction, EventType.UPDATED),
        (withdrawal, EventType.WITHDRAWN),
    )  # fmt: skip

    receiver.wait_for(about(original.uri, "story.withdrawn"), timeout=20)
    delivered = [
        verified(sub["secret"], r)["data"]["version"]
        for r in receiver.received
        if about(original.uri)(r)
    ]
    assert delivered == [1, 1, 1, 2, 3]


def test_retry_after_is_honoured_and_retries_survive_a_crash(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    receiver.status = 503
    receiver.answer = lambda _: (503, {"Retry-After": "4"})
    sub = subscribe(delivery, receiver)
    item = story()
    delivery.publish((item, EventType.PUBLISHED))
    receiver.wait_for(about(item.uri))
    time.sleep(0.5)  # the retry job is on the broker before the crash

    delivery.kill()
    receiver.answer = None
    receiver.status = 200
    delivery.start()

    hooks = receiver.wait_for(about(item.uri), count=2, timeout=60)
    assert hooks[1].headers["webhook-id"] == hooks[0].headers["webhook-id"]
    verified(sub["secret"], hooks[1])


def test_410_disables_at_once_and_records_an_event(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    receiver.status = 410
    sub = subscribe(delivery, receiver)
    delivery.publish((story(), EventType.PUBLISHED))
    receiver.wait_for(lambda r: True)

    def disabled() -> dict[str, Any] | None:
        _, found = delivery.api("GET", f"/v1/subscriptions/{sub['id']}")
        return dict(found) if found["status"] == "disabled" else None

    assert "410" in wait_until(disabled, what="disabled")["disabled_reason"]
    events = asyncio.run(read_records(delivery.kafka, delivery.topics.subscription_events, 1))
    assert any(e.key == sub["id"].encode() for e in events)
    later = story()
    delivery.publish((later, EventType.PUBLISHED))
    time.sleep(1)
    assert not [r for r in receiver.received if about(later.uri)(r)]


def test_auto_disable_after_continuous_failure_then_recover_resends_what_was_missed(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    receiver.status = 500
    sub = subscribe(delivery, receiver)
    path = f"/v1/subscriptions/{sub['id']}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    sent: list[Story] = []

    def keep_failing() -> bool:
        item = story()
        sent.append(item)
        delivery.publish((item, EventType.PUBLISHED))
        return bool(delivery.api("GET", path)[1]["status"] == "disabled")

    wait_until(keep_failing, timeout=20, what="auto-disable")
    _, view = delivery.api("GET", path)
    assert "failed" in view["disabled_reason"]
    events = asyncio.run(read_records(delivery.kafka, delivery.topics.subscription_events, 1))
    assert any(e.key == sub["id"].encode() for e in events)
    missed = story()
    delivery.publish((missed, EventType.PUBLISHED))  # while disabled: not sent
    sent.append(missed)
    time.sleep(1)
    assert not [r for r in receiver.received if about(missed.uri)(r)]

    receiver.status = 200
    assert delivery.api("POST", f"{path}/resume")[1]["status"] == "active"
    status, recovered = delivery.api("POST", f"{path}/recover?since={quote(since.isoformat())}")
    assert status == 202 and recovered["queued"] >= len(sent)
    receiver.wait_for(about(missed.uri))

    def delivered_all() -> bool:
        ok = {
            json.loads(r.body)["data"]["uri"]
            for r in receiver.received[-len(sent) * 2 :]
            if about(json.loads(r.body)["data"]["uri"])(r)
        }
        return {s.uri for s in sent} <= ok

    wait_until(delivered_all, what="every missed story re-sent")
    for hook in receiver.received[-len(sent) :]:
        verified(sub["secret"], hook)


def test_exhausted_messages_go_to_dead_letters_and_can_be_resent(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    receiver.status = 500
    sub = subscribe(delivery, receiver)
    path = f"/v1/subscriptions/{sub['id']}"
    item = story()
    delivery.publish((item, EventType.PUBLISHED))
    receiver.wait_for(about(item.uri), count=4)

    def dead() -> list[dict[str, Any]]:
        return list(delivery.api("GET", f"{path}/dead-letters")[1]["items"])

    [letter] = wait_until(dead, what="a dead letter")
    assert letter["story_uri"] == item.uri and letter["attempts"] == 4
    _, attempts = delivery.api("GET", f"{path}/attempts")
    assert attempts["items"][0]["outcome"] == "gave_up"
    assert delivery.api("GET", path)[1]["status"] == "active"

    receiver.status = 200
    status, resent = delivery.api("POST", f"{path}/dead-letters/resend")
    assert status == 202 and resent["queued"] == 1
    hooks = receiver.wait_for(about(item.uri), count=5)
    assert hooks[-1].headers["webhook-id"] == letter["webhook_id"]
    verified(sub["secret"], hooks[-1])
    assert dead() == []


def test_a_dead_endpoint_does_not_hold_up_the_others(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    slow = WebhookReceiver().start()
    try:
        slow.delay_s = 3  # beyond the 1.5 s timeout
        subscribe(delivery, slow)
        sub = subscribe(delivery, receiver)
        items = [story() for _ in range(30)]
        started = time.monotonic()
        delivery.publish(*[(i, EventType.PUBLISHED) for i in items])
        for item in items:
            receiver.wait_for(about(item.uri), timeout=10)
        assert time.monotonic() - started < 3
        verified(sub["secret"], receiver.received[-1])
    finally:
        slow.stop()


def test_embargo_holds_story_and_withdrawal_reaches_whoever_got_it(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    sub = subscribe(delivery, receiver, event_types=["story.published"])
    lifted = datetime.now(UTC) + timedelta(seconds=2)
    item = story(embargoed=lifted.isoformat())
    delivery.publish((item, EventType.PUBLISHED))
    time.sleep(1)
    assert not [r for r in receiver.received if about(item.uri)(r)]
    assert delivery.api("GET", f"/v1/stories/{quote(item.uri, safe='')}")[0] == 404

    [hook] = receiver.wait_for(about(item.uri), timeout=10)
    assert time.time() >= lifted.timestamp()
    verified(sub["secret"], hook)
    assert delivery.api("GET", f"/v1/stories/{quote(item.uri, safe='')}")[0] == 200

    killed = item.model_copy(update={"version": 2, "pubstatus": "canceled"})
    delivery.publish((killed, EventType.WITHDRAWN))
    [kill] = receiver.wait_for(about(item.uri, "story.withdrawn"))
    assert verified(sub["secret"], kill)["data"]["pubstatus"] == "canceled"
    wait_until(lambda: delivery.api("GET", f"/v1/stories/{quote(item.uri, safe='')}")[0] == 404)


def test_cache_pages_etag_sections_and_rebuild_after_redis_flush(delivery: Delivery) -> None:
    section = f"s{uuid.uuid4().hex[:6]}"
    base = datetime.now(UTC) - timedelta(hours=1)
    items = [
        story(section=section, firstcreated=(base + timedelta(minutes=i)).isoformat())
        for i in range(7)
    ]
    delivery.publish(*[(i, EventType.PUBLISHED) for i in items])
    corrected = items[2].model_copy(update={"version": 2, "headline": "Fixed headline"})
    delivery.publish((corrected, EventType.UPDATED))

    def page(before: str | None = None) -> dict[str, Any]:
        query = f"/v1/latest?section={section}&limit=3" + (f"&before={before}" if before else "")
        return dict(http_json("GET", delivery.url + query)[1])

    def all_pages() -> list[str]:
        uris: list[str] = []
        cursor = None
        while True:
            found = page(cursor)
            uris += [s["uri"] for s in found["items"]]
            cursor = found["next"]
            if not cursor:
                return uris

    newest_first = [i.uri for i in reversed(items)]
    wait_until(lambda: all_pages() == newest_first, what="all stories cached")
    headlines = {s["uri"]: s["headline"] for s in page(None)["items"]}
    wait_until(
        lambda: http_json(
            "GET", f"{delivery.url}/v1/stories/{quote(items[2].uri, safe='')}"
        )[1]["headline"] == "Fixed headline"
    )  # fmt: skip
    assert len(headlines) == 3
    sections = http_json("GET", f"{delivery.url}/v1/sections")[1]["items"]
    assert {"id": section, "name": section, "stories": 7} in sections

    # Flush this deployment's Redis keys (our prefix only: the server is shared) mid-run.
    redis = Redis.from_url(delivery.redis_url)
    try:
        keys = list(redis.scan_iter(match=f"{delivery.prefix}cache:*", count=1000))
        redis.delete(*keys)
    finally:
        redis.close()
    extra = story(section=section, firstcreated=datetime.now(UTC).isoformat())
    delivery.publish((extra, EventType.PUBLISHED))
    wait_until(lambda: all_pages() == [extra.uri, *newest_first], what="rebuilt cache")
    fixed = http_json("GET", f"{delivery.url}/v1/stories/{quote(items[2].uri, safe='')}")[1]
    assert fixed["headline"] == "Fixed headline"


def test_cache_rebuild_command(delivery: Delivery) -> None:
    newsflow = shutil.which("newsflow", path=str(Path(sys.executable).parent))
    assert newsflow is not None
    done = subprocess.run(
        [newsflow, "cache", "rebuild"], env=delivery.env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert re.search(r"cache rebuilt from \d+ stories", done.stdout)
    assert http_json("GET", f"{delivery.url}/v1/latest?limit=1")[1]["items"]


def snippet(language: str) -> str:
    text = (ROOT / "docs/partners.md").read_text()
    found = re.search(rf"```{language}\n(.*?)```", text[text.index("## Verify") :], re.S)
    assert found is not None
    return found.group(1)


def test_partner_guide_snippets_verify_a_real_webhook(
    delivery: Delivery, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    sub = subscribe(delivery, receiver)
    item = story()
    delivery.publish((item, EventType.PUBLISHED))
    [hook] = receiver.wait_for(about(item.uri))

    scope: dict[str, Any] = {}
    exec(snippet("python"), scope)  # noqa: S102 (our own documentation)
    assert scope["verify"](sub["secret"], hook.headers, hook.body)["data"]["uri"] == item.uri

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node snippet in docs/partners.md was not run")
    script = tmp_path / "verify.js"
    script.write_text(
        snippet("javascript")
        + "\nconst input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));\n"
        + "console.log(verify(input.secret, input.headers, input.body).data.uri);\n"
    )
    for secret, ok in ((sub["secret"], True), ("whsec_" + "A" * 44, False)):
        run = subprocess.run(
            [node, str(script)], capture_output=True, text=True, timeout=30,
            input=json.dumps({"secret": secret, "headers": hook.headers,
                              "body": hook.body.decode()}),
        )  # fmt: skip
        assert (run.returncode == 0) is ok, run.stderr
        if ok:
            assert run.stdout.strip() == item.uri


def test_a_story_withdrawn_under_embargo_never_goes_out(
    delivery: Delivery, receiver: WebhookReceiver
) -> None:
    subscribe(delivery, receiver)
    item = story(embargoed=(datetime.now(UTC) + timedelta(seconds=1)).isoformat())
    killed = item.model_copy(update={"version": 2, "pubstatus": "canceled"})
    delivery.publish((item, EventType.PUBLISHED), (killed, EventType.WITHDRAWN))
    witness = story()
    time.sleep(2)
    delivery.publish((witness, EventType.PUBLISHED))
    receiver.wait_for(about(witness.uri))
    assert not [r for r in receiver.received if about(item.uri)(r)]
    assert delivery.api("GET", f"/v1/stories/{quote(item.uri, safe='')}")[0] == 404
