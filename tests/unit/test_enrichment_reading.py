"""How enrichment reads a story stays put: instances running different releases side by side must
read, sign and classify the same story alike (a link or a duplicate depends on it).
"""

from __future__ import annotations

import hashlib
import math
import random
import zlib
from datetime import UTC, datetime

import numpy as np
import pytest

from services.enrichment.classifier import SectionClassifier
from services.enrichment.entities import _CAPITALISED, _capitalised_spans, extract_entities
from services.enrichment.index import Shingler, StoryIndex, _min_hashes
from services.enrichment.text import WORD, normalise, words_of
from shared.events import Article

pytestmark = pytest.mark.unit

SENTENCE = "Ministers agreed on Tuesday to share the Seralin dam\u2019s water during the dry season"


def test_words_in_ascii_text_are_the_words_the_pattern_finds() -> None:
    rng = random.Random(3)
    pieces = ["dam", "Seralin", "10-year", "rock'n'roll", "_x", "a-", "9a", "x_", "it's", "'", "-"]
    pieces += list("!?.,;:()[]\"&/\n\t 0123456789_'-aZ")
    for _ in range(2000):
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", "-", "'"]) for _ in range(30))
        assert words_of(text) == WORD.findall(text)


def test_a_story_is_signed_as_earlier_releases_signed_it() -> None:
    shingler = Shingler()
    signature = shingler.signature(SENTENCE.lower().split())

    assert signature.dtype.name == "uint32" and signature.shape == (64,)
    assert signature[:4].tolist() == [734176992, 431218127, 161158391, 114029438]
    assert hashlib.sha256(signature.tobytes()).hexdigest()[:16] == "c3b80df22d516cee"
    # A story of one word (or none) is signed by the word alone.
    assert shingler.signature(["dam"])[:3].tolist() == [2282515419, 2337921559, 2168815702]
    assert shingler.signature([])[:3].tolist() == [429096945, 308347802, 1406985320]


def test_a_story_is_signed_by_the_crc32_of_each_normalised_word_of_its_opening() -> None:
    rng = random.Random(4)
    pieces = ["dam", "Zo\u00eb", "\u2019s", "'s", "'", "\u2019", "s", "\u4e2d", "-", " ", "\t", ""]
    shingler = Shingler()
    for size in [*range(6), 249, 250, 251, 400]:
        words = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 4))) for _ in range(size)]
        hashes = [zlib.crc32(normalise(word).encode()) for word in words[:250]]
        expected = _min_hashes(np.array(hashes or [0], dtype=np.uint64), shingler._a, shingler._b)

        assert shingler.signature(words).tolist() == expected.tolist()


def test_capitalised_names_in_ascii_text_are_the_runs_the_pattern_finds() -> None:
    rng = random.Random(6)
    pieces = ["Tom", "Smith", "of", "de", "der", "von", "bin", "al", "off", "Of", "a", "X1", "US"]
    pieces += ["Bank", "d'Arc", "Jean-Luc", "9", "_", "'", "-", "I"]
    separators = [" ", "  ", "\t", " \t ", "\n", ". ", ", ", "", "-", "(", "\r", "\x1c"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) + rng.choice(separators) for _ in range(20))
        found = [match.span() for match in _CAPITALISED.finditer(text)]
        assert list(_capitalised_spans(text)) == found


def test_a_demonym_is_read_wherever_a_name_holds_it() -> None:
    found = extract_entities("Talks with Israeli-backed groups and South African envoys went on.")
    assert found.places == ("South Africa", "Israel")
    assert extract_entities("a US-Israeli deal, Iranian-made drones").places == ("Israel", "Iran")
    assert extract_entities("the South\nAfrican side").places == ()  # a line apart: two names


def test_the_section_confidence_is_the_naive_bayes_posterior() -> None:
    classifier = SectionClassifier(["sport", "business", "science"], smoothing=0.5)
    classifier.learn({"goal": 3, "match": 1}, "sport")
    classifier.learn({"market": 2, "match": 1}, "business")

    prediction = classifier.predict({"goal": 1, "match": 2, "unknown": 5})

    # Two terms known, a vocabulary of 3; "science" learned nothing and cannot win.
    weights = {"goal": 1.0, "match": 1.0 + math.log(2)}
    sport = {"goal": 1.0 + math.log(3), "match": 1.0}
    business = {"market": 1.0 + math.log(2), "match": 1.0}

    def log_posterior(counts: dict[str, float]) -> float:
        total = sum(counts.values()) + 0.5 * 3
        evidence = sum(w * math.log((counts.get(t, 0.0) + 0.5) / total) for t, w in weights.items())
        return math.log(2 / 5) + evidence

    odds = math.exp(log_posterior(business) - log_posterior(sport))
    assert prediction is not None and prediction.section_id == "sport"
    assert prediction.confidence == pytest.approx(1 / (1 + odds), abs=1e-12)
    assert classifier.predict({"unknown": 1}) is None


