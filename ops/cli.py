"""`newsflow`: the ops command line (run the dev stack, manage topics, tail a topic)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from shared.events import EventMeta, InvalidEvent
from shared.settings import NewsflowSettings

app = typer.Typer(help="newsflow ops commands.", no_args_is_help=True)
topics_app = typer.Typer(help="Create and inspect newsflow's topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@app.command()
def run(
    state_dir: Annotated[Path, typer.Option(help="Where logs (and Redis data) go.")] = Path(
        ".newsflow"
    ),
) -> None:
    """Run the whole system locally: embedded Kafka/Redis if none configured, 3 services, demo."""
    from ops.devrun import run as run_stack

    run_stack(state_dir)


@topics_app.command("create")
def topics_create() -> None:
    """Create every newsflow topic that is missing (6 partitions; the story topic compacted)."""
    from shared.kafka import ensure_topics

    settings = NewsflowSettings()
    specs = settings.topics.all()
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, specs))
    for spec in specs:
        policy = "compact" if spec.compacted else "delete"
        typer.echo(f"{spec.name}  partitions={spec.partitions}  cleanup.policy={policy}")


@topics_app.command("describe")
def topics_describe() -> None:
    """Partitions and end offsets of every newsflow topic."""
    typer.echo(json.dumps(asyncio.run(_describe(NewsflowSettings())), indent=2))


async def _describe(settings: NewsflowSettings) -> dict[str, dict[str, int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        result: dict[str, dict[str, int]] = {}
        for spec in settings.topics.all():
            partitions = consumer.partitions_for_topic(spec.name) or set()
            tps = [TopicPartition(spec.name, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps) if tps else {}
            result[spec.name] = {str(tp.partition): offset for tp, offset in ends.items()}
        return result
    finally:
        await consumer.stop()


@app.command()
def tail(
    topic: Annotated[
        str, typer.Argument(help="Topic name without the prefix, e.g. stories.enriched.v1")
    ],
    limit: Annotated[int, typer.Option(help="Stop after this many records (0: follow).")] = 0,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
) -> None:
    """Print a topic's records as CloudEvents: type, id, key and a short view of the data."""
    asyncio.run(_tail(NewsflowSettings(), topic, limit, from_beginning))


async def _tail(settings: NewsflowSettings, topic: str, limit: int, from_beginning: bool) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic_prefix + topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    try:
        async for record in consumer:
            try:
                meta = EventMeta.from_headers(record.headers)
                kind = meta.type
            except InvalidEvent as exc:
                kind = f"(not a CloudEvent: {exc})"
            key = record.key.decode(errors="replace") if record.key else "-"
            size = len(record.value or b"")
            typer.echo(f"{record.partition}:{record.offset}  {kind}  key={key}  {size} bytes")
            seen += 1
            if limit and seen >= limit:
                break
    finally:
        await consumer.stop()


import_app = typer.Typer(help="Import content into ingest.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("page")
def import_page(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A plain-text page.")],
    provider: Annotated[str, typer.Option(help="Provider the articles are filed under.")],
    section: Annotated[str | None, typer.Option(help="Section hint (default: the page's).")] = None,
    ingest_url: Annotated[str, typer.Option(envvar="NEWSFLOW_INGEST_URL")] = (
        "http://127.0.0.1:8001"
    ),
    api_key: Annotated[
        str, typer.Option(envvar="NEWSFLOW_INGEST_API_KEY", help="The provider's key.")
    ] = "",
    image_url: Annotated[str | None, typer.Option(help="Photo the credit belongs to.")] = None,
    namespace: Annotated[str, typer.Option(help="uri prefix")] = "urn:newsflow:{provider}:",
) -> None:
    """Post a page's main story and each "More from" story (idempotent on re-import)."""
    from ops.page_import import page_articles, parse_page, post_batch

    page = parse_page(file.read_text(encoding="utf-8"))
    articles = page_articles(
        page, provider, section, namespace.format(provider=provider), image_url
    )
    result = post_batch(ingest_url, api_key, articles)
    for item in result["results"]:
        typer.echo(f"{item['status']:9} {item.get('uri', '-')}  {item.get('detail', '')}".rstrip())
    if result["rejected"] or result["failed"]:
        raise typer.Exit(1)
