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
demo_app = typer.Typer(help="The demo: a sample partner and sample stories.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
docs_app = typer.Typer(help="Documents generated from the code.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


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


@docs_app.command("write")
def docs_write() -> None:
    """Regenerate docs/asyncapi.yaml and docs/configuration.md from the code."""
    from ops.docs import write

    for path in write():
        typer.echo(f"wrote {path}")


@demo_app.command("seed")
def demo_seed(
    partner_url: Annotated[str, typer.Option(envvar="DEMO_PARTNER_URL")],
    partner_secret: Annotated[str, typer.Option(envvar="DEMO_PARTNER_SECRET")],
    api_keys: Annotated[
        str, typer.Option("--api-key", envvar="NEWSFLOW_INGEST_API_KEYS", help="First one is used")
    ],
    admin_token: Annotated[str, typer.Option(envvar="NEWSFLOW_ADMIN_TOKEN")],
    ingest_url: Annotated[str, typer.Option(envvar="DEMO_INGEST_URL")] = ("http://127.0.0.1:8001"),
    delivery_url: Annotated[str, typer.Option(envvar="DEMO_DELIVERY_URL")] = (
        "http://127.0.0.1:8003"
    ),
) -> None:
    """Subscribe the sample partner and ingest the sample stories into a running newsflow."""
    from ops.devrun import Endpoints, seed

    seed(
        Endpoints(ingest_url, delivery_url),
        api_key=api_keys.split(",")[0].strip(),
        admin_token=admin_token,
        partner_url=partner_url,
        partner_secret=partner_secret,
    )
