"""What an idle stack costs: the CPU each process takes with no story coming, ours against the
raw three-hop passthrough on its own fresh broker (the baseline, run in the same invocation).

    .venv/bin/python -m bench.idle [--seconds 10]

Idle cost is paid at every load too: a consumer polling an empty topic, or the broker answering
it, takes CPU from the work. On the embedded broker every empty fetch costs CPU per partition
(Tansu answers one only after about half its max wait), so the number of consumers, their
partitions and their waits show here. Delivery's sender, over the outbox and 8 retry tiers
(54 partitions), took ~4 % of a core of the broker at a 100 ms wait (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.e2e import (
    Infra,
    cpu_snapshot,
    infra,
    start_baseline,
    start_receiver,
    start_services,
    subscribe_all,
    subscriber_urls,
)
from ops.embedded import ChildProcess


def idle_cpu(running: Infra, receiver: ChildProcess, seconds: float) -> dict[str, float]:
    """Per process, the share of a core it took over `seconds` (the load client: this one)."""
    pids = running.pids(receiver)
    before, started = cpu_snapshot(pids), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_snapshot(pids), time.monotonic() - started
    return {name: (after[name] - before[name]) / elapsed for name in pids}


def report(name: str, shares: dict[str, float]) -> float:
    total = sum(shares.values())
    busiest = sorted(shares.items(), key=lambda item: -item[1])
    parts = "  ".join(f"{who} {100 * share:.1f}" for who, share in busiest if share >= 0.0005)
    print(f"{name:22s} idle: {100 * total:5.1f} % of a core   ({parts})", flush=True)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each is measured")
    parser.add_argument("--settle", type=float, default=6.0, help="wait after start (groups)")
    opts = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="newsflow-idle-"))
    receiver = start_receiver(logs)
    try:
        with infra(logs, "raw") as running:
            start_baseline(running, logs, subscriber_urls(receiver.address))
            time.sleep(opts.settle)
            raw = report("baseline (raw 3 hops)", idle_cpu(running, receiver, opts.seconds))
        with infra(logs, "ours") as running:
            services = start_services(running, logs, "ours", 1, 1, {})
            subscribe_all(services, subscriber_urls(receiver.address))
            time.sleep(opts.settle)
            ours = report("newsflow 1E/1D", idle_cpu(running, receiver, opts.seconds))
        print(f"ours / baseline: {ours / raw:.2f}x (idle CPU; lower is better)", flush=True)
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
