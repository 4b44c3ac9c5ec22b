"""enrichment's rules: sections from a taxonomy, related stories by TF-IDF, duplicates. No I/O."""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shared.events import Article, Enrichment, RelatedStory, SectionAssignment, Story

WORD = re.compile(r"[^\W\d_][\w'\u2019-]*[^\W_]|[^\W\d_]", re.UNICODE)
TAG = re.compile(r"<[^>]+>")
_STOPWORDS = """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours out over own said same says she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours monday tuesday wednesday thursday friday saturday sunday new told say year
years week weeks day days one two three last first people
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def plain_text(body_html: str) -> str:
    return html.unescape(TAG.sub(" ", body_html))


def tokens(text: str) -> list[str]:
    words = (w.lower().replace("\u2019", "'").removesuffix("'s") for w in WORD.findall(text))
    return [w for w in words if len(w) > 2 and w not in STOPWORDS]


def story_text(article: Article) -> str:
    # The headline and summary say what a story is about; weight them above the body.
    head = f"{article.headline} {article.subheadline or ''} {article.summary or ''}"
    return f"{head} {head} {plain_text(article.body_html)} {' '.join(article.keywords)}"


# --- Sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    id: str
    name: str
    aliases: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    version: int
    sections: tuple[Section, ...]
    fallback: str

    @classmethod
    def from_file(cls, path: Path) -> Taxonomy:
        raw = json.loads(path.read_text(encoding="utf-8"))
        sections = tuple(
            Section(s["id"], s["name"], tuple(s.get("aliases", ())), tuple(s.get("keywords", ())))
            for s in raw["sections"]
        )
        taxonomy = cls(int(raw.get("version", 1)), sections, raw.get("fallback", "general"))
        taxonomy.section(taxonomy.fallback)  # a taxonomy without its fallback is a config error
        return taxonomy

    def section(self, section_id: str) -> Section:
        for section in self.sections:
            if section.id == section_id:
                return section
        raise KeyError(f"taxonomy has no section {section_id!r}")

    def by_hint(self, hint: str) -> Section | None:
        wanted = " ".join(hint.casefold().replace("&", " and ").split())
        for section in self.sections:
            names = {section.id, section.name.casefold(), *(a.casefold() for a in section.aliases)}
            if wanted in names:
                return section
        return None


def assign_section(
    article: Article, taxonomy: Taxonomy, min_confidence: float
) -> SectionAssignment:
    """The provider's hint when the taxonomy knows it, else a keyword vote, else the fallback.

    The keyword vote is the foundation's minimal classifier; a trained one replaces it later.
    """
    if article.section and (hinted := taxonomy.by_hint(article.section)):
        return SectionAssignment(id=hinted.id, name=hinted.name, confidence=1.0, method="provider")
    text = " " + " ".join(tokens(story_text(article))) + " "
    votes = Counter(
        {
            s.id: sum(text.count(f" {k} ") for k in s.keywords)
            for s in taxonomy.sections
            if s.keywords
        }
    )
    total = sum(votes.values())
    if total:
        best, count = votes.most_common(1)[0]
        confidence = round(count / total, 3)
        if confidence >= min_confidence:
            section = taxonomy.section(best)
            return SectionAssignment(
                id=section.id, name=section.name, confidence=confidence, method="classifier"
            )
    fallback = taxonomy.section(taxonomy.fallback)
    return SectionAssignment(id=fallback.id, name=fallback.name, confidence=0.0, method="default")


# --- Related stories -----------------------------------------------------------------------


@dataclass
class IndexedStory:
    uri: str
    headline: str
    url: str | None
    weights: dict[str, float]  # term -> raw term frequency (log-scaled)
    indexed_at: datetime


@dataclass
class StoryIndex:
    """An in-memory TF-IDF index of recent stories; cosine similarity ranks related ones."""

    capacity: int = 50_000
    stories: dict[str, IndexedStory] = field(default_factory=dict)
    postings: dict[str, set[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.stories)

    def idf(self, term: str) -> float:
        n = len(self.stories)
        return math.log((n + 1) / (len(self.postings.get(term, ())) + 1)) + 1.0

    def add(self, article: Article) -> None:
        self.remove(article.uri)
        counts = Counter(tokens(story_text(article)))
        weights = {term: 1.0 + math.log(c) for term, c in counts.items()}
        self.stories[article.uri] = IndexedStory(
            article.uri,
            article.headline,
            str(article.url) if article.url else None,
            weights,
            datetime.now(UTC),
        )
        for term in weights:
            self.postings.setdefault(term, set()).add(article.uri)
        while len(self.stories) > self.capacity:
            self.remove(next(iter(self.stories)))

    def remove(self, uri: str) -> None:
        story = self.stories.pop(uri, None)
        if story is None:
            return
        for term in story.weights:
            holders = self.postings.get(term)
            if holders is not None:
                holders.discard(uri)
                if not holders:
                    del self.postings[term]

    def similar(self, article: Article, limit: int, min_score: float) -> list[RelatedStory]:
        counts = Counter(tokens(story_text(article)))
        query = {t: (1.0 + math.log(c)) * self.idf(t) for t, c in counts.items()}
        query_norm = math.sqrt(sum(w * w for w in query.values())) or 1.0
        dots: defaultdict[str, float] = defaultdict(float)
        for term, q in query.items():
            for uri in self.postings.get(term, ()):
                if uri != article.uri:
                    dots[uri] += q * self.stories[uri].weights[term] * self.idf(term)
        scored = []
        for uri, dot in dots.items():
            story = self.stories[uri]
            norm = math.sqrt(sum((w * self.idf(t)) ** 2 for t, w in story.weights.items()))
            score = dot / (query_norm * (norm or 1.0))
            if score >= min_score:
                scored.append((score, story))
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [
            RelatedStory.model_validate(
                {"uri": s.uri, "headline": s.headline, "url": s.url, "score": round(score, 4)}
            )
            for score, s in scored[:limit]
        ]


@dataclass(frozen=True)
class EnrichmentRules:
    taxonomy: Taxonomy
    min_section_confidence: float = 0.4
    related_limit: int = 5
    related_min_score: float = 0.1
    duplicate_min_score: float = 0.9


def enrich(article: Article, index: StoryIndex, rules: EnrichmentRules) -> Story:
    """Enrich one article version and keep the index current (withdrawn stories leave it)."""
    section = assign_section(article, rules.taxonomy, rules.min_section_confidence)
    if article.is_withdrawn:
        index.remove(article.uri)
        related: list[RelatedStory] = []
    else:
        related = index.similar(article, rules.related_limit + 1, rules.related_min_score)
        index.add(article)
    duplicate_of = next((r.uri for r in related if r.score >= rules.duplicate_min_score), None)
    links = [r for r in related if r.uri != duplicate_of][: rules.related_limit]
    enrichment = Enrichment(section=section, related=links, duplicate_of=duplicate_of)
    return Story(**article.model_dump(), enrichment=enrichment)
