"""`newsflow`: the ops command line (run the dev stack, manage topics, tail a topic)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from shared.events import EventMeta, InvalidEvent
from shared.settings import NewsflowSettings

T = TypeVar("T")

app = typer.Typer(help="newsflow ops commands.", no_args_is_help=True)
topics_app = typer.Typer(help="Create and inspect newsflow's topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(help="Inspect and replay dead-lettered records.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
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


@app.command("secrets-key")
def secrets_key() -> None:
    """Print a new key for NEWSFLOW_DELIVERY_SECRETS_KEY (it seals subscriptions' signing
    secrets on their topic; give every delivery instance the same one)."""
    from services.delivery.adapters import SecretSealer

    print(SecretSealer.new_key())


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


SERVICE_URLS = {
    "ingest": "http://127.0.0.1:8001",
    "enrichment": "http://127.0.0.1:8002",
    "delivery": "http://127.0.0.1:8003",
}


def consumer_groups(settings: NewsflowSettings) -> list[tuple[str, str]]:
    """(group, topic) of every consumer group, incl. delivery's sender on the outbox and on
    each retry tier (the retry backlog). Groups carry the topic prefix."""
    from shared.events import RETRY_TIERS_S

    topics, prefix = settings.topics, settings.topic_prefix
    sender = prefix + "newsflow-delivery-sender"
    return [
        (prefix + "newsflow-enrichment", topics.ingested),
        (prefix + "newsflow-delivery", topics.enriched),
        (sender, topics.outbox),
        *((sender, topics.retry(tier)) for tier in RETRY_TIERS_S),
    ]


@app.command()
def status(
    ingest_url: Annotated[str, typer.Option()] = SERVICE_URLS["ingest"],
    enrichment_url: Annotated[str, typer.Option()] = SERVICE_URLS["enrichment"],
    delivery_url: Annotated[str, typer.Option()] = SERVICE_URLS["delivery"],
) -> None:
    """Health of each service, consumer lag per group and DLQ sizes. Exits 1 if anything is off."""
    from rich.console import Console
    from rich.table import Table

    from ops.devrun import http_json
    from ops.kafka_ops import group_lag, topic_size

    settings = NewsflowSettings()
    topics = settings.topics
    console = Console()
    healthy = True

    services = Table(title="services")
    for column in ("service", "url", "ready"):
        services.add_column(column)
    for name, url in (
        ("ingest", ingest_url),
        ("enrichment", enrichment_url),
        ("delivery", delivery_url),
    ):
        try:
            ready = http_json("GET", f"{url}/readyz", timeout=3)[0] == 200
        except OSError:
            ready = False
        healthy &= ready
        services.add_row(name, url, "[green]ready[/]" if ready else "[red]NOT READY[/]")
    console.print(services)

    async def kafka_figures() -> tuple[list[tuple[str, str, int]], list[tuple[str, int]]]:
        lags = []
        for group, topic in consumer_groups(settings):
            lag = await group_lag(settings.kafka_bootstrap_servers, group, topic)
            lags.append((group, topic, lag.lag))
        dlqs = [
            (spec.name, await topic_size(settings.kafka_bootstrap_servers, spec.name))
            for spec in topics.all()
            if ".dlq." in spec.name
        ]
        return lags, dlqs

    lags, dlqs = asyncio.run(kafka_figures())
    lag_table = Table(title=f"consumer lag ({settings.kafka_bootstrap_servers})")
    for column in ("group", "topic", "lag (records)"):
        lag_table.add_column(column)
    for group, topic, lag in lags:
        lag_table.add_row(group, topic, str(lag))
    console.print(lag_table)
    dlq_table = Table(title="dead-letter queues")
    dlq_table.add_column("topic")
    dlq_table.add_column("records")
    for name, size in dlqs:
        dlq_table.add_row(name, f"[yellow]{size}[/]" if size else "0")
    console.print(dlq_table)
    if not healthy:
        raise typer.Exit(1)


def _read_dlq(work: Coroutine[Any, Any, T]) -> T:
    """Runs a DLQ read; a broker that stops sending is a clear error, not a hang."""
    from ops.kafka_ops import BrokerSilent

    try:
        return asyncio.run(work)
    except BrokerSilent as exc:
        typer.echo(f"error: {exc}; what was done before it is kept: run it again", err=True)
        raise typer.Exit(1) from exc


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Source topic, e.g. articles.ingested.v1")],
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 100,
) -> None:
    """The records parked on `<topic>`'s DLQ, with the error that parked each."""
    from rich.console import Console
    from rich.table import Table

    from ops.kafka_ops import parked, read_all

    settings = NewsflowSettings()
    dlq = settings.topics.dlq(settings.topic_prefix + topic)
    records = _read_dlq(read_all(settings.kafka_bootstrap_servers, dlq, limit))
    table = Table(title=f"{dlq}: {len(records)} record(s)")
    for column in ("partition@offset", "key", "from", "bytes", "error"):
        table.add_column(column, overflow="fold")
    for record in map(parked, records):
        table.add_row(
            f"{record.partition}@{record.offset}",
            record.key,
            record.original,
            str(record.size),
            record.error,
        )
    Console().print(table)


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="Source topic, e.g. articles.ingested.v1")],
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 10_000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
) -> None:
    """Send parked records back to their original topic (after fixing what parked them)."""
    from rich.progress import Progress

    from ops.kafka_ops import replay

    settings = NewsflowSettings()
    dlq = settings.topics.dlq(settings.topic_prefix + topic)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"replaying {dlq}", total=None)
        count = _read_dlq(
            replay(
                settings.kafka_bootstrap_servers,
                dlq,
                limit=limit,
                dry_run=dry_run,
                on_record=lambda _: progress.advance(task),
            )
        )
    verb = "would replay" if dry_run else "replayed"
    typer.echo(f"{verb} {count} record(s) from {dlq}")


