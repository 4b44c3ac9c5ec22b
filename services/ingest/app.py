"""ingest's HTTP entrypoint: thin routes that read requests, check who sends them, and call in."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import orjson
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from redis.exceptions import RedisError
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.domain import (
    ApiKey,
    Forbidden,
    IdempotencyStore,
    Intake,
    KeyRing,
    RateLimiter,
    Receipt,
    StoredResponse,
    TooLarge,
    UnknownArticle,
    VersionConflict,
    authorise,
    check_limits,
    clean_payload,
    needs_cleaning,
    semantic_errors,
)
from services.ingest.feeds import FeedError, FeedIn, FeedPoller, FeedRegistry, FeedStatus
from services.ingest.settings import IngestSettings
from shared.events import Article
from shared.http import (
    NO_NATIVE_TELEMETRY,
    Problem,
    add_health_routes,
    install_problem_handlers,
    problem_response,
)
from shared.logging import get_logger
from shared.metrics import Children

log = get_logger(__name__)

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
UNAVAILABLE = (TimeoutError, KafkaError, RedisError, OSError)


class Accepted(BaseModel):
    uri: str
    version: int
    event_id: str
    type: str


class Withdrawal(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, examples=["Legal request"])


class BatchIn(BaseModel):
    """Up to `max_batch_items` articles; each one is judged on its own."""

    articles: list[Article] = Field(max_length=500)


class ItemResult(BaseModel):
    index: int
    status: Literal["accepted", "duplicate", "rejected", "failed"]
    uri: str | None = None
    version: int | None = None
    event_id: str | None = None
    type: str | None = None
    code: str | None = None
    detail: str | None = None
    errors: list[dict[str, str]] | None = None


class BatchOut(BaseModel):
    accepted: int
    rejected: int
    failed: int
    results: list[ItemResult]


class ProblemBody(BaseModel):
    """RFC 9457 problem details, with the field errors when there are any."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    errors: list[dict[str, str]] | None = None


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
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class PlainRoute(APIRoute):
    """A route whose endpoint reads the `Request` and returns the `Response` itself: documented
    in OpenAPI like any other, but FastAPI's parameter solving is skipped on the hot path."""

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


class HotPath:
    """The innermost middleware: a request for one `PlainRoute` goes straight to its endpoint,
    skipping what lies between the middlewares and it (ExceptionMiddleware,
    AsyncExitStackMiddleware, the router's match over every route, `request_response`): ~40 µs
    of CPU less a story at 32 concurrent requests (`bench.ingest_cpu`, `bench.ingest`).

    Every middleware outside this one (`ObservedRequests`' trace and latency, the crash handler
    of `ServerErrorMiddleware`, OpenTelemetry's) sees these requests as it sees any other; a
    `Problem` is answered as the app's handler answers it. Under a `root_path`, or with FastAPI's
    own telemetry on (it names the route from the router), requests go the normal way.
    """

    def __init__(self, app: ASGIApp, route: PlainRoute) -> None:
        self.app = app
        self.route = route
        self.methods = route.methods or set()
        self.endpoint: Endpoint = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.route.path
            or scope["method"] not in self.methods
            or scope.get("root_path")
            or scope.get("fastapi.telemetry") is not None
        ):
            await self.app(scope, receive, send)
            return
        # What the router would have added: `ObservedRequests` labels its histogram by `route`.
        scope.update(endpoint=self.endpoint, path_params={}, route=self.route)
        try:
            response = await self.endpoint(Request(scope, receive, send))
        except Problem as problem:
            response = problem_response(problem)
        await response(scope, receive, send)


@dataclass
class IngestRuntime:
    """What the lifespan opens: the intake and the stores the routes need."""

    intake: Intake
    ready: Ready
    rate_limiter: RateLimiter
    idempotency: IdempotencyStore
    feeds: FeedRegistry
    vet_feed_url: Callable[[str], Awaitable[None]]
    poller: FeedPoller | None = None


IntakeFactory = Callable[[IngestSettings], Any]
"""`factory(settings)` is an async context manager yielding an `IngestRuntime`."""


def get_runtime_now(request: Request) -> IngestRuntime:
    runtime: IngestRuntime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> IngestRuntime:
    return get_runtime_now(request)


