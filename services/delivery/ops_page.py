"""The `/ops` status page's HTTP side: a login form for the admin token, then the page.

A browser cannot send a bearer header, so the token is posted once and kept in an HttpOnly,
SameSite=Strict cookie holding only its SHA-256 digest (never the token itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from prometheus_client import CollectorRegistry

from services.delivery.domain import RecentDelivery, Subscription
from services.delivery.status_page import (
    STYLE,
    LatestStory,
    Pulse,
    StatusView,
    SubscriptionHealth,
    render,
)

COOKIE = "newsflow_ops"
RECENT_ATTEMPTS = 100
STORIES_PER_SECTION = 5


class StatusSource(Protocol):
    """What the page reads: subscriptions, their recent attempts, the cache."""

    async def subscriptions(self) -> Sequence[Subscription]: ...

    async def recent(self, subscription_ids: Sequence[str], limit: int) -> list[RecentDelivery]: ...

    async def sections(self) -> list[str]: ...

    async def latest(self, section_id: str, limit: int) -> list[bytes]: ...


@dataclass(frozen=True)
class AdminCookie:
    token: str

    @property
    def value(self) -> str:
        return hashlib.sha256(f"newsflow-ops:{self.token}".encode()).hexdigest()

    def matches(self, value: str | None) -> bool:
        return bool(self.token) and hmac.compare_digest(value or "", self.value)


def health_of(
    subscription: Subscription, attempts: list[dict[str, Any]], dead: int
) -> SubscriptionHealth:
    """Success rate over the recent attempts; backlog = messages still waiting for a retry
    (latest attempt failed with a retry scheduled) plus dead letters."""
    latest_by_message: dict[str, dict[str, Any]] = {}
    for attempt in attempts:  # newest first
        latest_by_message.setdefault(attempt["webhook_id"], attempt)
    waiting = sum(
        1 for a in latest_by_message.values() if a["outcome"] == "failed" and a.get("next_retry_at")
    )
    last_error = next((a.get("error") for a in attempts if a["outcome"] != "delivered"), None)
    return SubscriptionHealth(
        id=subscription.id,
        url=subscription.url,
        description=subscription.description,
        state=subscription.status,
        attempts=len(attempts),
        delivered=sum(1 for a in attempts if a["outcome"] == "delivered"),
        last_error=last_error,
        last_attempt_at=datetime.fromisoformat(attempts[0]["attempted_at"]) if attempts else None,
        backlog=waiting + dead,
    )


async def gather(source: StatusSource, pulse: Pulse) -> StatusView:
    subscriptions = await source.subscriptions()
    recent = await source.recent([s.id for s in subscriptions], RECENT_ATTEMPTS)
    health = [
        health_of(s, deliveries.attempts, deliveries.dead_letters)
        for s, deliveries in zip(subscriptions, recent, strict=True)
    ]
    latest: dict[str, list[LatestStory]] = {}
    for section_id in await source.sections():
        stories = [json.loads(raw) for raw in await source.latest(section_id, STORIES_PER_SECTION)]
        latest[section_id] = [
            LatestStory(s["uri"], s["headline"], s.get("versioncreated", "")) for s in stories
        ]
    return StatusView(health, list(pulse.rates), list(pulse.lags), latest)


LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>newsflow status: sign in</title><style>{style}</style></head><body>
<h1>newsflow delivery status</h1>{error}
<form method="post" action="/ops/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button id="sign-in" type="submit">Sign in</button></form></body></html>"""


def add_ops_routes(
    app: FastAPI,
    admin_token: str,
    source_of: Callable[[Request], StatusSource],
    pulse: Pulse,
    *,
    secure_cookie: bool = False,
) -> None:
    cookie = AdminCookie(admin_token)

    def login_page(error: str = "", status: int = 200) -> HTMLResponse:
        message = f"<p class='bad'>{html.escape(error)}</p>" if error else ""
        return HTMLResponse(LOGIN.format(style=STYLE, error=message), status_code=status)

    @app.get("/ops", include_in_schema=False, response_model=None)
    async def ops(request: Request) -> Response:
        if not cookie.matches(request.cookies.get(COOKIE)):
            return RedirectResponse("/ops/login", status_code=303)
        view = await gather(source_of(request), pulse)
        return HTMLResponse(render(view), headers={"Cache-Control": "no-store"})

    @app.get("/ops/login", include_in_schema=False)
    async def login_form() -> HTMLResponse:
        return login_page()

    @app.post("/ops/login", include_in_schema=False, response_model=None)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        token = (form.get("token") or [""])[0]
        if not admin_token or not hmac.compare_digest(token, admin_token):
            return login_page("That token is not valid.", status=401)
        response = RedirectResponse("/ops", status_code=303)
        response.set_cookie(
            COOKIE, cookie.value, httponly=True, samesite="strict", secure=secure_cookie
        )
        return response


async def sample_forever(pulse: Pulse, registry: CollectorRegistry, service: str) -> None:
    """Feeds the page's sparklines from this process's own metrics."""
    while True:
        delivered = registry.get_sample_value(
            f"newsflow_{service}_webhooks_total", {"outcome": "delivered"}
        )
        lag = sum(
            sample.value
            for metric in registry.collect()
            if metric.name == f"newsflow_{service}_consumer_lag_records"
            for sample in metric.samples
        )
        pulse.sample(delivered or 0.0, lag)
        await asyncio.sleep(pulse.interval_s)
