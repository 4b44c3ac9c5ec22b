"""Checks that enrichment reads stories exactly as a reference commit did: same features, same
sections, same stories out.

    .venv/bin/python -m bench.enrichment_sameness [--against 7d775bc] [--bench-stories 3000]

Loads the reference's text, entities, classifier, index and domain modules (`git show REF:...`;
the default is the commit before this reading was made cheaper)
as a separate package, and runs both on the seed corpus, the eval corpus (tests/data/corpus),
the sample under /work/shared/data (or `--sample`), bench stories (`bench.enrichment.Newsroom`)
and stories remixed from their words with the rules' edge cases (demonyms, titles, apostrophes).
Compares per story: the read (terms, words, text), entities, the MinHash signature bit for bit,
`features_of` field by field; then the whole `StoryEnricher` (observe every story, enrich every
other one) with the encoded stories compared byte for byte, and a classifier learning and
predicting online with sections and confidences compared to the printed precision (3 places).
Prints up to ten differences per check and corpus; exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench.enrichment import T0, Newsroom
from services.enrichment import classifier, domain, entities, index, text
from services.enrichment.corpus import parse_corpus
from services.enrichment.settings import DEFAULT_TAXONOMY
from services.enrichment.taxonomy import Taxonomy
from shared.events import Article, encode

REPO = Path(__file__).resolve().parent.parent
MODULES = ("text", "entities", "classifier", "index", "domain")
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def reference(ref: str, into: Path, modules: tuple[str, ...] = MODULES) -> dict[str, ModuleType]:
    """The reference commit's modules, importable as `_reference.<name>`."""
    package = into / "_reference"
    package.mkdir()
    if "kernels" not in modules and _has(ref, "services/enrichment/kernels.py"):
        modules = ("kernels", *modules)  # the reference's compiled loops, not this checkout's
    (package / "__init__.py").write_text("")
    for name in modules:
        source = subprocess.run(
            ["git", "show", f"{ref}:services/enrichment/{name}.py"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for other in modules:
            source = source.replace(f"services.enrichment.{other} ", f"_reference.{other} ")
            source = source.replace(
                f"from services.enrichment import {other}\n", f"from _reference import {other}\n"
            )
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(into))
    return {name: importlib.import_module(f"_reference.{name}") for name in modules}


def _has(ref: str, path: str) -> bool:
    found = subprocess.run(["git", "cat-file", "-e", f"{ref}:{path}"], cwd=REPO, check=False)
    return found.returncode == 0


def corpus_articles(path: Path, start: datetime) -> list[Article]:
    stories = parse_corpus(path.read_text(encoding="utf-8").splitlines())
    # Every other story carries its section as a provider hint (so it is learned, not guessed).
    return [
        s.article(start + timedelta(minutes=i), with_hint=i % 2 == 0) for i, s in enumerate(stories)
    ]


def _ninjs_text(raw: dict[str, Any], *names: str) -> str:
    for name in names:
        value = raw.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return "\n".join(str(v.get("value", "")) for v in value)
    return ""


def sample_articles(folder: Path) -> list[Article]:
    """The sample stories: plain-text files (first line the headline) and ninjs documents."""
    articles = []
    for n, path in enumerate(sorted(folder.rglob("*"))):
        uri = f"urn:newsflow:sample:{n}"
        if path.suffix == ".txt":
            headline, _, body = path.read_text(encoding="utf-8").partition("\n")
            paragraphs = "".join(f"<p>{p}</p>" for p in body.split("\n\n") if p.strip())
            fields: dict[str, Any] = {"headline": headline, "body_html": paragraphs}
        elif path.suffix == ".json" and "schema" not in path.name:
            raw = json.loads(path.read_text(encoding="utf-8"))
            headline = _ninjs_text(raw, "headline", "headline_main", "headlines")
            body = _ninjs_text(raw, "body_html", "body_richtext", "body_main", "bodies")
            summary = _ninjs_text(raw, "description_text", "description_main", "descriptions")
            fields = {"headline": headline, "summary": summary or None, "body_html": body}
        else:
            continue
        fields |= {"uri": uri, "provider": "sample", "versioncreated": T0 + timedelta(hours=n)}
        articles.append(Article.model_validate(fields))
    return articles


# Where the rules have edges: demonyms, titles, sentence starts, apostrophes, digits, accents.
EDGES = (
    "Israeli",
    "South African",
    "South\u00a0African",
    "Israeli Defense",
    "coach",
    "President",
    "Dr",
    ".",
    "\n",
    "\u201c",
    "!",
    ":",
    "'s",
    "\u2019s",
    "Netanyahu\u2019s",
    "10-year",
    "_x",
    "a-",
    "9a",
    "rock'n'roll",
    "\u00c9conomie",
    "US",
    "United Nations",
    "of",
    "Ministry of Health",
    "<b>",
    "&amp;",
)


def remixed_articles(articles: list[Article], count: int) -> list[Article]:
    """Stories made of other stories' words shuffled with the edge cases: rules meet odd text."""
    rng = random.Random(5)
    pool = [w for a in articles for w in f"{a.headline} {a.summary or ''}".split()]
    pool += list(EDGES) * max(1, len(pool) // (4 * len(EDGES)))
    separators = (" ", " ", " ", "  ", "\n", ". ", "\t", ", ")
    stories = []
    for n in range(count):
        parts = [rng.choice(pool) + rng.choice(separators) for _ in range(rng.randint(1, 400))]
        text = "".join(parts)
        fields = {"uri": f"urn:newsflow:remix:{n}", "provider": "remix", "versioncreated": T0}
        fields |= {"headline": text[:80].strip() or "x", "body_html": f"<p>{text}</p>"}
        if n % 2 == 0:
            fields["section"] = "Sport"
        stories.append(Article.model_validate(fields))
    return stories


def differences(old: dict[str, ModuleType], articles: list[Article]) -> Iterator[str]:
    """What the new code reads differently from the reference, story by story."""
    old_shingler, new_shingler = old["index"].Shingler(), index.Shingler()
    for article in articles:
        before, after = old["text"].read_story(article), text.read_story(article)
        for name in ("terms", "words", "text"):
            if getattr(before, name) != getattr(after, name):
                yield f"{article.uri}: read_story().{name}"
        snippet = after.text[: index._ENTITY_CHARS]
        found = old["entities"].extract_entities(snippet), entities.extract_entities(snippet)
        if _entity_names(found[0]) != _entity_names(found[1]):
            yield f"{article.uri}: extract_entities"
        signatures = old_shingler.signature(after.words), new_shingler.signature(after.words)
        if not _same_array(*signatures):
            yield f"{article.uri}: Shingler.signature"
        was = old["index"].features_of(article, old_shingler)
        now = index.features_of(article, new_shingler)
        for name in was.__dataclass_fields__:
            a, b = getattr(was, name), getattr(now, name)
            same = _same_array(a, b) if name == "signature" else a == b
            # Dicts compare equal in any order; the order of the terms matters too.
            if name == "term_counts":
                same = same and list(a) == list(b)
            if name == "entities":
                same = _entity_names(a) == _entity_names(b)
            if not same:
                yield f"{article.uri}: features_of().{name}"


def _entity_names(found: Any) -> tuple[tuple[str, ...], ...]:
    return found.people, found.places, found.organisations


def _same_array(a: Any, b: Any) -> bool:
    return bool(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))


def enricher_differences(
    old: dict[str, ModuleType], articles: list[Article], taxonomy: Taxonomy
) -> Iterator[str]:
    """The whole enricher: every story observed, every other one enriched; bytes compared."""
    seed = corpus_articles(DEFAULT_TAXONOMY.with_name("seed_corpus.jsonl"), T0)
    labelled = [(a, a.section or "") for a in seed]
    enrichers = []
    for module in (old["domain"], domain):
        enricher = module.StoryEnricher(module.EnrichmentRules(taxonomy))
        enricher.train(labelled)
        enrichers.append(enricher)
    for n, article in enumerate(articles):
        outs = []
        for enricher in enrichers:
            enricher.observe(article)
            if n % 2:
                outs.append(_sent(enricher, article))
        if outs and outs[0] != outs[1]:
            yield f"{article.uri}: enriched story"


def _sent(enricher: Any, article: Article) -> bytes:
    """The story as the service sends it, by whichever way that version of the code had (the
    models, or encoded from what was found: checked against the models too)."""
    by_models = encode(enricher.enrich(article, now=NOW))
    if hasattr(enricher, "enriched"):
        sent: bytes = enricher.enriched(article, now=NOW).story_value(article)
        if sent != by_models:
            return b"story_value differs from the models: " + sent
    return by_models


def classifier_differences(
    old: dict[str, ModuleType], articles: list[Article], taxonomy: Taxonomy
) -> Iterator[str]:
    """Learning stories with a section, predicting the others, online: the printed answers."""
    classifiers = [m.SectionClassifier(taxonomy.classes) for m in (old["classifier"], classifier)]
    worst = 0.0
    for article in articles:
        counts = classifier.term_counts(text.read_story(article).terms)
        hinted = taxonomy.by_hint(article.section) if article.section else None
        if hinted is not None:
            for model in classifiers:
                model.learn(counts, hinted.id)
            continue
        was, now = (model.predict(counts) for model in classifiers)
        if (was is None) != (now is None):
            yield f"{article.uri}: predict() None on one side"
        elif was is not None and now is not None:
            worst = max(worst, abs(was.confidence - now.confidence))
            if was.section_id != now.section_id:
                yield f"{article.uri}: predicted {was.section_id} then, {now.section_id} now"
            elif round(was.confidence, 3) != round(now.confidence, 3):
                yield f"{article.uri}: confidence {was.confidence} then, {now.confidence} now"
    print(f"  classifier: largest confidence difference {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--against", default="7d775bc", help="the reference commit (default: before this work)"
    )
    parser.add_argument("--bench-stories", type=int, default=3000)
    parser.add_argument("--sample", type=Path, default=Path("/work/shared/data"))
    args = parser.parse_args()
    taxonomy = Taxonomy.from_file(DEFAULT_TAXONOMY)
    newsroom = Newsroom()
    corpora = {
        "seed corpus": corpus_articles(DEFAULT_TAXONOMY.with_name("seed_corpus.jsonl"), T0),
        "eval corpus": corpus_articles(REPO / "tests/data/corpus/stories.jsonl", T0),
        "sample": sample_articles(args.sample) if args.sample.is_dir() else [],
        "bench stories": [
            newsroom.story(n, T0 + timedelta(seconds=2 * n)) for n in range(args.bench_stories)
        ],
    }
    corpora["remixed"] = remixed_articles([a for c in corpora.values() for a in c], 1000)
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        old = reference(args.against, Path(folder))
        for name, articles in corpora.items():
            print(f"{name}: {len(articles)} stories")
            for check in (
                differences(old, articles),
                enricher_differences(old, articles, taxonomy),
                classifier_differences(old, articles, taxonomy),
            ):
                found = list(check)
                for line in found[:10]:
                    print(f"  DIFFERENT {line}")
                failed = failed or bool(found)
    print("different" if failed else f"same as {args.against}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
