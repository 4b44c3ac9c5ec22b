"""Wires enrichment: story table, consumer group, producer; `python -m services.enrichment`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from services.enrichment import kernels
from services.enrichment.adapters import KafkaStoryTable, TableFedMember
from services.enrichment.app import (
    Enricher,
    EnrichmentMetrics,
    Pipeline,
    PipelineFactory,
    create_app,
)
from services.enrichment.corpus import parse_corpus
from services.enrichment.domain import EnrichmentRules, StoryEnricher
from services.enrichment.index import IndexSettings, warm_up
from services.enrichment.settings import EnrichmentSettings
from services.enrichment.taxonomy import Taxonomy
from services.enrichment.workers import FeatureWorkers
from shared.kafka import DeadLetters, consume_forever, make_consumer, make_producer, stop_producer
from shared.logging import get_logger
from shared.serve import freeze_startup_heap, prepare_process, serve
from shared.tracing import with_tracing

log = get_logger(__name__)
TRAINED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def build_enricher(settings: EnrichmentSettings) -> StoryEnricher:
    rules = EnrichmentRules(
        taxonomy=Taxonomy.from_file(settings.enrichment_taxonomy_path),
        min_section_confidence=settings.enrichment_min_section_confidence,
        related_limit=settings.enrichment_related_limit,
        related_min_score=settings.enrichment_related_min_score,
        index=IndexSettings(
            window_s=settings.enrichment_index_window_s,
            capacity=settings.enrichment_index_capacity,
            duplicate_similarity=settings.enrichment_duplicate_similarity,
        ),
    )
    started = time.perf_counter()
    warm_up()
    log.info(
        "index loops compiled",
        seconds=round(time.perf_counter() - started, 2),
        # Compiled afresh at each start: set NUMBA_CACHE_DIR to a writable directory.
        uncached=len(kernels.uncached),
    )
    enricher = StoryEnricher(rules)
    path = settings.enrichment_training_path
    if path is not None and str(path) not in ("", "."):
        stories = parse_corpus(path.read_text(encoding="utf-8").splitlines())
        enricher.train((s.article(TRAINED_AT), s.section) for s in stories)
        log.info("section classifier trained", stories=len(stories), path=str(path))
    return enricher


def pipeline_factory(settings: EnrichmentSettings) -> PipelineFactory:
    @asynccontextmanager
    async def open_pipeline(metrics: EnrichmentMetrics) -> AsyncIterator[Pipeline]:
        topics = settings.topics
        enricher = build_enricher(settings)
        async with AsyncExitStack() as stack:
            producer = make_producer(settings)
            await producer.start()
            stack.push_async_callback(stop_producer, producer)
            workers = None
            if settings.enrichment_feature_workers > 0:
                workers = FeatureWorkers(settings.enrichment_feature_workers, enricher.index)
                await workers.start()
                stack.push_async_callback(workers.stop)
            table = KafkaStoryTable(
                settings.kafka_bootstrap_servers,
                topics.ingested,
                enricher.observe,
                features=workers.features if workers else None,
                # A chunk for each worker, and a couple more ready while the first are inserted.
                in_flight=settings.enrichment_feature_workers + 2,
                here_while_waiting=settings.enrichment_features_here_while_waiting,
                here_up_to=settings.enrichment_features_here_up_to,
                fetch_max_wait_ms=settings.enrichment_fetch_max_wait_ms,
                recent_per_partition=settings.enrichment_recent_per_partition,
                fetch_interval_ms=settings.kafka_fetch_interval_ms,
            )
            await table.start()
            stack.push_async_callback(table.stop)
            # The group carries the topic prefix, so environments sharing a cluster stay apart.
            group = settings.topic_prefix + settings.enrichment_group_id
            fed = settings.enrichment_recent_per_partition > 0
            consumer = make_consumer(
                settings,
                None if fed else topics.ingested,
                group,
                fetch_max_wait_ms=settings.enrichment_fetch_max_wait_ms,
            )
            # The member takes what the table keeps (or, with nothing kept, fetches it all).
            member = TableFedMember(consumer, table, topics.ingested) if fed else consumer
            dead_letters = DeadLetters(producer, topics.dlq, metrics.consumer)
            handler = Enricher(
                producer,
                topics.enriched,
                f"{settings.event_source}:enrichment",
                enricher,
                table,
                dead_letters,
                metrics,
            )
            joined = asyncio.Event()

            async def consume() -> None:
                reader = asyncio.create_task(table.run(), name="enrichment-story-table")
                try:
                    # The instance joins the group (takes work) only once its index is rebuilt.
                    await _first(table.wait_rebuilt(), reader)
                    metrics.indexed.set(len(enricher.index))
                    freeze_startup_heap()
                    log.info("joining the consumer group", indexed=len(enricher.index))
                    await member.start()
                    joined.set()
                    try:
                        work = consume_forever(
                            member,
                            handler.handle,
                            dead_letters,
                            commit_interval_s=settings.enrichment_commit_interval_s,
                            metrics=metrics.consumer,
                        )
                        await _first(work, reader)
                    finally:
                        await member.stop()
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)

            async def ready() -> bool:
                return table.rebuilt and joined.is_set() and bool(consumer.assignment())

            def status() -> dict[str, Any]:
                return {
                    "state": "ready" if table.rebuilt else "rebuilding",
                    "stories": len(enricher.index),
                    "observed": enricher.observed,
                    # Whose features the story table used: this process's or the workers'.
                    "features": {
                        "here": table.computed_here,
                        "workers": table.computed_by_workers,
                    },
                    # How the table learnt the end offsets each story waits for: from its
                    # fetch responses' high watermarks, or by looking them up.
                    "end_offsets": {
                        "from_fetches": table.ends_from_fetches,
                        "looked_up": table.ends_looked_up,
                    },
                    "taxonomy_version": enricher.rules.taxonomy.version,
                    # Where this instance's group member took its records from (None: not
                    # counted; with nothing kept, the member fetches them all).
                    "member": {
                        "from_table": member.from_table if fed else 0,
                        "fetched": member.fetched if fed else None,
                    },
                }

            yield Pipeline(consume(), ready, status)

    return open_pipeline


async def _first(work: Any, reader: asyncio.Task[None]) -> None:
    """Run `work` while the table reader runs; if the reader dies, stop and raise its error."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task, reader}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            reader.result()
            raise RuntimeError("the story table reader stopped")
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def main() -> None:
    settings = EnrichmentSettings()
    prepare_process(settings)
    app = with_tracing(create_app(pipeline_factory(settings), settings.topics), settings)
    serve(app, settings.enrichment_host, settings.enrichment_port)
