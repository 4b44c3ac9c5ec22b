"""What a newsflow process spends CPU on besides its work: how the kernel schedules it (for
throughput, `SCHED_BATCH`, unless told not to) and how often the cyclic garbage collector runs.

newsflow is a chain of busy processes (ingest, broker, enrichment, delivery, Redis) that hand
each story on. Under the default policy every hand-off wakes the next process, and the waking
one preempts whichever is running: on a small box that means thousands of switches a second,
each cutting another process's work short and cooling its caches. Under `SCHED_BATCH` a process
that wakes waits for the running one to block or use up its slice; nothing else changes (the
same fair share of CPU, the same nice value). On the 2-core bench box this halved the p99 at
700 stories/s (docs/benchmarks.md). An unprivileged process may always choose it.
"""

from __future__ import annotations

import gc
import os
from typing import Literal

CpuScheduling = Literal["batch", "normal"]

# The cyclic collector's thresholds: a young collection after 20,000 more container objects
# (Python's default: 700), the middle generation after 20 of those, the whole heap after 50 of
# those. With the defaults the services spent 6.5-9.6 % of their CPU collecting at 700-800
# stories/s (ingest's young generation ~80 times a second at ~0.25 ms each; a full collection
# of enrichment's heap ~50 ms); with these, 2-4 %. Per-request and per-record objects die long
# before 20,000 more are made; what stays is freed by reference counting, and cycles wait a
# little longer.
GC_THRESHOLDS = (20_000, 20, 50)


def tune_collector() -> None:
    """The cyclic collector of this process runs at `GC_THRESHOLDS`."""
    gc.set_threshold(*GC_THRESHOLDS)


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
