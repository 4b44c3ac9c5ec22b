"""The services' processes as ops see them: scheduled for throughput unless told otherwise."""

from __future__ import annotations

import os

import pytest

from shared.cpu import current_cpu_scheduling
from tests.e2e.conftest import RunningStack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's"),
]


def test_every_thread_of_every_service_runs_under_sched_batch(stack: RunningStack) -> None:
    # The default policy, or the one the shell set (the stack passes NEWSFLOW_CPU_SCHEDULING on).
    expected = os.environ.get("NEWSFLOW_CPU_SCHEDULING", "batch")
    policies = {
        (name, int(thread)): current_cpu_scheduling(int(thread))
        for name, pid in stack.pids.items()
        for thread in os.listdir(f"/proc/{pid}/task")
    }
    assert {name for name, _ in policies} == {"ingest", "enrichment", "delivery"}
    assert set(policies.values()) == {expected}, policies