def test_a_huge_count_and_a_term_numbered_late_are_learned_like_any_other() -> None:
    # Weights of counts up to 1,023 are looked up, larger ones computed; the counts grow with the
    # terms numbered. Either way a term's weight is 1 + log(count), its section's total the sum.
    classifier = SectionClassifier(["sport", "business"], smoothing=0.5)
    classifier.learn({f"filler{n}": 1 for n in range(1500)}, "business")  # past 1,024 ids
    classifier.learn({"goal": 5000, "match": 2, "filler1499": 1}, "sport", weight=2.0)

    weights = [2 * (1 + math.log(5000)), 2 * (1 + math.log(2)), 2.0]
    assert classifier._totals.tolist() == [sum(weights), 1500.0]
    assert classifier._vocabulary == 1502
    prediction = classifier.predict({"goal": 1})
    assert prediction is not None and prediction.section_id == "sport"
    # Both at once: a huge count before a term numbered past the counts learned so far.
    classifier.learn({"save": 2000, **{f"late{n}": 1 for n in range(3000)}}, "sport")
    assert classifier._totals[0] == pytest.approx(sum(weights) + 1 + math.log(2000) + 3000)
    assert classifier._vocabulary == 1502 + 3001


def test_a_classifier_counting_by_the_index_term_ids_predicts_as_one_counting_by_name() -> None:
    # The enricher's classifier keeps its counts by the index's term ids, and learns and predicts
    # from the ids the index holds for a story; the numbering must change no prediction.
    rng = random.Random(5)
    vocabulary = [f"term{n}" for n in range(300)]
    sections = ["sport", "business", "science"]
    index = StoryIndex()
    by_name = SectionClassifier(sections)
    by_id = SectionClassifier(sections, terms=index)
    index.term_ids(["numbered", "by", "the", "index", "first"], create=True)  # not learned
    for n in range(200):
        counts = {t: rng.randint(1, 4) for t in rng.sample(vocabulary[: 100 + n], 30)}
        section = sections[n % 3]
        by_name.learn(counts, section, weight=1.5 if n < 3 else 1.0)
        if n % 2:
            by_id.learn(counts, section, weight=1.5 if n < 3 else 1.0)
        else:
            ids = index.term_ids(counts, create=True)
            amounts = np.array(list(counts.values()), dtype=np.float64)
            by_id.learn_ids(ids, amounts, section, weight=1.5 if n < 3 else 1.0)

    for _ in range(100):
        counts = {t: rng.randint(1, 6) for t in rng.sample([*vocabulary, "unseen", "by"], 25)}
        ids = index.term_ids(counts, create=False)
        amounts = np.array(list(counts.values()), dtype=np.float64)
        assert by_id.predict_ids(ids, amounts) == by_name.predict(counts)
        assert by_id.predict(counts) == by_name.predict(counts)
    assert by_id.predict({"by": 1, "unseen": 2}) is None  # numbered by the index, never learned


def test_a_held_story_gives_its_term_counts_by_name_and_its_ids() -> None:
    story = Article.model_validate(
        {
            "uri": "urn:newsflow:test:dam",
            "headline": "Seralin dam water shared",
            "body_html": f"<p>{SENTENCE}. The dam holds water for the dry season.</p>",
            "provider": "test",
            "versioncreated": datetime(2026, 3, 1, tzinfo=UTC),
        }
    )
    index = StoryIndex()
    indexed = index.add(story)

    held = index.features(story)
    ids, counts = index.terms_of(held)

    assert dict(held.term_counts) == dict(indexed.term_counts)
    assert list(held.term_counts) == list(indexed.term_counts)  # most frequent first
    assert ids.tolist() == index.term_ids(indexed.term_counts, create=False).tolist()
    assert counts.tolist() == [float(c) for c in indexed.term_counts.values()]
