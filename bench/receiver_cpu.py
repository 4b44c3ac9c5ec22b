"""The partner receiver's CPU per webhook: A/B of two checkouts' `bench.processes receiver`.

    flock /tmp/newsflow-bench.lock python -m bench.receiver_cpu --old /tmp/old-harness

Each round starts each checkout's receiver (in turn, as its own process, from that checkout's
directory), posts `--requests` bodies of `--body-bytes` to it over `--concurrency` kept-alive
connections with delivery's lean client, and prints the receiver's CPU (its process tree's user +
system time, before and after) per request. The receiver shares the cores with the client, as it
does with the services in `bench.e2e`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from bench.e2e import receiver_get
from bench.processes import process_tree_cpu_s
from ops.embedded import ChildProcess, free_port, wait_for_port
from services.delivery.adapters import resolve
from services.delivery.webhook_client import LeanWebhookSender

HERE = Path(__file__).resolve().parent.parent


def body(token: int, size: int) -> bytes:
    """A webhook body like delivery's: the event type first, the story's keywords later."""
    shell = '{"type": "story.published", "data": {"keywords": ["bench-%d"], "body": "%s"}}'
    pad = max(0, size - len(shell % (token, "")))
    return (shell % (token, "x" * pad)).encode()


def start(root: Path) -> ChildProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.processes", "receiver", "--port", str(port)]
    process = subprocess.Popen(
        argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    child = ChildProcess(f"receiver ({root})", process, f"http://127.0.0.1:{port}")
    try:
        wait_for_port("127.0.0.1", port, 30, child)
    except BaseException:
        child.stop()
        raise
    return child


async def post_all(url: str, requests: int, concurrency: int, size: int, first: int) -> float:
    """Posts `requests` webhooks with `concurrency` in flight; the seconds it took."""
    bodies = [body(first + n, size) for n in range(requests)]
    headers = {"content-type": "application/json", "webhook-id": "msg_bench"}
    queue = iter(range(requests))
    failures: list[str] = []

    async def worker(client: LeanWebhookSender) -> None:
        for n in queue:
            answer = await client.post(f"{url}/s/{n % 20}", bodies[n], headers)
            if answer.status != 200:
                failures.append(str(answer.error))

    started = time.perf_counter()
    async with LeanWebhookSender(resolve, allow_private=True, timeout_s=60.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{len(failures)} posts failed, the first: {failures[0]}")
    return time.perf_counter() - started


def measure(root: Path, requests: int, concurrency: int, size: int) -> tuple[float, float]:
    """The receiver's CPU µs per request and the requests per second, for one checkout."""
    child = start(root)
    try:
        asyncio.run(post_all(child.address, 500, concurrency, size, 0))  # warm-up
        before = process_tree_cpu_s(child.pid)
        seconds = asyncio.run(post_all(child.address, requests, concurrency, size, 500))
        used = process_tree_cpu_s(child.pid) - before
        count = receiver_get(child.address, "/count")["count"]
        if count != requests + 500:
            raise RuntimeError(f"the receiver recorded {count} of {requests + 500}")
        return 1e6 * used / requests, requests / seconds
    finally:
        child.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", type=Path, required=True, help="the baseline checkout")
    parser.add_argument("--new", type=Path, default=HERE, help="this checkout by default")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--body-bytes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.install()
    results: dict[str, list[float]] = {"old": [], "new": []}
    for number in range(1, args.rounds + 1):
        for name, root in (("old", args.old), ("new", args.new)):
            cpu_us, rate = measure(root, args.requests, args.concurrency, args.body_bytes)
            results[name].append(cpu_us)
            print(
                f"round {number} {name}: {cpu_us:5.2f} µs CPU/request "
                f"({rate:,.0f} requests/s, {args.requests} x {args.body_bytes} B, "
                f"{args.concurrency} connections)",
                flush=True,
            )
    for name, figures in results.items():
        print(f"{name}: {', '.join(f'{f:.2f}' for f in figures)} µs/request")


if __name__ == "__main__":
    main()
