"""ingest's HTTP entrypoint: thin routes that translate requests and call the Intake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import unquote

from aiokafka.errors import KafkaError
from fastapi import Body, Depends, FastAPI, Header, Request, Response
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from services.ingest.domain import Intake, Receipt, UnknownArticle, VersionConflict
from services.ingest.settings import IngestSettings
from shared.events import Article
from shared.http import BearerTokens, Problem, add_health_routes, install_problem_handlers

EXAMPLE_ARTICLE: dict[str, Any] = {
    "uri": "urn:newsflow:acme:2026-0001",
    "version": 1,
    "headline": "Council approves new tram line",
    "summary": "The line links the harbour to the university.",
    "body_html": "<p>The city council voted 31 to 12 on Tuesday...</p>",
    "byline": "Ada Reporter",
    "provider": "acme",
    "section": "Politics",
    "language": "en",
    "urgency": 4,
}


class Accepted(BaseModel):
    uri: str
    version: int
    event_id: str
    type: str


class Withdrawal(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, examples=["Legal request"])


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.articles = Counter(
            "newsflow_ingest_articles",
            "Article versions handled, by outcome",
            ["outcome"],
            registry=self.registry,
        )


Ready = Callable[[], Awaitable[bool]]


def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    keys: BearerTokens = request.app.state.api_keys
    keys.check(authorization)


def get_intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


IntakeDep = Annotated[Intake, Depends(get_intake)]
IntakeFactory = Callable[[IngestSettings], Any]


def create_app(settings: IngestSettings, intake_factory: IntakeFactory) -> FastAPI:
    """`intake_factory(settings)` is an async context manager yielding `(Intake, ready)`."""
    metrics = IngestMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with intake_factory(settings) as (intake, ready):
            app.state.intake = intake
            app.state.ready = ready
            yield

    app = FastAPI(
        title="newsflow ingest",
        version="1",
        description="Push articles into newsflow. Every accepted version is on "
        "`articles.ingested.v1` before the answer is sent.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.state.api_keys = BearerTokens(settings.api_keys)

    async def is_ready() -> bool:
        ready: Ready | None = getattr(app.state, "ready", None)
        return ready is not None and await ready()

    add_health_routes(app, metrics.registry, is_ready)

    def json_body(request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise Problem(415, "unsupported_media_type", "send `Content-Type: application/json`")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.ingest_max_body_bytes:
            raise Problem(
                413,
                "payload_too_large",
                f"body exceeds {settings.ingest_max_body_bytes} bytes",
            )

    guarded = [Depends(authorised), Depends(json_body)]

    @app.post(
        "/v1/articles",
        status_code=202,
        response_model=Accepted,
        dependencies=guarded,
        responses={
            200: {"description": "Identical re-post: the original event, nothing new published"},
            409: {"description": "Same or lower version with different content"},
            503: {"description": "The broker did not acknowledge; retry after `Retry-After`"},
        },
    )
    async def post_article(
        article: Annotated[Article, Body(openapi_examples={"news": {"value": EXAMPLE_ARTICLE}})],
        intake: IntakeDep,
        response: Response,
    ) -> Accepted:
        """Accept one article version; answered only once Kafka has the record."""
        receipt = await _call(metrics, intake.accept(article))
        if not receipt.created:
            response.status_code = 200
        return _accepted(receipt)

    @app.post(
        "/v1/articles/{uri:path}/withdraw",
        status_code=202,
        response_model=Accepted,
        dependencies=guarded,
    )
    async def withdraw_article(
        uri: str, withdrawal: Withdrawal, intake: IntakeDep, response: Response
    ) -> Accepted:
        """Kill an article: downstream removes it from caches and tells partners."""
        receipt = await _call(metrics, intake.withdraw(unquote(uri), withdrawal.reason))
        if not receipt.created:
            response.status_code = 200
        return _accepted(receipt)

    return app


async def _call(metrics: IngestMetrics, work: Awaitable[Receipt]) -> Receipt:
    try:
        receipt = await work
    except VersionConflict as exc:
        metrics.articles.labels("conflict").inc()
        raise Problem(409, "version_conflict", str(exc)) from exc
    except UnknownArticle as exc:
        raise Problem(404, "unknown_article", f"no article with uri {exc} was accepted") from exc
    except (TimeoutError, KafkaError, RedisError) as exc:
        metrics.articles.labels("unavailable").inc()
        raise Problem(
            503,
            "broker_unavailable",
            "the article was not stored; retry later",
            headers={"Retry-After": "5"},
        ) from exc
    metrics.articles.labels("accepted" if receipt.created else "duplicate").inc()
    return receipt


def _accepted(receipt: Receipt) -> Accepted:
    return Accepted(
        uri=receipt.uri, version=receipt.version, event_id=receipt.event_id, type=receipt.type
    )
