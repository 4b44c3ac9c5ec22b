"""enrichment's rules: section, related stories, entities and duplicates for one story. No I/O.

`Enrichment.observe` keeps the shared state current (index, online classifier) from every article
version on the ingested topic; `Enrichment.enrich` reads that state to enrich one version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.enrichment.classifier import FloatArray, IntArray, SectionClassifier, term_counts
from services.enrichment.entities import FoundEntities
from services.enrichment.index import Features, IndexSettings, Neighbours, StoryIndex
from services.enrichment.taxonomy import Section, Taxonomy
from services.enrichment.text import story_text, tokens
from shared.events import (
    Article,
    Enrichment,
    Entities,
    RelatedStory,
    SectionAssignment,
    Story,
    encode_enrichment,
    encode_story,
)

# A taxonomy keyword list counts as this many stories' worth of evidence for its section.
KEYWORD_WEIGHT = 6.0

__all__ = ["EnrichmentRules", "Section", "StoryEnricher", "Taxonomy", "assign_section"]


@dataclass(frozen=True)
class EnrichmentRules:
    taxonomy: Taxonomy
    min_section_confidence: float = 0.5
    related_limit: int = 5
    related_min_score: float = 0.2
    index: IndexSettings = field(default_factory=IndexSettings)


def assign_section(
    article: Article,
    taxonomy: Taxonomy,
    classifier: SectionClassifier,
    min_confidence: float,
    terms: tuple[IntArray, FloatArray] | None = None,
) -> SectionAssignment:
    """The provider's hint when the taxonomy knows it, else the classifier, else the fallback.

    `terms` are the story's terms' ids (the classifier's numbering) and counts when already
    known (the index numbered them).
    """
    if article.section and (hinted := taxonomy.by_hint(article.section)):
        return SectionAssignment(id=hinted.id, name=hinted.name, confidence=1.0, method="provider")
    if terms is None:
        prediction = classifier.predict(term_counts(tokens(story_text(article))))
    else:
        prediction = classifier.predict_ids(*terms)
    if prediction is not None and prediction.confidence >= min_confidence:
        section = taxonomy.section(prediction.section_id)
        return SectionAssignment(
            id=section.id,
            name=section.name,
            confidence=round(prediction.confidence, 3),
            method="classifier",
        )
    # Below the threshold the story goes to the fallback; "default" says no section was inferred.
    fallback = taxonomy.section(taxonomy.fallback)
    confidence = round(prediction.confidence, 3) if prediction else 0.0
    return SectionAssignment(
        id=fallback.id, name=fallback.name, confidence=confidence, method="default"
    )


class StoryEnricher:
    """The index and classifier every instance builds alike, and the enrichment they give."""

    def __init__(self, rules: EnrichmentRules) -> None:
        self.rules = rules
        self.index = StoryIndex(rules.index)
        # The classifier counts terms by the index's ids: a story's ids serve both.
        self.classifier = SectionClassifier(rules.taxonomy.classes, terms=self.index)
        self.observed = 0
        # The taxonomy's keywords are each section's first example: the model starts from them.
        for section in rules.taxonomy.sections:
            if section.keywords and section.id in rules.taxonomy.classes:
                self.classifier.learn(
                    term_counts(tokens(" ".join(section.keywords))),
                    section.id,
                    weight=KEYWORD_WEIGHT,
                )

    def train(self, labelled: Iterable[tuple[Article, str]]) -> None:
        """Seed the classifier with labelled stories (the corpus shipped with the service)."""
        for article, section_id in labelled:
            self.classifier.learn(term_counts(tokens(story_text(article))), section_id)

    def observe(self, article: Article, features: Features | None = None) -> None:
        """One article version from the ingested topic: index it, or drop it when withdrawn.

        A story whose provider section the taxonomy knows also teaches the classifier.
        `features` are the version's `features_of` when already computed elsewhere.
        """
        self.observed += 1
        if article.is_withdrawn:
            self.index.remove(article.uri)
            return
        features = self.index.add(article, features)
        if article.section and (hinted := self.rules.taxonomy.by_hint(article.section)):
            self.classifier.learn_ids(*self.index.terms_of(features), hinted.id)

    def enrich(
        self,
        article: Article,
        now: datetime | None = None,
        lookup_timer: Callable[[float], None] | None = None,
    ) -> Story:
        """Enrich one version from the current state: the story as it goes out."""
        return _story(article, self.enrichment_of(article, now, lookup_timer))

    def enrichment_of(
        self,
        article: Article,
        now: datetime | None = None,
        lookup_timer: Callable[[float], None] | None = None,
    ) -> Enrichment:
        """What enrichment adds to one version, from the current state; `lookup_timer` gets the
        related lookup's duration in seconds (a metric; the domain itself does no I/O).
        """
        return self.enriched(article, now, lookup_timer).enrichment()

    def enriched(
        self,
        article: Article,
        now: datetime | None = None,
        lookup_timer: Callable[[float], None] | None = None,
    ) -> Enriched:
        """`enrichment_of`, as found: what the service encodes without building the models."""
        rules = self.rules
        if article.is_withdrawn:
            section = assign_section(
                article, rules.taxonomy, self.classifier, rules.min_section_confidence
            )
            return Enriched(section, NOTHING_FOUND, FoundEntities(), now or datetime.now(UTC))
        features = self.index.features(article)
        section = assign_section(
            article,
            rules.taxonomy,
            self.classifier,
            rules.min_section_confidence,
            self.index.terms_of(features, create=False),
        )
        started = time.perf_counter()
        found = self.index.neighbours(features, rules.related_limit, rules.related_min_score)
        if lookup_timer is not None:
            lookup_timer(time.perf_counter() - started)
        return Enriched(section, found, features.entities, now or datetime.now(UTC))


# A withdrawn version links nothing.
NOTHING_FOUND = Neighbours([], None)


@dataclass(frozen=True)
class Enriched:
    """What enrichment found for one version: its section, links and entities."""

    section: SectionAssignment
    found: Neighbours
    entities: FoundEntities
    enriched_at: datetime

    def enrichment(self) -> Enrichment:
        return enrichment_from(self.section, self.found, self.entities, self.enriched_at)

    def story_value(self, article: Article) -> bytes:
        """The story as it goes out, encoded: `encode_story(article, self.enrichment())`, the
        same bytes, without building the models."""
        entities = self.entities
        added = encode_enrichment(
            self.section,
            ((m.uri, m.headline, m.url, m.score) for m in self.found.related),
            (entities.people, entities.places, entities.organisations),
            self.found.duplicate_of,
            self.enriched_at,
        )
        return encode_story(article, added)


def enriched_story(
    article: Article,
    section: SectionAssignment,
    found: Neighbours,
    entities: FoundEntities,
    enriched_at: datetime,
) -> Story:
    """The story as it goes out: the article with its section, links and entities."""
    return _story(article, enrichment_from(section, found, entities, enriched_at))


def enrichment_from(
    section: SectionAssignment,
    found: Neighbours,
    entities: FoundEntities,
    enriched_at: datetime,
) -> Enrichment:
    """What enrichment adds to a story: its section, links and entities."""
    related = [
        RelatedStory.model_validate(
            {"uri": m.uri, "headline": m.headline, "url": m.url, "score": m.score}
        )
        for m in found.related
    ]
    return Enrichment(
        section=section,
        related=related,
        entities=Entities(
            people=list(entities.people),
            places=list(entities.places),
            organisations=list(entities.organisations),
        ),
        duplicate_of=found.duplicate_of,
        enriched_at=enriched_at,
    )


def _story(article: Article, enrichment: Enrichment) -> Story:
    # Both parts are already validated models: assembling them needs no second validation.
    return Story.model_construct(
        _fields_set=article.model_fields_set | {"enrichment"},
        **dict(article),
        enrichment=enrichment,
    )
