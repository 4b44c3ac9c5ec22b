"""enrichment's entrypoints: the consumer that enriches each batch, and a health/metrics app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.enrichment.adapters import StoryFeed
from services.enrichment.domain import StoryEnricher
from shared.events import EventMeta, InvalidEvent, Topics
from shared.http import NO_NATIVE_TELEMETRY, add_health_routes, install_problem_handlers
from shared.kafka import DeadLetters, IncomingRecord
from shared.logging import get_logger
from shared.metrics import Children, ConsumerMetrics
from shared.serve import background
from shared.tracing import record_context

log = get_logger(__name__)


class EnrichmentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stories = Counter(
            "newsflow_enrichment_stories",
            "Stories enriched, by section and how it was chosen",
            ["section", "method"],
            registry=self.registry,
        )
        self.consumer = ConsumerMetrics(self.registry, "enrichment")
        self.latency = Histogram(
            "newsflow_enrichment_seconds",
            "Time to enrich one story (section, related lookup, entities)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.lookup = Histogram(
            "newsflow_enrichment_related_lookup_seconds",
            "Time to find one story's related stories and duplicate in the index",
            buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1),
            registry=self.registry,
        )
        self.indexed = Gauge(
            "newsflow_enrichment_index_stories",
            "Live stories in this instance's related-story index",
            registry=self.registry,
        )


YIELD_EVERY_S = 0.005


class Enricher:
    """Turns a batch of ingested articles into stories on the enriched topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        output_topic: str,
        source: str,
        enricher: StoryEnricher,
        feed: StoryFeed,
        dead_letters: DeadLetters,
        metrics: EnrichmentMetrics,
    ) -> None:
        self._producer = producer
        self._output_topic = output_topic
        self._source = source
        self._enricher = enricher
        self._feed = feed
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._stories = Children(metrics.stories)

    async def handle(self, records: list[IncomingRecord]) -> asyncio.Future[list[Any]]:
        """Enriches the batch and hands every story to the producer; returns what completes once
        the broker has acknowledged them all (the batch is committed only then, while the next
        batch is already handled: `consume_forever`)."""
        acks: list[asyncio.Future[Any]] = []
        handed_on = time.perf_counter()
        # Every story before a record must be in the index first: that is what makes two
        # instances link the same stories as one.
        async for record in self._feed.each_once_read(records):
            with record_context(record.meta):
                try:
                    article = self._feed.article_of(record)
                except InvalidEvent as exc:
                    await self._dead_letters.park(record, str(exc))
                    continue
                started = time.perf_counter()
                enriched = self._enricher.enriched(
                    article, lookup_timer=self._metrics.lookup.observe
                )
                self._metrics.latency.observe(time.perf_counter() - started)
                section = enriched.section
                self._stories(section.id, section.method).inc()
                # Created in the record's trace, so the story carries its ce_traceparent on.
                meta = EventMeta.new(record.meta.type, self._source)
                acks.append(
                    await self._producer.send(
                        self._output_topic,
                        enriched.story_value(article),
                        key=article.uri.encode(),
                        headers=meta.to_headers(),
                    )
                )
                log.debug(
                    "story enriched",
                    article_uri=article.uri,
                    section=section.id,
                    related=len(enriched.found.related),
                    duplicate_of=enriched.found.duplicate_of,
                )
            if time.perf_counter() - handed_on > YIELD_EVERY_S:
                # Let the producer ship what is enriched so far while the batch goes on: a
                # story waits for its own enrichment, not for the whole batch's.
                await asyncio.sleep(0)
                handed_on = time.perf_counter()
        self._metrics.indexed.set(len(self._enricher.index))
        return asyncio.gather(*acks)


Ready = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Pipeline:
    """What the wiring hands the app: the work to run, whether it is ready, and index status."""

    consume: Awaitable[None]
    ready: Ready
    status: Callable[[], dict[str, Any]]


PipelineFactory = Callable[[EnrichmentMetrics], AbstractAsyncContextManager[Pipeline]]


def create_app(open_pipeline: PipelineFactory, topics: Topics | None = None) -> FastAPI:
    """`topics`: the deployment's topic names, for `/asyncapi.json`."""
    metrics = EnrichmentMetrics()
    state: dict[str, Pipeline] = {}
    tasks: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with open_pipeline(metrics) as pipeline:
            state["pipeline"] = pipeline
            async with background(pipeline.consume, "enrichment-consumer") as task:
                tasks.append(task)
                yield

    app = FastAPI(
        title="newsflow enrichment",
        version="1",
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    install_problem_handlers(app)

    async def is_ready() -> bool:
        consuming = bool(tasks) and not tasks[0].done()
        return consuming and await state["pipeline"].ready()

    @app.get("/v1/index")
    async def index_status() -> dict[str, Any]:
        """How far this instance's related-story index is: `rebuilding` until it has read the
        whole ingested topic once; the instance takes no work before that.
        """
        return state["pipeline"].status()

    add_health_routes(app, metrics.registry, is_ready, topics=topics)
    return app