# --- delivery: the latest-news cache and subscriptions -------------------------------------

cache_app = typer.Typer(help="The latest-news cache in Redis.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
subs_app = typer.Typer(help="Webhook subscriptions (through delivery's API).", no_args_is_help=True)
app.add_typer(subs_app, name="subs")


@cache_app.command("rebuild")
def cache_rebuild() -> None:
    """Clear the cache keys and rebuild them from the compacted stories.enriched.v1."""
    from services.delivery.main import rebuild_cache_now
    from services.delivery.settings import DeliverySettings

    count = asyncio.run(rebuild_cache_now(DeliverySettings()))
    typer.echo(f"cache rebuilt from {count} stories")


def _subs_call(method: str, path: str, body: dict[str, object] | None = None) -> None:
    from ops.devrun import http_json
    from services.delivery.settings import DeliverySettings

    settings = DeliverySettings()
    base = f"http://{settings.delivery_host}:{settings.delivery_port}/v1/subscriptions"
    status, answer = http_json(method, base + path, body, token=settings.admin_token)
    typer.echo(json.dumps(answer, indent=2, default=str) if answer else f"HTTP {status}")
    if status >= 400:
        raise typer.Exit(1)


@subs_app.command("list")
def subs_list() -> None:
    """Every subscription (never with its secret)."""
    _subs_call("GET", "")


@subs_app.command("add")
def subs_add(
    url: str,
    section: Annotated[list[str] | None, typer.Option(help="Repeat for several.")] = None,
    format: Annotated[str, typer.Option(help="newsflow or ninjs2")] = "newsflow",
) -> None:
    """Subscribe a webhook endpoint; prints the secret once."""
    _subs_call("POST", "", {"url": url, "sections": section or [], "format": format})


@subs_app.command("show")
def subs_show(subscription_id: str) -> None:
    """One subscription: its filters, status and endpoint (never its secret)."""
    _subs_call("GET", f"/{subscription_id}")


@subs_app.command("pause")
@subs_app.command("disable")
def subs_pause(subscription_id: str) -> None:
    """Stop sending to it (`disable` and `pause` are the same); `enable` or `resume` undoes it."""
    _subs_call("POST", f"/{subscription_id}/pause")


@subs_app.command("resume")
@subs_app.command("enable")
def subs_resume(subscription_id: str) -> None:
    """Resume (also re-enables a disabled subscription)."""
    _subs_call("POST", f"/{subscription_id}/resume")


@subs_app.command("recover")
def subs_recover(subscription_id: str, since: str) -> None:
    """Re-send what the subscription missed since an ISO 8601 time."""
    from urllib.parse import quote

    _subs_call("POST", f"/{subscription_id}/recover?since={quote(since)}")


@subs_app.command("reseal")
def subs_reseal() -> None:
    """After rotating NEWSFLOW_DELIVERY_SECRETS_KEY: seal every stored signing secret with the
    first key, so the old one can be dropped."""
    _subs_call("POST", "/reseal")


@subs_app.command("delete")
def subs_delete(subscription_id: str) -> None:
    """Unsubscribe: what is still queued for it is not sent (a request already under way ends)."""
    _subs_call("DELETE", f"/{subscription_id}")


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
