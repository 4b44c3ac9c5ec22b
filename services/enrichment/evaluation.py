"""`make eval`: section accuracy, related precision/recall@3, duplicate precision/recall.

Sections are scored by k-fold cross-validation, so no story is classified by a model that saw it
(a re-sent copy stays in its original's fold). Related links and duplicates are scored by
replaying the corpus in a shuffled publication order through the same code the service runs.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.enrichment.corpus import LabelledStory, parse_corpus
from services.enrichment.domain import EnrichmentRules, StoryEnricher, assign_section
from services.enrichment.settings import DEFAULT_TAXONOMY
from services.enrichment.taxonomy import Taxonomy

DEFAULT_CORPUS = Path("tests/data/corpus/stories.jsonl")
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
STEP = timedelta(minutes=20)
TOP = 3


@dataclass(frozen=True)
class Report:
    stories: int
    sections: int
    section_accuracy: float
    section_fallbacks: int
    related_precision: float
    related_recall: float
    links: int
    links_from_unclustered: int
    duplicate_precision: float
    duplicate_recall: float

    def lines(self) -> list[str]:
        return [
            f"corpus: {self.stories} stories, {self.sections} sections",
            f"section accuracy (hint-less, 5-fold): {self.section_accuracy:.3f}"
            f"  ({self.section_fallbacks} fell below the threshold to `general`)",
            f"related precision@{TOP}: {self.related_precision:.3f}"
            f"  recall@{TOP}: {self.related_recall:.3f}"
            f"  ({self.links} links, {self.links_from_unclustered} from unclustered stories)",
            f"duplicates precision: {self.duplicate_precision:.3f}"
            f"  recall: {self.duplicate_recall:.3f}",
        ]


def evaluate(stories: list[LabelledStory], rules: EnrichmentRules, folds: int = 5) -> Report:
    accuracy, fallbacks = _sections(stories, rules, folds)
    precision, recall, links, stray, dup_p, dup_r = _links(stories, rules)
    return Report(
        stories=len(stories),
        sections=len({s.section for s in stories}),
        section_accuracy=accuracy,
        section_fallbacks=fallbacks,
        related_precision=precision,
        related_recall=recall,
        links=links,
        links_from_unclustered=stray,
        duplicate_precision=dup_p,
        duplicate_recall=dup_r,
    )


def _sections(
    stories: list[LabelledStory], rules: EnrichmentRules, folds: int
) -> tuple[float, int]:
    root = {s.id: s.duplicate_of or s.id for s in stories}
    groups = sorted(set(root.values()))
    random.Random(5).shuffle(groups)
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    correct = fallbacks = 0
    for fold in range(folds):
        enricher = StoryEnricher(rules)
        train = [s for s in stories if fold_of[root[s.id]] != fold]
        enricher.train((s.article(START), s.section) for s in train)
        for story in (s for s in stories if fold_of[root[s.id]] == fold):
            assigned = assign_section(
                story.article(START), rules.taxonomy, enricher.classifier,
                rules.min_section_confidence,
            )  # fmt: skip
            correct += assigned.id == story.section
            fallbacks += assigned.method == "default"
    return correct / len(stories), fallbacks


def publication_order(stories: list[LabelledStory], seed: int = 11) -> list[LabelledStory]:
    """Shuffled, with every re-sent copy somewhere after its original."""
    rng = random.Random(seed)
    order = [s for s in stories if s.duplicate_of is None]
    rng.shuffle(order)
    for copy in (s for s in stories if s.duplicate_of is not None):
        at = next(i for i, s in enumerate(order) if s.id == copy.duplicate_of)
        order.insert(rng.randint(at + 1, len(order)), copy)
    return order


def _links(
    stories: list[LabelledStory], rules: EnrichmentRules
) -> tuple[float, float, int, int, float, float]:
    by_id = {s.id: s for s in stories}
    root = {s.id: s.duplicate_of or s.id for s in stories}
    cluster = {s.id: by_id[root[s.id]].cluster for s in stories}
    enricher = StoryEnricher(rules)
    seen: list[LabelledStory] = []
    returned = hits = stray = 0
    recalls: list[float] = []
    flagged = flagged_right = 0
    copies = sum(1 for s in stories if s.duplicate_of)
    for i, story in enumerate(publication_order(stories)):
        article = story.article(START + i * STEP)
        enricher.observe(article)
        result = enricher.enrich(article).enrichment
        linked = [r.uri for r in result.related[:TOP]]
        mine = cluster[story.id]
        truth = {
            root[s.id]
            for s in seen
            if mine and cluster[s.id] == mine and root[s.id] != root[story.id]
        }
        right = {root[_id(u)] for u in linked} & truth
        returned += len(linked)
        hits += sum(1 for u in linked if root[_id(u)] in truth)
        stray += len(linked) if not mine else 0
        if truth:
            recalls.append(len(right) / min(TOP, len(truth)))
        if result.duplicate_of is not None:
            flagged += 1
            flagged_right += _id(result.duplicate_of) == story.duplicate_of
        seen.append(story)
    precision = hits / returned if returned else 1.0
    recall = sum(recalls) / len(recalls) if recalls else 1.0
    dup_precision = flagged_right / flagged if flagged else 1.0
    dup_recall = flagged_right / copies if copies else 1.0
    return precision, recall, returned, stray, dup_precision, dup_recall


def _id(uri: str) -> str:
    return uri.rsplit(":", 1)[-1]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS
    stories = parse_corpus(path.read_text(encoding="utf-8").splitlines())
    rules = EnrichmentRules(Taxonomy.from_file(DEFAULT_TAXONOMY))
    for line in evaluate(stories, rules).lines():
        print(line)


if __name__ == "__main__":
    main()
