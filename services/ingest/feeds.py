"""RSS/Atom feeds: the registry's records, entry -> Article, and the polling round over ports.

Fetching and storage are ports (adapters.py has the aiohttp fetcher and the Redis registry).
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import feedparser
from pydantic import AnyHttpUrl, BaseModel, Field, ValidationError

from services.ingest.domain import (
    Intake,
    Limits,
    VersionConflict,
    clean_payload,
    html_to_text,
    sanitise_html,
    uri_namespace,
)
from shared.events import Article, ContractModel
from shared.logging import get_logger
from shared.ssrf import TargetRefused, check_addresses

log = get_logger(__name__)


class FeedIn(ContractModel):
    """A feed to poll, as ops register it."""

    url: AnyHttpUrl = Field(examples=["https://wire.example.com/world.rss"])
    provider: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    section: str | None = Field(default=None, description="Section hint when entries have none.")
    interval_s: int = Field(default=300, ge=1, le=86_400, description="Seconds between polls.")

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.provider} {self.url}".encode()).hexdigest()[:16]


FeedHealth = Literal["pending", "ok", "not_modified", "error"]


class FeedState(BaseModel):
    """What the last poll of a feed found; shown in `GET /v1/feeds`."""

    status: FeedHealth = "pending"
    last_polled_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    entries_accepted: int = 0
    entries_rejected: int = 0


class FeedStatus(BaseModel):
    id: str
    feed: FeedIn
    state: FeedState


@dataclass(frozen=True)
class Fetched:
    status: int
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None


class FeedFetcher(Protocol):
    async def fetch(self, url: str, etag: str | None, last_modified: str | None) -> Fetched:
        """A conditional GET; raises `FeedError` for what cannot be fetched."""


class FeedRegistry(Protocol):
    async def add(self, feed: FeedIn) -> None: ...

    async def remove(self, feed_id: str) -> bool: ...

    async def all(self) -> list[FeedStatus]: ...

    async def save_state(self, feed_id: str, state: FeedState) -> None: ...

    async def claim(self, feed_id: str, for_s: float) -> bool:
        """True for exactly one replica per interval: the one that polls the feed now."""


class FeedError(Exception):
    pass


# --- SSRF: a feed URL must not reach into our own network ------------------------------------


def check_feed_host(host: str, addresses: Iterable[str], allow_private: bool) -> None:
    """The shared SSRF policy (shared/ssrf.py), refusals as feed errors."""
    try:
        check_addresses(host, addresses, allow_private)
    except TargetRefused as exc:
        raise FeedError(str(exc)) from exc


# --- entry -> Article -----------------------------------------------------------------------


def _epoch(parsed: Any) -> int | None:
    return calendar.timegm(parsed) if parsed else None


def _when(parsed: Any) -> datetime | None:
    seconds = _epoch(parsed)
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def entry_uri(namespace: str, guid: str) -> str:
    uri = namespace + quote(guid.strip(), safe=":/?#[]@!$&'()*+,;=-._~%")
    if len(uri) > 512:
        uri = namespace + "sha256:" + hashlib.sha256(guid.encode()).hexdigest()
    return uri


def _images(entry: Any) -> list[dict[str, Any]]:
    credits = [c.get("content") for c in entry.get("media_credit", []) if c.get("content")]
    credit = credits[0] if credits else None
    # feedparser files <media:description> under `content` as text/plain.
    plain = [c.get("value") for c in entry.get("content", []) if c.get("type") == "text/plain"]
    caption = entry.get("media_description") or (plain[0] if plain else None)
    hrefs: list[str] = []
    for media in entry.get("media_content", []):
        kind = media.get("type", "") or ""
        if media.get("url") and (media.get("medium") == "image" or kind.startswith("image/")):
            hrefs.append(media["url"])
    for link in entry.get("links", []):
        if link.get("rel") == "enclosure" and (link.get("type") or "").startswith("image/"):
            hrefs.append(link.get("href", ""))
    hrefs.extend(t.get("url", "") for t in entry.get("media_thumbnail", []))
    unique = list(dict.fromkeys(h for h in hrefs if h))
    return [{"href": href, "caption": caption, "credit": credit} for href in unique]


def entry_to_article(
    entry: Any, feed: FeedIn, language: str | None, namespace_template: str, limits: Limits
) -> Article:
    """One feed entry as an article version (`updated` becomes the version: epoch seconds).

    Raises `ValidationError` when the entry cannot make a valid article.
    """
    guid = entry.get("id") or entry.get("link") or entry.get("title") or ""
    # dict.get: feedparser's own get() maps updated->published with a DeprecationWarning.
    published = dict.get(entry, "published_parsed")
    updated = dict.get(entry, "updated_parsed") or published
    terms = [t.get("term") for t in entry.get("tags", []) if t.get("term")]
    summary_html = sanitise_html(entry.get("summary", "") or "")
    contents = [c for c in entry.get("content", []) if "html" in (c.get("type") or "")]
    body_html = contents[0].get("value", "") if contents else summary_html
    headline = (entry.get("title") or "").strip()
    if len(headline) > limits.max_headline_chars:
        headline = headline[: limits.max_headline_chars - 1].rstrip() + "…"
    payload: dict[str, Any] = {
        "uri": entry_uri(uri_namespace(namespace_template, feed.provider), guid),
        "version": _epoch(updated) or 1,
        "firstcreated": _when(published),
        "headline": headline,
        "summary": html_to_text(summary_html) or None,
        "body_html": body_html,
        "byline": entry.get("author") or None,
        "provider": feed.provider,
        "url": entry.get("link") or None,
        "section": terms[0] if terms else feed.section,
        "keywords": terms[1:],
        "images": _images(entry),
    }
    if updated:
        payload["versioncreated"] = _when(updated)
    if language:
        payload["language"] = language.split("_")[0]
    return Article.model_validate(
        clean_payload({k: v for k, v in payload.items() if v is not None})
    )


# --- one polling round ----------------------------------------------------------------------


class FeedPoller:
    """Polls the feeds that are due; a broken feed is recorded in its state, never fatal."""

    def __init__(
        self,
        registry: FeedRegistry,
        fetcher: FeedFetcher,
        intake: Intake,
        namespace_template: str,
        limits: Limits,
    ) -> None:
        self._registry = registry
        self._fetcher = fetcher
        self._intake = intake
        self._namespace = namespace_template
        self._limits = limits

    async def poll_due(self, now: datetime) -> None:
        due = [s for s in await self._registry.all() if _is_due(s, now)]
        await asyncio.gather(*(self._poll_claimed(s, now) for s in due))

    async def _poll_claimed(self, status: FeedStatus, now: datetime) -> None:
        if await self._registry.claim(status.id, status.feed.interval_s * 0.9):
            await self.poll(status, now)

    async def poll(self, status: FeedStatus, now: datetime) -> FeedState:
        state = status.state.model_copy(update={"last_polled_at": now})
        try:
            fetched = await self._fetcher.fetch(
                str(status.feed.url), state.etag, state.last_modified
            )
            if fetched.status == 304:
                state = state.model_copy(update={"status": "not_modified", "last_error": None})
            elif fetched.status != 200:
                raise FeedError(f"HTTP {fetched.status}")
            else:
                state = await self._take(status.feed, fetched, state)
                state = state.model_copy(
                    update={
                        "etag": fetched.etag,
                        "last_modified": fetched.last_modified,
                        "last_success_at": now,
                    }
                )
        except Exception as exc:  # one broken feed must never stop the others
            log.warning(
                "feed poll failed", feed_id=status.id, url=str(status.feed.url), error=str(exc)
            )
            state = state.model_copy(update={"status": "error", "last_error": str(exc)[:500]})
        await self._registry.save_state(status.id, state)
        return state

    async def _take(self, feed: FeedIn, fetched: Fetched, state: FeedState) -> FeedState:
        parsed = feedparser.parse(fetched.body)
        if parsed.get("bozo") and not parsed.entries:
            raise FeedError(f"not a feed: {parsed.get('bozo_exception')}")
        language = parsed.feed.get("language")
        articles: list[Article] = []
        rejected = 0
        for entry in parsed.entries:
            try:
                articles.append(
                    entry_to_article(entry, feed, language, self._namespace, self._limits)
                )
            except ValidationError as exc:
                rejected += 1
                log.warning("feed entry rejected", url=str(feed.url), error=str(exc)[:300])
        results = await self._intake.accept_many(articles)
        failures = [r for r in results if isinstance(r, Exception)]
        broker_failures = [r for r in failures if not isinstance(r, VersionConflict | ValueError)]
        if broker_failures:
            # Not stored: keep the old validators so the next poll fetches the whole feed again.
            raise FeedError(f"{len(broker_failures)} entries not stored: {broker_failures[0]}")
        accepted = sum(1 for r in results if not isinstance(r, Exception) and r.created)
        return state.model_copy(
            update={
                "status": "ok",
                "last_error": None,
                "entries_accepted": state.entries_accepted + accepted,
                "entries_rejected": state.entries_rejected + rejected + len(failures),
            }
        )


def _is_due(status: FeedStatus, now: datetime) -> bool:
    last = status.state.last_polled_at
    return last is None or (now - last).total_seconds() >= status.feed.interval_s


def feed_host(url: str) -> str:
    return urlsplit(url).hostname or ""
