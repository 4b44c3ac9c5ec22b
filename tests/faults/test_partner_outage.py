"""A partner answers 500, then times out, then recovers: it gets everything on the retry schedule,
and the partner beside it is not held up meanwhile."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict

import pytest

from tests.faults.harness import (
    Hook,
    Infra,
    Partner,
    Sent,
    Stack,
    post_stories,
    stories,
)

pytestmark = pytest.mark.faults

DELAYS_S = [0, 1, 1, 2, 4, 8, 8]
TIMEOUT_S = 1.0
FAILING_S = 4.0  # 500s for this long, then no answer within the timeout for as long again


def test_partner_fails_then_times_out_then_recovers(infra: Infra, partner: Partner) -> None:
    stack = Stack(
        infra,
        {
            "NEWSFLOW_DELIVERY_RETRY_DELAYS_S": json.dumps(DELAYS_S),
            "NEWSFLOW_DELIVERY_RETRY_JITTER": "0",
            "NEWSFLOW_DELIVERY_TIMEOUT_S": str(TIMEOUT_S),
            "NEWSFLOW_DELIVERY_BREAKER_COOLDOWN_S": "1",
        },
    ).start()
    start = [float("inf")]

    async def behaviour(path: str) -> int:
        elapsed = time.time() - start[0]
        if path != "flaky" or elapsed >= 2 * FAILING_S:
            return 200
        if elapsed < FAILING_S:
            return 500
        await asyncio.sleep(TIMEOUT_S * 3)
        return 504  # long after newsflow gave up on this attempt

    partner.behaviour = behaviour
    try:
        stack.subscribe(partner.url("flaky"), [])
        stack.subscribe(partner.url("steady"), [])
        sent = Sent()
        start[0] = time.time()
        asyncio.run(post_stories(stack.url("ingest"), stories("partner", 60), sent, rate=10))
        accepted = set(sent.accepted)
        partner.wait(
            lambda: {(h.uri, h.version) for h in partner.delivered("flaky")} >= accepted,
            within_s=120,
            what="every story delivered to the recovered partner",
        )
        steady = partner.delivered("steady")
        assert {(h.uri, h.version) for h in steady} == accepted

        attempts: dict[str, list[Hook]] = defaultdict(list)
        for hook in sorted(partner.hooks, key=lambda h: h.at):
            if hook.path == "flaky":
                attempts[hook.webhook_id].append(hook)
        failed = [h for hs in attempts.values() for h in hs if h.answered >= 300]
        first_success = min(h.at for h in partner.delivered("flaky"))
        early = []
        for hooks in attempts.values():
            assert len(hooks) <= len(DELAYS_S)
            for number, (before, after) in enumerate(itertools.pairwise(hooks), 2):
                if after.at - before.at < DELAYS_S[number - 1] - 0.05:
                    early.append((before.webhook_id, number, round(after.at - before.at, 3)))
        steady_lag = sorted(h.at - sent.accepted_at[(h.uri, h.version)] for h in steady)
        flaky_lag = sorted(
            h.at - sent.accepted_at[(h.uri, h.version)] for h in partner.delivered("flaky")
        )
        print(
            f"\nflaky: {len(attempts)} messages, {len(failed)} failed attempts "
            f"({sum(h.answered == 500 for h in failed)} x 500, "
            f"{sum(h.answered == 504 for h in failed)} timeouts), "
            f"most attempts for one message {max(len(h) for h in attempts.values())}, "
            f"delivery lag max {flaky_lag[-1]:.2f}s; "
            f"steady: lag median {steady_lag[len(steady_lag) // 2]:.3f}s max {steady_lag[-1]:.3f}s"
        )
        assert failed, "the partner never failed: the test did not test anything"
        assert early == [], f"attempts earlier than the schedule allows: {early}"
        # The steady partner had every story before the flaky one took its first.
        late = [
            h
            for h in steady
            if h.at > first_success and sent.accepted_at[(h.uri, h.version)] < start[0] + FAILING_S
        ]
        assert late == [], f"{len(late)} stories reached the steady partner only after recovery"
    finally:
        stack.stop()
