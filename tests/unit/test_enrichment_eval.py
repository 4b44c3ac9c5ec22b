"""The labelled corpus and the floors `make eval` reports against (held-out, never trained on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.enrichment.corpus import parse_corpus
from services.enrichment.domain import EnrichmentRules
from services.enrichment.evaluation import Report, evaluate
from services.enrichment.settings import DEFAULT_TAXONOMY, DEFAULT_TRAINING
from services.enrichment.taxonomy import Taxonomy

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).parents[1] / "data" / "corpus" / "stories.jsonl"


@pytest.fixture(scope="module")
def report() -> Report:
    stories = parse_corpus(CORPUS.read_text(encoding="utf-8").splitlines())
    return evaluate(stories, EnrichmentRules(Taxonomy.from_file(DEFAULT_TAXONOMY)))


def test_the_corpus_is_big_and_varied_enough_to_mean_something() -> None:
    stories = parse_corpus(CORPUS.read_text(encoding="utf-8").splitlines())
    clusters = {s.cluster for s in stories if s.cluster}
    assert len(stories) >= 200
    assert len({s.section for s in stories}) >= 10
    assert len(clusters) >= 30
    assert sum(1 for s in stories if s.duplicate_of) >= 10
    assert sum(1 for s in stories if not s.cluster and not s.duplicate_of) >= 100


def test_the_service_starts_from_the_same_corpus() -> None:
    assert DEFAULT_TRAINING.read_text(encoding="utf-8") == CORPUS.read_text(encoding="utf-8")


def test_section_accuracy_without_hints(report: Report) -> None:
    assert report.section_accuracy >= 0.90


def test_related_precision_and_recall_at_3(report: Report) -> None:
    assert report.related_precision >= 0.85
    assert report.related_recall >= 0.80


def test_duplicates_are_found_and_nothing_else_is_called_one(report: Report) -> None:
    assert report.duplicate_precision >= 0.95
    assert report.duplicate_recall >= 0.9
