"""ingest's rules: what an accepted article version is, and how its HTML is made safe. No I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import nh3

from shared.events import Article, EventMeta, EventType, event_type_for

# What a story body may keep: paragraphs, links, lists, emphasis, headings, figures and images.
ALLOWED_TAGS = {
    "p", "br", "a", "ul", "ol", "li", "em", "strong", "b", "i", "blockquote",
    "h2", "h3", "h4", "h5", "h6", "figure", "figcaption", "img",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}}


def sanitise_html(html: str) -> str:
    return nh3.clean(
        html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https"}
    )


def fingerprint(article: Article) -> str:
    """Identifies the content a partner sent, so an identical re-post can be recognised."""
    payload = article.model_dump_json(exclude={"versioncreated"}, exclude_none=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """What ingest remembers of the last accepted version of a uri."""

    version: int
    event_id: str
    event_type: str
    fingerprint: str
    article_json: str


class Ledger(Protocol):
    async def get(self, uri: str) -> LedgerEntry | None: ...

    async def put(self, uri: str, entry: LedgerEntry) -> None: ...


class ArticlePublisher(Protocol):
    async def publish(self, article: Article, meta: EventMeta) -> None:
        """Returns only once the broker acknowledged the record (acks=all)."""


@dataclass(frozen=True)
class Receipt:
    uri: str
    version: int
    event_id: str
    type: str
    created: bool  # False: an identical re-post; nothing new was published


class VersionConflict(Exception):
    def __init__(self, uri: str, version: int, latest: int) -> None:
        super().__init__(
            f"{uri} version {version} differs from what was accepted and is not newer than "
            f"version {latest}; send a higher version to correct it"
        )


class UnknownArticle(Exception):
    pass


class Intake:
    """Accepts article versions: publishes new ones, recognises re-posts, refuses stale ones."""

    def __init__(self, publisher: ArticlePublisher, ledger: Ledger, source: str) -> None:
        self._publisher = publisher
        self._ledger = ledger
        self._source = source

    async def accept(self, article: Article) -> Receipt:
        article = article.model_copy(update={"body_html": sanitise_html(article.body_html)})
        previous = await self._ledger.get(article.uri)
        digest = fingerprint(article)
        if previous is not None:
            if previous.fingerprint == digest:
                return Receipt(
                    article.uri, previous.version, previous.event_id, previous.event_type, False
                )
            if article.version <= previous.version:
                raise VersionConflict(article.uri, article.version, previous.version)
        event_type = event_type_for(article, previous.version if previous else None)
        meta = EventMeta.new(event_type, self._source)
        await self._publisher.publish(article, meta)
        entry = LedgerEntry(
            article.version, meta.id, event_type, digest, article.model_dump_json(exclude_none=True)
        )
        await self._ledger.put(article.uri, entry)
        return Receipt(article.uri, article.version, meta.id, event_type, True)

    async def withdraw(self, uri: str, reason: str) -> Receipt:
        """A kill: the next version with `pubstatus=canceled`; consumers remove it everywhere."""
        previous = await self._ledger.get(uri)
        if previous is None:
            raise UnknownArticle(uri)
        if previous.event_type == EventType.WITHDRAWN:
            return Receipt(uri, previous.version, previous.event_id, previous.event_type, False)
        last = Article.model_validate_json(previous.article_json)
        note = f"WITHDRAWN: {reason}".strip()
        killed = last.model_copy(
            update={
                "version": last.version + 1,
                "versioncreated": datetime.now(UTC),
                "pubstatus": "canceled",
                "summary": note,
            }
        )
        return await self.accept(killed)
