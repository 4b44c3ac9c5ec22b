"""What every service's FastAPI app shares: RFC 9457 errors, bearer tokens, health, metrics."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.asyncapi import document as asyncapi_document
from shared.events import Topics
from shared.metrics import instrument_http

PROBLEM_JSON = "application/problem+json"
# FastAPI's own OpenTelemetry bridge looks on every request whether a global provider is set
# (three environment lookups, ~4 µs a request). newsflow traces through its own switch
# (`NEWSFLOW_OTEL_ENABLED`, `shared.tracing`): the bridge is off.
NO_NATIVE_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class Problem(Exception):
    """An error a client can act on: rendered as `application/problem+json` with a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def problem_response(problem: Problem) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://newsflow.dev/problems/{problem.code}",
        "title": problem.code.replace("_", " "),
        "status": problem.status,
        "code": problem.code,
        "detail": problem.detail,
    }
    if problem.errors:
        body["errors"] = problem.errors
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json naming what was wrong; never a bare 500 with a trace."""

    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [_field_error(e) for e in exc.errors()]
        fields = ", ".join(e["field"] for e in errors)
        return problem_response(
            Problem(422, "invalid_request", f"invalid field(s): {fields}", errors=errors)
        )

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(
            Problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
        )

    async def on_crash(_: Request, exc: Exception) -> Response:
        return problem_response(Problem(500, "internal_error", "unexpected error; it is logged"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)


def _field_error(error: Any) -> dict[str, str]:
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    return {"field": ".".join(loc) or "body", "message": str(error.get("msg", "invalid"))}


class BearerTokens:
    """Checks `Authorization: Bearer <token>` against tokens kept only as SHA-256 digests."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens if t]

    def check(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Problem(
                401,
                "unauthenticated",
                "send `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = _digest(token.strip())
        if not any(hmac.compare_digest(digest, known) for known in self._digests):
            raise Problem(
                401,
                "invalid_token",
                "the token is not valid",
                headers={"WWW-Authenticate": "Bearer"},
            )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def add_health_routes(
    app: FastAPI,
    registry: CollectorRegistry,
    is_ready: Callable[[], Awaitable[bool]],
    service: str | None = None,
    topics: Topics | None = None,
) -> None:
    """`/healthz` (the process answers), `/readyz` (it can do its work), `/metrics` (Prometheus),
    `/asyncapi.json` (with this deployment's topic names); and a latency histogram of every
    HTTP route."""
    instrument_http(app, registry, service or app.title.removeprefix("newsflow ").strip() or "app")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if await is_ready():
            return JSONResponse({"status": "ready"})
        return problem_response(Problem(503, "not_ready", "dependencies are not ready yet"))

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> dict[str, Any]:
        """The AsyncAPI 3.0 description of every topic (the Kafka side of the contract)."""
        return asyncapi_document(topics)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
