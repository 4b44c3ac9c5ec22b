"""kill -9 of each service at a random moment of a 2,000-story stream loses nothing."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict

import pytest

from tests.faults.harness import (
    ADMIN_TOKEN,
    API_KEY,
    SCALE,
    SECRETS_KEY,
    Infra,
    Partner,
    Sent,
    Stack,
    cache_mismatches,
    enriched_stories,
    latest_versions,
    post_stories,
    stories,
)

pytestmark = pytest.mark.faults

STORIES = 1800 * SCALE
CORRECTIONS = 200 * SCALE  # 2,000 versions in all (20,000 in `make soak`)


def test_kill_minus_nine_each_service_mid_stream(infra: Infra, partner: Partner) -> None:
    stack = Stack(infra, {"NEWSFLOW_DELIVERY_RETRY_DELAYS_S": "[0, 1, 1, 2, 5, 10]"}).start()
    try:
        subscriptions = [
            stack.subscribe(partner.url("all"), []),
            stack.subscribe(partner.url("sport"), ["sport"]),
            stack.subscribe(partner.url("world"), ["world"]),
        ]
        sent = Sent()
        rng = random.Random()
        moments = {
            name: rng.uniform(2 + 6 * i, 6 + 6 * i)
            for i, name in enumerate(("ingest", "enrichment", "delivery"))
        }
        killed: list[str] = []

        def killer() -> None:
            start = time.monotonic()
            for name, at in moments.items():
                time.sleep(max(0.0, start + at - time.monotonic()))
                stack.kill(name)
                killed.append(f"{name} at {at:.1f}s")
                stack.restart(name)

        thread = threading.Thread(target=killer)
        thread.start()
        payloads = stories("kill9", STORIES, CORRECTIONS)
        asyncio.run(post_stories(stack.url("ingest"), payloads, sent, rate=100, concurrency=8))
        thread.join()
        for name in ("ingest", "enrichment", "delivery"):
            stack.wait_ready(name)
        print(f"\nkilled: {killed}; answers: {sent.answers}; accepted {len(sent.accepted)}")
        assert len(sent.accepted) == STORIES + CORRECTIONS

        # Every accepted version reaches the subscriber of everything.
        partner.wait(
            lambda: {(h.uri, h.version) for h in partner.delivered("all")} >= set(sent.accepted),
            within_s=180 * SCALE,
            what="every accepted version delivered to the subscriber of everything",
        )
        enriched = enriched_stories(stack)
        on_topic = Counter((e.uri, e.version) for e in enriched)
        assert set(on_topic) == set(sent.accepted), "enriched topic != accepted versions"
        repeats = {k: n for k, n in on_topic.items() if n > 1}
        print(f"enriched records {len(enriched)}; versions enriched more than once {len(repeats)}")

        section_of = {(e.uri, e.version): e.section for e in enriched}
        for path, wanted in (("all", None), ("sport", "sport"), ("world", "world")):
            expected = {k for k, s in section_of.items() if wanted is None or s == wanted}
            hooks = partner.delivered(path)
            assert {(h.uri, h.version) for h in hooks} == expected, path
            ids: dict[tuple[str, int], set[str]] = defaultdict(set)
            for hook in hooks:
                ids[(hook.uri, hook.version)].add(hook.webhook_id)
            # A redelivery is the same message: partners de-duplicate on webhook-id.
            assert all(len(v) == 1 for v in ids.values()), path
            print(
                f"{path}: {len(expected)} versions, {len(hooks)} webhooks "
                f"({len(hooks) - len(expected)} redeliveries)"
            )

        assert cache_mismatches(stack, latest_versions(enriched)) == []

        logs = stack.log_text()
        secrets = [API_KEY, ADMIN_TOKEN, SECRETS_KEY, *(s["secret"] for s in subscriptions)]
        print(f"scanned {len(logs.splitlines())} log lines for {len(secrets)} secrets")
        assert [s[:6] for s in secrets if s in logs or s.removeprefix("whsec_") in logs] == []
    finally:
        stack.stop()
