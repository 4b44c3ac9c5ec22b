"""`newsflow import page`: a scraped article page (plain text) into articles posted to ingest.

The page format: the headline, an optional photo credit, the body paragraphs, then a
"More from <Section>" list of bulleted headlines, each followed by its summary.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any

BULLETS = ("•", "*", "-", "·")
_MORE_FROM = re.compile(r"^More from\s+(?P<section>.+?)\s*$")
_SENTENCE_END = (".", "!", "?", '"', "\u201d", "\u2019", "'", ":", ")")


@dataclass(frozen=True)
class ListedStory:
    headline: str
    summary: str


@dataclass(frozen=True)
class Page:
    headline: str
    paragraphs: list[str]
    credit: str | None = None
    section: str | None = None
    more: list[ListedStory] = field(default_factory=list)


def _blocks(lines: list[str]) -> list[str]:
    """Paragraphs: runs of non-blank lines joined by a space."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    return [" ".join(b) for b in blocks if b]


def _looks_like_credit(block: str) -> bool:
    return len(block) <= 120 and not block.endswith(_SENTENCE_END)


def parse_page(text: str) -> Page:
    """Raises `ValueError` when the text has no headline or no body."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    more_at = next((i for i, line in enumerate(lines) if _MORE_FROM.match(line.strip())), None)
    story = _blocks(lines if more_at is None else lines[:more_at])
    if len(story) < 2:
        raise ValueError("a page needs a headline and at least one body paragraph")
    headline, rest = story[0], story[1:]
    credit = None
    if len(rest) > 1 and _looks_like_credit(rest[0]):
        credit, rest = rest[0], rest[1:]
    section = None
    more: list[ListedStory] = []
    if more_at is not None:
        match = _MORE_FROM.match(lines[more_at].strip())
        section = match.group("section") if match else None
        more = _listed(lines[more_at + 1 :])
    return Page(headline, rest, credit, section, more)


def _listed(lines: list[str]) -> list[ListedStory]:
    items: list[tuple[str, list[str]]] = []
    for line in lines:
        stripped = line.strip()
        if stripped[:1] in BULLETS and stripped[1:2].isspace():
            items.append((stripped[1:].strip(), []))
        elif stripped and items:
            items[-1][1].append(stripped)
    return [ListedStory(headline, " ".join(summary)) for headline, summary in items]


def render_page(page: Page) -> str:
    """The page as text in the same format (what `parse_page` reads back)."""
    parts = [page.headline]
    if page.credit:
        parts.append(page.credit)
    parts.extend(page.paragraphs)
    if page.section is not None:
        parts.append(f"More from {page.section}")
        parts.extend(f"  • {s.headline}\n\n    {s.summary}" for s in page.more)
    return "\n\n".join(parts) + "\n"


def story_uri(namespace: str, headline: str) -> str:
    """Stable per headline, so importing the same page twice is an idempotent re-post."""
    slug = "-".join(re.findall(r"[a-z0-9]+", headline.lower()))[:60].strip("-")
    return f"{namespace}page-{slug}-{hashlib.sha256(headline.encode()).hexdigest()[:8]}"


def page_articles(
    page: Page,
    provider: str,
    section: str | None,
    namespace: str,
    image_url: str | None = None,
    language: str = "en",
) -> list[dict[str, Any]]:
    """The main story, then each listed story, all with the section hint."""
    hint = section or page.section
    main: dict[str, Any] = {
        "uri": story_uri(namespace, page.headline),
        "headline": page.headline,
        "summary": page.paragraphs[0],
        "body_html": "".join(f"<p>{html.escape(p)}</p>" for p in page.paragraphs),
        "provider": provider,
        "section": hint,
        "language": language,
    }
    if image_url:
        main["images"] = [{"href": image_url, "credit": page.credit}]
    listed = [
        {
            "uri": story_uri(namespace, story.headline),
            "headline": story.headline,
            "summary": story.summary or None,
            "body_html": f"<p>{html.escape(story.summary)}</p>" if story.summary else "",
            "provider": provider,
            "section": hint,
            "language": language,
        }
        for story in page.more
    ]
    return [{k: v for k, v in a.items() if v is not None} for a in [main, *listed]]


def post_batch(ingest_url: str, api_key: str, articles: list[dict[str, Any]]) -> Any:
    """POSTs to `/v1/articles/batch`; returns the per-item results (raises on HTTP errors)."""
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own ingest
        ingest_url.rstrip("/") + "/v1/articles/batch",
        data=json.dumps({"articles": articles}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())
