"""The broker unreachable for 30 s: ingest refuses (503) rather than accept what Kafka did not
acknowledge, the services reconnect by themselves, and nothing accepted is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.harness import (
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

OUTAGE_S = 30


def test_broker_paused_thirty_seconds(infra: Infra, partner: Partner) -> None:
    stack = Stack(infra).start()
    try:
        stack.subscribe(partner.url("all"), [])
        sent = Sent()
        during: Counter[str] = Counter()
        paused = threading.Event()
        window: list[float] = []  # when the broker stopped, and when it went on

        def outage() -> None:
            time.sleep(3)
            os.kill(infra.kafka.pid, signal.SIGSTOP)
            window.append(time.time())
            paused.set()
            time.sleep(OUTAGE_S)
            paused.clear()
            window.append(time.time())
            os.kill(infra.kafka.pid, signal.SIGCONT)

        thread = threading.Thread(target=outage)
        thread.start()
        payloads = stories("outage", 800)

        async def load() -> None:
            # 20 stories/s for the whole window, each retried on 503 as a CMS would.
            await post_stories(
                stack.url("ingest"), payloads, sent, rate=20, concurrency=40, retry_for_s=120
            )

        watcher_stop = threading.Event()

        def watch() -> None:
            # What ingest answered while the broker was paused.
            seen: dict[str, int] = {}
            while not watcher_stop.is_set():
                now: dict[str, Any] = dict(sent.answers)
                if paused.is_set():
                    for status, n in now.items():
                        during[status] += n - seen.get(status, 0)
                seen = now
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        asyncio.run(load())
        thread.join()
        watcher_stop.set()
        watcher.join()
        stopped, resumed = window
        # A 202 means the broker acknowledged the record. One acknowledged just before the stop
        # may still be on its way back (and the watcher above counts by 50 ms samples), hence
        # a quarter second of grace; none may come after it.
        created_while_paused = [t for t in sent.created_at if stopped + 0.25 < t < resumed]
        print(
            f"\nanswers while paused: {dict(during)}; all answers: {sent.answers}; "
            f"202s answered from 0.25 s after the stop to the restart: {len(created_while_paused)}"
        )
        assert during["503"] > 0, "ingest never said 503 while the broker was away"
        assert created_while_paused == [], "ingest said 202 while the broker was stopped"
        assert len(sent.accepted) == len(payloads)

        for name in ("ingest", "enrichment", "delivery"):
            stack.wait_ready(name, timeout=60)
        partner.wait(
            lambda: {(h.uri, h.version) for h in partner.delivered("all")} >= set(sent.accepted),
            within_s=120,
            what="every accepted story delivered after the outage",
        )
        enriched = enriched_stories(stack)
        assert {(e.uri, e.version) for e in enriched} == set(sent.accepted)
        assert cache_mismatches(stack, latest_versions(enriched)) == []
    finally:
        stack.stop()
