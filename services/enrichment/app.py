"""enrichment's entrypoints: the consumer that enriches each batch, and a health/metrics app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.enrichment.domain import EnrichmentRules, StoryIndex, enrich
from shared.events import EventMeta, Headers, InvalidEvent, decode_article, encode
from shared.http import add_health_routes, install_problem_handlers
from shared.kafka import DeadLetters, IncomingRecord, send_all
from shared.logging import get_logger
from shared.serve import background

log = get_logger(__name__)


class EnrichmentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stories = Counter(
            "newsflow_enrichment_stories",
            "Stories enriched, by section",
            ["section"],
            registry=self.registry,
        )
        self.parked = Counter(
            "newsflow_enrichment_parked_records", "Records sent to the DLQ", registry=self.registry
        )
        self.latency = Histogram(
            "newsflow_enrichment_seconds", "Time to enrich one story", registry=self.registry
        )


class Enricher:
    """Turns a batch of ingested articles into stories on the enriched topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        output_topic: str,
        source: str,
        rules: EnrichmentRules,
        index: StoryIndex,
        dead_letters: DeadLetters,
        metrics: EnrichmentMetrics,
    ) -> None:
        self._producer = producer
        self._output_topic = output_topic
        self._source = source
        self._rules = rules
        self._index = index
        self._dead_letters = dead_letters
        self._metrics = metrics

    async def handle(self, records: list[IncomingRecord]) -> None:
        sends: list[tuple[str, bytes | None, bytes, Headers]] = []
        for record in records:
            try:
                article = decode_article(record.value)
            except InvalidEvent as exc:
                self._metrics.parked.inc()
                await self._dead_letters.park(record, str(exc))
                continue
            with self._metrics.latency.time():
                story = enrich(article, self._index, self._rules)
            self._metrics.stories.labels(story.enrichment.section.id).inc()
            meta = EventMeta.new(record.meta.type, self._source)
            sends.append((self._output_topic, encode(story), story.uri.encode(), meta.to_headers()))
            log.info(
                "story enriched",
                article_uri=story.uri,
                event_id=record.meta.id,
                section=story.enrichment.section.id,
                related=len(story.enrichment.related),
            )
        await send_all(self._producer, sends)


Ready = Callable[[], Awaitable[bool]]
# Opens the consumer pipeline and yields (the consume-forever coroutine, readiness check).
PipelineFactory = Callable[
    [EnrichmentMetrics], AbstractAsyncContextManager[tuple[Awaitable[None], Ready]]
]


def create_app(open_pipeline: PipelineFactory) -> FastAPI:
    metrics = EnrichmentMetrics()
    state: dict[str, Ready] = {}
    tasks: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with open_pipeline(metrics) as (consume, ready):
            state["ready"] = ready
            async with background(consume, "enrichment-consumer") as task:
                tasks.append(task)
                yield

    app = FastAPI(title="newsflow enrichment", version="1", lifespan=lifespan)
    install_problem_handlers(app)

    async def is_ready() -> bool:
        consuming = bool(tasks) and not tasks[0].done()
        return consuming and await state["ready"]()

    add_health_routes(app, metrics.registry, is_ready)
    return app
