"""How the kernel schedules a newsflow process: for throughput (`SCHED_BATCH`) unless told not to.

newsflow is a chain of busy processes (ingest, broker, enrichment, delivery, Redis) that hand
each story on. Under the default policy every hand-off wakes the next process, and the waking
one preempts whichever is running: on a small box that means thousands of switches a second,
each cutting another process's work short and cooling its caches. Under `SCHED_BATCH` a process
that wakes waits for the running one to block or use up its slice; nothing else changes (the
same fair share of CPU, the same nice value). On the 2-core bench box this halved the p99 at
700 stories/s (docs/benchmarks.md). An unprivileged process may always choose it.
"""

from __future__ import annotations

import os
from typing import Literal

CpuScheduling = Literal["batch", "normal"]


def apply_cpu_scheduling(policy: CpuScheduling) -> str:
    """Puts this process's threads, and those and the processes it starts from now on, under
    `policy`; what now holds: "batch", "normal", or "normal (...)" when the system has no
    such policy or refuses it (the process runs on, as before).
    """
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_BATCH"):
        return "normal (this system has no SCHED_BATCH)"
    chosen = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
    for thread in _threads():
        try:
            os.sched_setscheduler(thread, chosen, os.sched_param(0))
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as exc:  # a sandbox that filters the call
            return f"normal ({exc.strerror or exc})"
    return policy


def current_cpu_scheduling(pid: int = 0) -> str:
    """The policy a process (or thread) runs under: "batch", "normal" or another's name."""
    names = {os.SCHED_BATCH: "batch", os.SCHED_OTHER: "normal"}
    policy = os.sched_getscheduler(pid)
    return names.get(policy, str(policy))


def _threads() -> list[int]:
    """This process's thread ids (only the calling thread where /proc is not there)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
