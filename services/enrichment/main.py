"""Wires enrichment: consumer group, producer, index and rules; `python -m services.enrichment`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager

from services.enrichment.app import (
    Enricher,
    EnrichmentMetrics,
    PipelineFactory,
    Ready,
    create_app,
)
from services.enrichment.domain import EnrichmentRules, StoryIndex, Taxonomy
from services.enrichment.settings import EnrichmentSettings
from shared.kafka import DeadLetters, consume_forever, make_consumer, make_producer
from shared.logging import configure_logging
from shared.serve import serve


def pipeline_factory(settings: EnrichmentSettings) -> PipelineFactory:
    @asynccontextmanager
    async def open_pipeline(
        metrics: EnrichmentMetrics,
    ) -> AsyncIterator[tuple[Awaitable[None], Ready]]:
        topics = settings.topics
        rules = EnrichmentRules(
            taxonomy=Taxonomy.from_file(settings.enrichment_taxonomy_path),
            min_section_confidence=settings.enrichment_min_section_confidence,
            related_limit=settings.enrichment_related_limit,
            related_min_score=settings.enrichment_related_min_score,
        )
        async with AsyncExitStack() as stack:
            producer = make_producer(settings)
            await producer.start()
            stack.push_async_callback(producer.stop)
            consumer = make_consumer(settings, topics.ingested, settings.enrichment_group_id)
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            dead_letters = DeadLetters(producer, topics.dlq)
            enricher = Enricher(
                producer,
                topics.enriched,
                f"{settings.event_source}:enrichment",
                rules,
                StoryIndex(capacity=settings.enrichment_index_capacity),
                dead_letters,
                metrics,
            )

            async def ready() -> bool:
                return bool(consumer.assignment())

            yield consume_forever(consumer, enricher.handle, dead_letters), ready

    return open_pipeline


def main() -> None:
    settings = EnrichmentSettings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(pipeline_factory(settings))
    serve(app, settings.enrichment_host, settings.enrichment_port)
