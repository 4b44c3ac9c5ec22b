"""Runs a service's FastAPI app under uvicorn (uvloop where available), in a process set up
for it: logging configured, scheduled for throughput (`shared.cpu`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from shared.cpu import apply_cpu_scheduling
from shared.logging import configure_logging, get_logger
from shared.settings import NewsflowSettings

# The cyclic collector's thresholds: a young collection every 10,000 allocations net of frees,
# not 700. Each record, request and webhook allocates a few hundred objects, nearly all freed
# by their reference counts; at 700 the collector ran ~100 times a second in each service and
# promoted the in-flight work to older generations, whose full collections then took 20-45 ms
# a time, 4-13 times in a 12 s step at 1,000 stories/s. At 10,000: wall time in the collector
# per service and step ~1/3, one full collection a step, p99 lower in 3 of 3 pairs
# (docs/benchmarks.md, eighteenth session). Garbage in cycles waits a little longer: a few MB.
GC_THRESHOLDS = (10_000, 10, 10)


def prepare_process(settings: NewsflowSettings) -> None:
    """Logging as the settings say, the process's CPU scheduling policy (logged), and the
    cyclic collector's thresholds (`GC_THRESHOLDS`)."""
    gc.set_threshold(*GC_THRESHOLDS)
    configure_logging(settings.log_level, settings.log_format)
    scheduling = apply_cpu_scheduling(settings.cpu_scheduling)
    get_logger(__name__).info("process scheduling", cpu_scheduling=scheduling)


def serve(app: FastAPI, host: str, port: int) -> None:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    uvicorn.run(app, host=host, port=port, loop=loop, log_config=None, access_log=False)


def freeze_startup_heap() -> None:
    """Moves what start-up built (settings, models, clients, a rebuilt index) out of the cyclic
    collector's sight: it lives as long as the process, and full collections under load then
    scan only what the work allocates (this cut ingest's p99 at ~3,500 req/s from ~50 to ~25 ms).
    """
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def background(work: Awaitable[None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Runs a consumer loop for the life of an app; a crash is logged, shutdown cancels it."""
    task: asyncio.Task[None] = asyncio.create_task(_await(work), name=name)
    task.add_done_callback(_log_crash)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _await(work: Awaitable[None]) -> None:
    await work


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        get_logger(__name__).error(
            "background task stopped; the service is not ready",
            task=task.get_name(),
            exc_info=task.exception(),
        )