def identify(request: Request) -> ApiKey:
    """The key on `Authorization: Bearer <key>`; never logged, compared as a digest."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "unauthenticated",
            "send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    keys: KeyRing = request.app.state.keys
    key = keys.identify(token.strip())
    if key is None:
        raise Problem(
            401, "invalid_token", "the key is not valid", headers={"WWW-Authenticate": "Bearer"}
        )
    return key


async def caller(request: Request) -> ApiKey:
    return identify(request)


def idempotency_key_of(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is not None and not 1 <= len(value) <= 255:
        raise Problem(
            422,
            "invalid_request",
            "Idempotency-Key must be 1 to 255 characters",
            errors=[{"field": "Idempotency-Key", "message": "1 to 255 characters"}],
        )
    return value


Caller = Annotated[ApiKey, Depends(caller)]
Runtime = Annotated[IngestRuntime, Depends(get_runtime)]
IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Repeats with the same key and body get the first answer back (24 h).",
}


def _problem_content(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}
        },
    }


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _problem_content("No key, or an unknown key"),
    403: _problem_content("The key may not write for this provider or uri"),
    429: _problem_content("Too many articles for this key; retry after `Retry-After`"),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    413: _problem_content("Body, headline or batch over the limit"),
    415: _problem_content("Not `application/json`"),
    422: _problem_content("Invalid fields; each is named in `errors`"),
    503: _problem_content("The broker did not acknowledge; retry after `Retry-After`"),
}


def _json_body(schema: str, example: Any) -> dict[str, Any]:
    return {
        "parameters": [IDEMPOTENCY_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{schema}"},
                    "examples": {"news": {"value": example}},
                }
            },
        },
    }


# A client that sends its whole body before reading the answer (urllib, requests, many CMSes)
# sees a reset instead of our 413 if we close with its body unread; so an oversized body is
# read and dropped, up to this much (beyond it, the answer goes out at once).
DISCARD_AT_MOST = 32 * 1024 * 1024


async def _discard(request: Request, declared: int = 0) -> None:
    if declared > DISCARD_AT_MOST:
        return
    read = 0
    async for chunk in request.stream():
        read += len(chunk)
        if read > DISCARD_AT_MOST:
            return


def create_app(settings: IngestSettings, runtime_factory: IntakeFactory) -> FastAPI:
    metrics = IngestMetrics()
    articles = Children(metrics.articles)  # each outcome's counter, looked up once
    keys: KeyRing = settings.api_keys
    limits = settings.limits
    retry_after = {"Retry-After": str(settings.ingest_retry_after_s)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime_factory(settings) as runtime:
            app.state.runtime = runtime
            for feed in settings.ingest_feeds:
                await runtime.feeds.add(feed)
            task = None
            if runtime.poller is not None:
                task = asyncio.create_task(_poll_forever(runtime.poller, settings), name="feeds")
            try:
                yield
            finally:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app = FastAPI(
        title="newsflow ingest",
        version="1",
        description="Push articles into newsflow. Every accepted version is on "
        "`articles.ingested.v1` before the answer is sent. Send "
        "`Authorization: Bearer <key>`; a key writes only its provider's uris. "
        "`embargoed` articles are accepted and carried: delivery holds them until that time.",
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    install_problem_handlers(app)
    app.state.keys = keys

    async def is_ready() -> bool:
        runtime: IngestRuntime | None = getattr(app.state, "runtime", None)
        return runtime is not None and await runtime.ready()

    add_health_routes(app, metrics.registry, is_ready, topics=settings.topics)

    async def spend(runtime: IngestRuntime, key: ApiKey, cost: int) -> None:
        try:
            wait = await runtime.rate_limiter.hit(key.key_id, cost)
        except RedisError as exc:
            raise Problem(503, "unavailable", "retry later", headers=retry_after) from exc
        if wait is not None:
            metrics.articles.labels("rate_limited").inc(cost)
            raise Problem(
                429,
                "rate_limited",
                f"this key sends more than {settings.ingest_rate_limit} articles "
                f"per {settings.ingest_rate_window_s} s",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )

    def too_large() -> Problem:
        return Problem(
            413, "payload_too_large", f"body exceeds {settings.ingest_max_body_bytes} bytes"
        )

    async def read_json(request: Request) -> tuple[Any, bytes]:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise Problem(415, "unsupported_media_type", "send `Content-Type: application/json`")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.ingest_max_body_bytes:
            await _discard(request, int(length))
            raise too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > settings.ingest_max_body_bytes:
                await _discard(request)
                raise too_large()
        body = b"".join(chunks)
        try:
            payload = orjson.loads(body)
            return (clean_payload(payload) if needs_cleaning(body) else payload), body
        except orjson.JSONDecodeError as exc:
            raise Problem(
                422,
                "invalid_json",
                f"the body is not valid UTF-8 JSON: {exc}",
                errors=[{"field": "body", "message": "not valid JSON"}],
            ) from exc

    def to_article(payload: Any, key: ApiKey) -> Article:
        """Raises `Problem` (422/413/403) naming each bad field."""
        try:
            article = Article.model_validate(payload)
        except ValidationError as exc:
            errors = [_field_error(e) for e in exc.errors()]
            fields = ", ".join(e["field"] for e in errors)
            raise Problem(
                422, "invalid_request", f"invalid field(s): {fields}", errors=errors
            ) from exc
        if semantic := semantic_errors(article):
            fields = ", ".join(e.field for e in semantic)
            raise Problem(
                422,
                "invalid_request",
                f"invalid field(s): {fields}",
                errors=[e.as_dict() for e in semantic],
            )
        try:
            check_limits(article, limits)
            authorise(key, article.provider, article.uri, settings.ingest_uri_namespace)
        except TooLarge as exc:
            raise Problem(
                413, "payload_too_large", str(exc), errors=[e.as_dict() for e in exc.errors]
            ) from exc
        except Forbidden as exc:
            raise Problem(403, "forbidden", str(exc)) from exc
        return article

    async def idempotent(
        runtime: IngestRuntime,
        key: ApiKey,
        idempotency_key: str | None,
        raw: bytes,
        work: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> Response:
        """Runs `work` once per `Idempotency-Key`; a repeat gets the stored answer back."""
        if not idempotency_key:
            status, body = await work()
            return _json(status, body)
        scope = f"{key.key_id}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
        digest = hashlib.sha256(raw).hexdigest()
        try:
            stored = await runtime.idempotency.get(scope)
        except RedisError as exc:
            raise Problem(503, "unavailable", "retry later", headers=retry_after) from exc
        if stored is not None:
            if stored.request_digest != digest:
                raise Problem(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                    errors=[{"field": "Idempotency-Key", "message": "used for another body"}],
                )
            response = Response(stored.body, stored.status, media_type="application/json")
            response.headers["Idempotent-Replayed"] = "true"
            return response
        status, body = await work()
        response = _json(status, body)
        with contextlib.suppress(RedisError):
            await runtime.idempotency.put(
                scope, StoredResponse(digest, status, bytes(response.body))
            )
        return response

    async def accept_one(runtime: IngestRuntime, work: Awaitable[Receipt]) -> tuple[int, Any]:
        try:
            receipt = await work
        except VersionConflict as exc:
            metrics.articles.labels("conflict").inc()
            raise Problem(409, "version_conflict", str(exc)) from exc
        except UnknownArticle as exc:
            raise Problem(
                404, "unknown_article", f"no article with uri {exc} was accepted"
            ) from exc
        except UNAVAILABLE as exc:
            metrics.articles.labels("unavailable").inc()
            log.warning("article not stored", error=repr(exc))
            raise Problem(
                503,
                "broker_unavailable",
                "the article was not stored; retry later",
                headers=retry_after,
            ) from exc
        articles("accepted" if receipt.created else "duplicate").inc()
        return (202 if receipt.created else 200), _receipt(receipt)

    def plain_post(
        path: str, *, hot_path: bool = False, **options: Any
    ) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            app.router.add_api_route(
                path, endpoint, methods=["POST"], route_class_override=PlainRoute, **options
            )
            if hot_path:
                route = app.router.routes[-1]
                assert isinstance(route, PlainRoute) and route.endpoint is endpoint
                # Appended (`add_middleware` would put it outermost): `ObservedRequests` and every
                # other middleware stay outside it and see its requests.
                app.user_middleware.append(Middleware(HotPath, route=route))
            return endpoint

        return register

    @plain_post(
        "/v1/articles",
        hot_path=True,
        status_code=202,
        response_model=Accepted,
        responses={
            200: {"description": "Identical re-post: the original event, nothing new published"},
            404: _problem_content("Never happens here; see withdraw"),
            409: _problem_content("Same or lower version with different content"),
            **AUTH_ERRORS,
            **BODY_ERRORS,
        },
        openapi_extra=_json_body("Article", EXAMPLE_ARTICLE),
    )
    async def post_article(
        request: Request,
    ) -> Response:
        """Accept one article version; answered only once Kafka has the record.

        A higher `version` of a known `uri` is a correction (`newsflow.article.updated`); the
        identical re-post answers `200` with the original `event_id`. Versions go up to
        2^53 - 1, the largest integer every JSON reader keeps exactly (`422` above it).
        """
        # Headers are read by hand: FastAPI's parameter machinery would cost ~0.1 ms a request.
        key, runtime = identify(request), get_runtime_now(request)
        idempotency_key = idempotency_key_of(request)
        payload, raw = await read_json(request)
        article = to_article(payload, key)
        await spend(runtime, key, 1)
        return await idempotent(
            runtime,
            key,
            idempotency_key,
            raw,
            lambda: accept_one(runtime, runtime.intake.accept(article)),
        )

    @plain_post(
        "/v1/articles/batch",
        response_model=BatchOut,
        responses={**AUTH_ERRORS, **BODY_ERRORS},
        openapi_extra=_json_body("BatchIn", {"articles": [EXAMPLE_ARTICLE]}),
    )
    async def post_batch(
        request: Request,
    ) -> Response:
        """Up to 500 articles; each gets its own result, one bad item never sinks the batch."""
        key, runtime = identify(request), get_runtime_now(request)
        idempotency_key = idempotency_key_of(request)
        payload, raw = await read_json(request)
        items = payload.get("articles") if isinstance(payload, dict) else None
        if not isinstance(items, list) or set(payload) != {"articles"}:
            raise Problem(
                422,
                "invalid_request",
                'send {"articles": [...]}',
                errors=[{"field": "articles", "message": "a list of articles is required"}],
            )
        if len(items) > limits.max_batch_items:
            raise Problem(
                413,
                "batch_too_large",
                f"at most {limits.max_batch_items} articles per batch",
                errors=[{"field": "articles", "message": f"{len(items)} items"}],
            )
        await spend(runtime, key, max(1, len(items)))
        return await idempotent(
            runtime, key, idempotency_key, raw, lambda: run_batch(runtime, key, items)
        )

    async def run_batch(runtime: IngestRuntime, key: ApiKey, items: list[Any]) -> tuple[int, Any]:
        results: list[ItemResult | None] = [None] * len(items)
        valid: list[tuple[int, Article]] = []
        for index, item in enumerate(items):
            try:
                valid.append((index, to_article(item, key)))
            except Problem as problem:
                uri = item.get("uri") if isinstance(item, dict) else None
                results[index] = ItemResult(
                    index=index,
                    status="rejected",
                    uri=uri if isinstance(uri, str) else None,
                    code=problem.code,
                    detail=problem.detail,
                    errors=problem.errors,
                )
        outcomes = await runtime.intake.accept_many([article for _, article in valid])
        for (index, article), outcome in zip(valid, outcomes, strict=True):
            results[index] = _item_result(index, article, outcome)
        done = [r for r in results if r is not None]
        for r in done:
            metrics.articles.labels(r.status).inc()
        failed = sum(1 for r in done if r.status == "failed")
        if valid and failed == len(valid):
            raise Problem(
                503, "broker_unavailable", "nothing was stored; retry later", headers=retry_after
            )
        out = BatchOut(
            accepted=sum(1 for r in done if r.status in ("accepted", "duplicate")),
            rejected=sum(1 for r in done if r.status == "rejected"),
            failed=failed,
            results=done,
        )
        return 200, out.model_dump(exclude_none=True)

    @app.post(
        "/v1/articles/{uri:path}/withdraw",
        status_code=202,
        response_model=Accepted,
        responses={
            200: {"description": "Already withdrawn: the original withdrawal event"},
            400: _problem_content("The body is not valid JSON"),
            404: _problem_content("No article with this uri was accepted"),
            **AUTH_ERRORS,
            **BODY_ERRORS,
        },
    )
    async def withdraw_article(
        uri: str, withdrawal: Withdrawal, key: Caller, runtime: Runtime
    ) -> Response:
        """Kill an article (`pubstatus=canceled`): downstream removes it everywhere."""
        uri = unquote(uri)
        try:
            if key.provider is not None:
                authorise(key, key.provider, uri, settings.ingest_uri_namespace)
                owner = await runtime.intake.last_provider(uri)
                if owner is not None:
                    authorise(key, owner, uri, settings.ingest_uri_namespace)
        except Forbidden as exc:
            raise Problem(403, "forbidden", str(exc)) from exc
        except UNAVAILABLE as exc:
            raise Problem(503, "unavailable", "retry later", headers=retry_after) from exc
        await spend(runtime, key, 1)
        status, body = await accept_one(runtime, runtime.intake.withdraw(uri, withdrawal.reason))
        return _json(status, body)

    feed_errors: dict[int | str, dict[str, Any]] = {
        400: _problem_content("The body is not valid JSON"),
        401: AUTH_ERRORS[401],
        403: AUTH_ERRORS[403],
        422: _problem_content("Invalid fields, or a feed URL that is refused"),
        503: BODY_ERRORS[503],
    }

    @app.post("/v1/feeds", status_code=201, response_model=FeedStatus, responses=feed_errors)
    async def add_feed(feed: FeedIn, key: Caller, runtime: Runtime) -> FeedStatus:
        """Register an RSS 2.0 or Atom feed; it is polled every `interval_s` seconds."""
        if key.provider is not None and key.provider != feed.provider:
            raise Problem(403, "forbidden", f"this key registers feeds for {key.provider!r} only")
        try:
            await runtime.vet_feed_url(str(feed.url))
        except FeedError as exc:
            raise Problem(
                422,
                "feed_url_refused",
                str(exc),
                errors=[{"field": "url", "message": str(exc)}],
            ) from exc
        try:
            await runtime.feeds.add(feed)
            found = [s for s in await runtime.feeds.all() if s.id == feed.id]
        except RedisError as exc:
            raise Problem(503, "unavailable", "retry later", headers=retry_after) from exc
        return found[0]

    @app.get("/v1/feeds", response_model=list[FeedStatus], responses=feed_errors)
    async def list_feeds(key: Caller, runtime: Runtime) -> list[FeedStatus]:
        """Every feed this key may see, with how its last poll went (`state.status`)."""
        try:
            feeds = await runtime.feeds.all()
        except RedisError as exc:
            raise Problem(503, "unavailable", "retry later", headers=retry_after) from exc
        return [s for s in feeds if key.provider in (None, s.feed.provider)]

    @app.delete(
        "/v1/feeds/{feed_id}",
        status_code=204,
        responses={**feed_errors, 404: _problem_content("No such feed")},
    )
    async def remove_feed(feed_id: str, key: Caller, runtime: Runtime) -> Response:
        """Stop polling a feed."""
        try:
            feeds = {s.id: s for s in await runtime.feeds.all()}
            found = feeds.get(feed_id)
            if found is None or key.provider not in (None, found.feed.provider):
                raise Problem(404, "not_found", f"no feed {feed_id}")
            await runtime.feeds.remove(feed_id)
        except RedisError as exc:
            raise Problem(503, "unavailable", "retry later", headers=retry_after) from exc
        return Response(status_code=204)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [(Article, "validation"), (BatchIn, "validation"), (ProblemBody, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs["$defs"])
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _poll_forever(poller: FeedPoller, settings: IngestSettings) -> None:
    while True:
        try:
            await poller.poll_due(datetime.now(UTC))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("feed polling round failed")
        await asyncio.sleep(settings.ingest_feed_tick_s)


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _receipt(receipt: Receipt) -> dict[str, Any]:
    return {
        "uri": receipt.uri,
        "version": receipt.version,
        "event_id": receipt.event_id,
        "type": receipt.type,
    }


def _item_result(index: int, article: Article, outcome: Receipt | Exception) -> ItemResult:
    if isinstance(outcome, Receipt):
        return ItemResult(
            index=index,
            status="accepted" if outcome.created else "duplicate",
            **_receipt(outcome),
        )
    if isinstance(outcome, VersionConflict):
        return ItemResult(
            index=index, status="rejected", uri=article.uri, code="version_conflict",
            detail=str(outcome),
        )  # fmt: skip
    return ItemResult(
        index=index,
        status="failed",
        uri=article.uri,
        code="broker_unavailable",
        detail="not stored; send this item again",
    )


def _field_error(error: Any) -> dict[str, str]:
    loc = [str(part) for part in error.get("loc", ())]
    return {"field": ".".join(loc) or "body", "message": str(error.get("msg", "invalid"))}
