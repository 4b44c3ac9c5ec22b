"""The labelled corpus format (JSON lines): section, cluster of related stories, duplicate_of."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.events import Article


@dataclass(frozen=True)
class LabelledStory:
    id: str
    section: str
    headline: str
    summary: str
    body: str = ""
    cluster: str | None = None
    duplicate_of: str | None = None

    @property
    def uri(self) -> str:
        return f"urn:newsflow:corpus:{self.id}"

    def article(self, at: datetime, *, with_hint: bool = False) -> Article:
        return Article.model_validate(
            {
                "uri": self.uri,
                "headline": self.headline,
                "summary": self.summary,
                "body_html": f"<p>{self.body}</p>" if self.body else "",
                "provider": "corpus",
                "section": self.section if with_hint else None,
                "versioncreated": at,
                "firstcreated": at,
            }
        )


def parse_corpus(lines: Iterable[str]) -> list[LabelledStory]:
    stories = []
    for line in lines:
        if line.strip():
            raw = json.loads(line)
            stories.append(LabelledStory(**raw))
    return stories


def timeline(stories: list[LabelledStory], start: datetime, step: timedelta) -> list[Article]:
    """The stories as articles published one after another, hint-less."""
    return [s.article(start + i * step) for i, s in enumerate(stories)]
