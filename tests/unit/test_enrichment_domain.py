"""Sections, related stories, entities and duplicates, as an editor would judge them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.enrichment import Newsroom
from services.enrichment.classifier import SectionClassifier
from services.enrichment.domain import EnrichmentRules, StoryEnricher, assign_section
from services.enrichment.entities import extract_entities
from services.enrichment.index import IndexSettings
from services.enrichment.settings import DEFAULT_TAXONOMY
from services.enrichment.taxonomy import Taxonomy
from services.enrichment.text import plain_text
from shared.events import Article, Story, encode_story
from tests.factories import article_payload, dam_followup, dam_story

pytestmark = pytest.mark.unit

TAXONOMY = Taxonomy.from_file(DEFAULT_TAXONOMY)
RULES = EnrichmentRules(TAXONOMY)
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def article(minutes: float = 0, **overrides: Any) -> Article:
    at = T0 + timedelta(minutes=minutes)
    return Article.model_validate({"versioncreated": at, **article_payload(**overrides)})


def at(payload: dict[str, Any], minutes: float) -> Article:
    return Article.model_validate({**payload, "versioncreated": T0 + timedelta(minutes=minutes)})


def publish(enricher: StoryEnricher, story: Article) -> Story:
    """What the service does with each version: every instance observes it, one enriches it."""
    enricher.observe(story)
    return enricher.enrich(story)


# --- taxonomy and sections -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "section_id"),
    [
        ("International", "world"),
        ("WORLD NEWS", "world"),
        ("sports", "sport"),
        ("Tech", "technology"),
        ("Économie", "business"),
        ("Wirtschaft", "business"),
        ("Crime & Justice", "crime"),
        ("medtop:15000000", "sport"),
        ("  politique ", "politics"),
    ],
)
def test_provider_hints_map_onto_the_taxonomy(hint: str, section_id: str) -> None:
    assigned = assign_section(article(section=hint), TAXONOMY, SectionClassifier(["x"]), 0.5)
    assert (assigned.id, assigned.method, assigned.confidence) == (section_id, "provider", 1.0)


def test_default_taxonomy_has_the_newsroom_sections() -> None:
    ids = {s.id for s in TAXONOMY.sections}
    assert {"world", "politics", "business", "technology", "science", "health", "sport"} <= ids
    assert {"culture", "environment", "crime", "general"} <= ids
    assert TAXONOMY.section("world").name == "International"
    assert TAXONOMY.section("crime").name == "Crime & Justice"
    assert TAXONOMY.section("technology").parent == "science"
    assert all(s.iptc for s in TAXONOMY.sections if s.id != "general")


def test_a_taxonomy_file_replaces_the_default(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.json"
    path.write_text(
        '{"version": 7, "fallback": "misc", "sections": ['
        '{"id": "misc", "name": "Misc"},'
        '{"id": "weather", "name": "Weather", "aliases": ["Wetter"], "keywords": ["storm"]}]}'
    )
    custom = Taxonomy.from_file(path)
    enricher = StoryEnricher(EnrichmentRules(custom))
    assert custom.version == 7
    assert enricher.enrich(article(section="wetter")).enrichment.section.id == "weather"


def test_taxonomy_without_its_fallback_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.json"
    path.write_text('{"fallback": "general", "sections": [{"id": "world", "name": "World"}]}')
    with pytest.raises(KeyError, match="general"):
        Taxonomy.from_file(path)


def test_missing_hint_is_inferred_by_the_classifier() -> None:
    story = article(
        section=None,
        headline="Striker scores twice as league leaders win the cup match",
        summary="The coach praised the team after the final whistle.",
    )
    assigned = StoryEnricher(RULES).enrich(story).enrichment.section
    assert (assigned.id, assigned.method) == ("sport", "classifier")
    assert 0.5 <= assigned.confidence <= 1.0


def test_unknown_hint_without_signal_falls_back_to_general_and_says_so() -> None:
    story = article(section="Miscellany", headline="Xyzzy", summary=None, body_html="")
    assigned = StoryEnricher(RULES).enrich(story).enrichment.section
    assert (assigned.id, assigned.method, assigned.confidence) == ("general", "default", 0.0)


def test_below_the_confidence_threshold_the_story_goes_to_general() -> None:
    strict = StoryEnricher(EnrichmentRules(TAXONOMY, min_section_confidence=1.01))
    story = article(section=None, headline="Striker scores twice in the cup final")
    assigned = strict.enrich(story).enrichment.section
    assert (assigned.id, assigned.method) == ("general", "default")
    assert 0 < assigned.confidence <= 1


def test_the_classifier_learns_online_from_stories_with_a_known_section() -> None:
    enricher = StoryEnricher(RULES)
    probe = article(section=None, headline="Zorblat tournament: the grand zorblat final")
    assert enricher.enrich(probe).enrichment.section.id != "culture"
    for i in range(4):
        enricher.observe(
            article(i, section="Arts", headline=f"Zorblat festival part {i}", summary="zorblat")
        )
    assert enricher.enrich(probe).enrichment.section.id == "culture"


# --- related stories -----------------------------------------------------------------------


def unrelated_world_stories() -> list[Article]:
    return [
        article(
            1,
            uri="urn:t:quake",
            section="world",
            headline="Earthquake shakes the coast of Lindmark, no casualties reported",
            summary="The quake of magnitude 5.1 was felt in the capital.",
        ),
        article(
            2,
            uri="urn:t:summit",
            section="world",
            headline="Trade ministers of the southern alliance meet to discuss tariffs",
            summary="The alliance wants to cut tariffs on grain and fertiliser.",
        ),
        article(
            3,
            uri="urn:t:election",
            section="world",
            headline="Voters in Caldera elect a new president after a close race",
            summary="The opposition candidate won by fewer than two points.",
        ),
    ]


def test_related_links_the_same_story_and_not_the_same_section() -> None:
    enricher = StoryEnricher(RULES)
    first = at(dam_story("urn:t:dam-1"), 0)
    publish(enricher, first)
    for other in unrelated_world_stories():
        publish(enricher, other)

    followup = publish(enricher, at(dam_followup("urn:t:dam-2"), 10))

    assert [r.uri for r in followup.enrichment.related] == ["urn:t:dam-1"]
    assert followup.enrichment.section.id == "world"
    assert followup.enrichment.related[0].headline == first.headline
    assert 0 < followup.enrichment.related[0].score <= 1
    assert followup.enrichment.duplicate_of is None


def test_only_earlier_stories_are_linked_whatever_the_index_already_holds() -> None:
    enricher = StoryEnricher(RULES)
    first, second = at(dam_story("urn:t:dam-1"), 0), at(dam_followup("urn:t:dam-2"), 10)
    enricher.observe(first)
    enricher.observe(second)  # an instance may read ahead of the story it enriches
    assert enricher.enrich(first).enrichment.related == []
    assert [r.uri for r in enricher.enrich(second).enrichment.related] == ["urn:t:dam-1"]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_stories_first_seen_at_the_same_moment_count_as_earlier_by_uri(
    order: tuple[int, int, int],
) -> None:
    # Ties on the first time are broken by uri, whatever order an instance read them in.
    enricher = StoryEnricher(RULES)
    stories = [
        at(dam_story("urn:t:dam-a"), 0),
        at(dam_followup("urn:t:dam-b"), 0),
        at(dam_followup("urn:t:dam-c"), 0),
    ]
    for n in order:
        enricher.observe(stories[n])

    enriched = [enricher.enrich(s).enrichment for s in stories]

    assert [{r.uri for r in e.related} for e in enriched] == [
        set(),
        {"urn:t:dam-a"},
        {"urn:t:dam-a"},
    ]
    # The two follow-ups are one text: the later by uri repeats the earlier.
    assert [e.duplicate_of for e in enriched] == [None, None, "urn:t:dam-b"]


def test_a_story_never_links_itself_and_a_correction_replaces_it() -> None:
    enricher = StoryEnricher(RULES)
    first = at(dam_story("urn:t:dam-1"), 0)
    publish(enricher, first)
    corrected = publish(enricher, first.model_copy(update={"version": 2}))
    assert corrected.enrichment.related == []
    assert len(enricher.index) == 1


def test_a_correction_is_what_later_stories_are_matched_against() -> None:
    enricher = StoryEnricher(RULES)
    original = article(0, uri="urn:t:c", headline="Council meets", summary="Routine session.")
    publish(enricher, original)
    corrected = at(dam_story("urn:t:c", version=2), 5)
    publish(enricher, corrected)
    followup = publish(enricher, at(dam_followup("urn:t:f"), 10))
    assert [r.uri for r in followup.enrichment.related] == ["urn:t:c"]
    assert followup.enrichment.related[0].headline == corrected.headline


def test_withdrawn_stories_leave_the_index() -> None:
    enricher = StoryEnricher(RULES)
    first = at(dam_story("urn:t:dam-1"), 0)
    publish(enricher, first)
    publish(enricher, first.model_copy(update={"version": 2, "pubstatus": "canceled"}))

    followup = publish(enricher, at(dam_followup("urn:t:dam-2"), 10))
    assert followup.enrichment.related == []
    assert len(enricher.index) == 1


def test_stories_older_than_the_window_are_not_linked() -> None:
    rules = EnrichmentRules(TAXONOMY, index=IndexSettings(window_s=3600))
    enricher = StoryEnricher(rules)
    publish(enricher, at(dam_story("urn:t:old"), 0))
    followup = publish(enricher, at(dam_followup("urn:t:new"), 90))
    assert followup.enrichment.related == []  # past the window: not linked
    publish(enricher, at(dam_followup("urn:t:later"), 200))
    assert followup.enrichment.related == []
    assert "urn:t:old" not in enricher.index


def test_the_index_keeps_at_most_its_capacity_newest_first() -> None:
    enricher = StoryEnricher(EnrichmentRules(TAXONOMY, index=IndexSettings(capacity=3)))
    for i in range(5):
        enricher.observe(article(i, uri=f"urn:t:{i}", headline=f"Story number {i} of five"))
    assert len(enricher.index) == 3
    assert "urn:t:0" not in enricher.index
    assert "urn:t:4" in enricher.index


def test_an_index_that_keeps_evicting_holds_about_what_it_keeps_not_all_it_read() -> None:
    # Removed stories are swept out of every column once they are a third of the slots (at
    # least 1,024), and the live ones renumbered: a long-running instance does not grow.
    newsroom = Newsroom(seed=3, events=50)
    stream = [newsroom.story(n, T0 + timedelta(seconds=2 * n)) for n in range(5001)]
    probe = stream.pop()
    enricher = StoryEnricher(EnrichmentRules(TAXONOMY, index=IndexSettings(capacity=500)))
    for story in stream:
        enricher.observe(story)
        assert enricher.index.slots <= 500 + 1025
    assert len(enricher.index) == 500
    fresh = StoryEnricher(EnrichmentRules(TAXONOMY, index=IndexSettings(capacity=500)))
    for story in stream[-500:]:
        fresh.observe(story)
    assert [r.uri for r in publish(enricher, probe).enrichment.related] == [
        r.uri for r in publish(fresh, probe).enrichment.related
    ]


def test_a_resent_wire_story_is_a_duplicate_not_a_link() -> None:
    enricher = StoryEnricher(RULES)
    publish(enricher, at(dam_story("urn:t:wire-1"), 0))
    resent = publish(enricher, at(dam_story("urn:t:wire-2", byline="Other desk"), 5))
    assert resent.enrichment.duplicate_of == "urn:t:wire-1"
    assert all(r.uri != "urn:t:wire-1" for r in resent.enrichment.related)


def test_two_copies_of_one_story_are_one_link() -> None:
    enricher = StoryEnricher(RULES)
    publish(enricher, at(dam_story("urn:t:wire-1"), 0))
    publish(enricher, at(dam_story("urn:t:wire-2"), 1))
    followup = publish(enricher, at(dam_followup("urn:t:f"), 10))
    assert [r.uri for r in followup.enrichment.related] == ["urn:t:wire-1"]


@pytest.mark.parametrize("order", [("b", "a", "c"), ("c", "b", "a"), ("a", "c", "b")])
def test_copies_first_seen_at_the_same_moment_link_to_the_earliest_uri(
    order: tuple[str, str, str],
) -> None:
    # Three copies filed in the same second, indexed in any order, with an unrelated story
    # from that second too: one link, to the copy whose uri sorts first, whatever the order.
    enricher = StoryEnricher(RULES)
    for name in order:
        publish(enricher, at(dam_story(f"urn:t:wire-{name}"), 0))
    publish(enricher, at(article_payload(uri="urn:t:other"), 0))
    followup = publish(enricher, at(dam_followup("urn:t:f"), 10))
    assert [r.uri for r in followup.enrichment.related] == ["urn:t:wire-a"]


# --- entities ------------------------------------------------------------------------------


def test_entities_name_people_places_and_organisations() -> None:
    story = publish(StoryEnricher(RULES), at(dam_story("urn:t:e"), 0))
    entities = story.enrichment.entities
    assert "Irena Kass" in entities.people
    assert "Geneva" in entities.places
    assert "United Nations" in entities.organisations


def test_entity_rules_read_titles_demonyms_and_organisation_words() -> None:
    found = extract_entities(
        "Israeli Defence Minister Yoav Gallant met US President Joe Biden in Washington. "
        "Gallant later spoke to Nordbank and Arden University officials."
    )
    assert {"Yoav Gallant", "Joe Biden"} <= set(found.people)
    assert "Gallant" not in found.people
    assert {"Israel", "United States", "Washington"} <= set(found.places)
    assert {"Nordbank", "Arden University"} <= set(found.organisations)


def test_plain_text_drops_markup() -> None:
    assert plain_text("<p>Tom &amp; Jerry</p><p>go</p>").split() == ["Tom", "&", "Jerry", "go"]


def test_links_and_duplicates_survive_a_long_run_of_evictions() -> None:
    # Thousands of stories through a small index: removed stories are swept out of the postings
    # and the duplicate buckets (which also grow on the way); the answers must stay the same.
    enricher = StoryEnricher(EnrichmentRules(TAXONOMY, index=IndexSettings(capacity=500)))
    for i in range(5000):
        enricher.observe(
            article(i / 60, uri=f"urn:t:filler-{i}", headline=f"Filler {i}", summary=f"Item {i}.")
        )
    publish(enricher, at(dam_story("urn:t:dam-1"), 100))
    resent = publish(enricher, at(dam_story("urn:t:dam-2", byline="Other desk"), 101))
    followup = publish(enricher, at(dam_followup("urn:t:dam-3"), 102))
    assert len(enricher.index) == 500
    assert resent.enrichment.duplicate_of == "urn:t:dam-1"
    assert [r.uri for r in followup.enrichment.related] == ["urn:t:dam-1"]


def test_an_instance_that_has_read_ahead_links_exactly_like_one_that_has_not() -> None:
    # Two instances in one group: each reads every story from the story table, in its own
    # interleaving of the partitions and at its own pace, and enriches some of them. A story's
    # links and duplicate must not depend on how far (or in what order) its instance has read.
    newsroom = Newsroom(seed=3, events=200)
    stream = [newsroom.story(n, T0 + timedelta(seconds=2 * n)) for n in range(2000)]
    for n in range(40, len(stream), 40):  # wire stories re-sent under a new uri
        resent = stream[n - 25].model_copy(update={"uri": f"urn:newsflow:bench:resent-{n}"})
        stream[n] = resent.model_copy(update={"versioncreated": T0 + timedelta(seconds=2 * n)})

    def answer(story: Story) -> tuple[list[tuple[str, float]], str | None]:
        found = story.enrichment
        return [(r.uri, r.score) for r in found.related], found.duplicate_of

    in_step = StoryEnricher(RULES)
    expected = [answer(publish(in_step, story)) for story in stream]

    rng = random.Random(5)
    partitions = [stream[p::6] for p in range(6)]
    ahead = StoryEnricher(RULES)
    while any(partitions):
        partition = rng.choice([p for p in partitions if p])
        burst = rng.randint(1, 40)
        for story in partition[:burst]:
            ahead.observe(story)
        del partition[:burst]
    assert len(ahead.index) == len(in_step.index)
    got = [answer(ahead.enrich(story)) for story in stream]

    assert sum(1 for related, _ in expected if related) > len(stream) // 2
    assert sum(1 for _, duplicate_of in expected if duplicate_of) >= 45
    assert [n for n, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g] == []


def test_links_right_after_removed_stories_are_swept_out_are_scored_on_live_stories_only() -> None:
    # 1,100 stories, then 1,025 of them withdrawn: the index sweeps the removed stories out of its
    # postings. A story enriched next must be scored as by an index that only ever held the 75
    # left (the removed ones must not count as earlier stories in the term rarities).
    newsroom = Newsroom(seed=3, events=20)
    stream = [newsroom.story(n, T0 + timedelta(seconds=2 * n)) for n in range(1101)]
    probe = stream.pop()
    swept = StoryEnricher(RULES)
    for story in stream:
        swept.observe(story)
    for story in stream[:1025]:
        swept.observe(story.model_copy(update={"version": 2, "pubstatus": "canceled"}))
    fresh = StoryEnricher(RULES)
    for story in stream[1025:]:
        fresh.observe(story)
    assert len(swept.index) == len(fresh.index) == 75

    def answer(enricher: StoryEnricher) -> list[tuple[str, float]]:
        enricher.observe(probe)
        return [(r.uri, r.score) for r in enricher.enrich(probe).enrichment.related]

    expected = answer(fresh)
    assert expected != []
    assert answer(swept) == expected


def test_the_story_sent_is_the_story_the_models_make() -> None:
    # The service encodes what it found without building the models (`Enriched.story_value`):
    # byte for byte what they give, for stories with links, duplicates, entities and none.
    newsroom = Newsroom(seed=3, events=30)
    stream = [newsroom.story(n, T0 + timedelta(seconds=2 * n)) for n in range(300)]
    stream[150] = stream[120].model_copy(update={"uri": "urn:newsflow:bench:resent"})
    stream.append(article(minutes=30, pubstatus="canceled"))
    enricher = StoryEnricher(RULES)
    linked = 0
    for story in stream:
        enricher.observe(story)
        enriched = enricher.enriched(story, now=T0)
        assert enriched.story_value(story) == encode_story(story, enriched.enrichment())
        assert enriched.enrichment() == enricher.enrichment_of(story, now=T0)
        linked += bool(enriched.found.related)
    assert linked > 100
