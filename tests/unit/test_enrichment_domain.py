"""Sections and related stories, as an editor would judge them."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.enrichment.domain import (
    EnrichmentRules,
    StoryIndex,
    Taxonomy,
    assign_section,
    enrich,
    plain_text,
)
from services.enrichment.settings import DEFAULT_TAXONOMY
from shared.events import Article
from tests.factories import article_payload, dam_followup, dam_story

pytestmark = pytest.mark.unit

TAXONOMY = Taxonomy.from_file(DEFAULT_TAXONOMY)
RULES = EnrichmentRules(TAXONOMY)


def article(**overrides: object) -> Article:
    return Article.model_validate(article_payload(**overrides))


@pytest.mark.parametrize(
    ("hint", "section_id"),
    [
        ("International", "world"),
        ("WORLD NEWS", "world"),
        ("sports", "sport"),
        ("Tech", "technology"),
    ],
)
def test_provider_hints_map_onto_the_taxonomy(hint: str, section_id: str) -> None:
    assigned = assign_section(article(section=hint), TAXONOMY, 0.4)
    assert assigned.id == section_id
    assert assigned.method == "provider"
    assert assigned.confidence == 1.0


def test_international_is_the_world_section() -> None:
    assert TAXONOMY.section("world").name == "International"


def test_missing_hint_is_inferred_from_the_text() -> None:
    story = article(
        section=None,
        headline="Striker scores twice as league leaders win the cup match",
        summary="The coach praised the team after the final whistle.",
    )
    assigned = assign_section(story, TAXONOMY, 0.4)
    assert assigned.id == "sport"
    assert assigned.method == "classifier"
    assert 0.4 <= assigned.confidence <= 1.0


def test_unknown_hint_without_signal_falls_back_to_general() -> None:
    story = article(section="Miscellany", headline="Xyzzy", summary=None, body_html="")
    assigned = assign_section(story, TAXONOMY, 0.4)
    assert (assigned.id, assigned.method, assigned.confidence) == ("general", "default", 0.0)


def test_taxonomy_without_its_fallback_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.json"
    path.write_text('{"fallback": "general", "sections": [{"id": "world", "name": "World"}]}')
    with pytest.raises(KeyError, match="general"):
        Taxonomy.from_file(path)


def unrelated_world_stories() -> list[Article]:
    return [
        article(
            uri="urn:t:quake",
            section="world",
            headline="Earthquake shakes the coast of Lindmark, no casualties reported",
            summary="The quake of magnitude 5.1 was felt in the capital.",
        ),
        article(
            uri="urn:t:summit",
            section="world",
            headline="Trade ministers of the southern alliance meet to discuss tariffs",
            summary="The alliance wants to cut tariffs on grain and fertiliser.",
        ),
        article(
            uri="urn:t:election",
            section="world",
            headline="Voters in Caldera elect a new president after a close race",
            summary="The opposition candidate won by fewer than two points.",
        ),
    ]


def test_related_links_the_same_story_and_not_the_same_section() -> None:
    index = StoryIndex()
    first = Article.model_validate(dam_story("urn:t:dam-1"))
    enrich(first, index, RULES)
    for other in unrelated_world_stories():
        enrich(other, index, RULES)

    followup = enrich(Article.model_validate(dam_followup("urn:t:dam-2")), index, RULES)

    assert [r.uri for r in followup.enrichment.related] == ["urn:t:dam-1"]
    assert followup.enrichment.section.id == "world"
    assert followup.enrichment.related[0].headline == first.headline
    assert followup.enrichment.duplicate_of is None


def test_a_story_never_links_itself_and_a_correction_replaces_it() -> None:
    index = StoryIndex()
    first = Article.model_validate(dam_story("urn:t:dam-1"))
    enrich(first, index, RULES)
    corrected = enrich(first.model_copy(update={"version": 2}), index, RULES)
    assert corrected.enrichment.related == []
    assert len(index) == 1


def test_withdrawn_stories_leave_the_index() -> None:
    index = StoryIndex()
    first = Article.model_validate(dam_story("urn:t:dam-1"))
    enrich(first, index, RULES)
    enrich(first.model_copy(update={"version": 2, "pubstatus": "canceled"}), index, RULES)

    followup = enrich(Article.model_validate(dam_followup("urn:t:dam-2")), index, RULES)
    assert followup.enrichment.related == []


def test_a_resent_wire_story_is_a_duplicate_not_a_link() -> None:
    index = StoryIndex()
    enrich(Article.model_validate(dam_story("urn:t:wire-1")), index, RULES)
    resent = enrich(Article.model_validate(dam_story("urn:t:wire-2")), index, RULES)
    assert resent.enrichment.duplicate_of == "urn:t:wire-1"
    assert all(r.uri != "urn:t:wire-1" for r in resent.enrichment.related)


def test_plain_text_drops_markup() -> None:
    assert plain_text("<p>Tom &amp; Jerry</p><p>go</p>").split() == ["Tom", "&", "Jerry", "go"]
