"""The enricher's CPU a story, this checkout against a reference commit, in one process.

    .venv/bin/python -m bench.enrichment_ab [--against bf597ab] [--indexed 30000] [--stories 2000]

Loads the reference's enrichment modules (`git show REF:services/enrichment/...`, as the package
`_reference`; see `bench.enrichment_sameness`) beside this checkout's, builds both indexes from the
same bench stories (`bench.enrichment.Newsroom`, as `bench/enrichment.py` makes them), then feeds
each measured story to both, alternating which goes first: the story table's part (`observe` with
the features the feature worker would have sent) and the consumer's part (enrich and encode, as the
service does). Prints the CPU a story of each (process time; both ran under the same load, so their
ratio holds even on a busy box) and checks that every story came out byte for byte the same.
No broker, no Kafka client, no feature worker: what is left is the service process's own work.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.enrichment import Newsroom, records
from bench.enrichment_sameness import reference
from bench.stories import stream
from services.enrichment import domain
from services.enrichment.corpus import parse_corpus
from services.enrichment.index import Shingler, features_of
from services.enrichment.settings import DEFAULT_TAXONOMY, DEFAULT_TRAINING
from services.enrichment.taxonomy import Taxonomy
from shared.events import Article, decode_article, encode, encode_story

MODULES = ("kernels", "text", "entities", "classifier", "index", "domain")
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def enricher_of(module: ModuleType) -> Any:
    stories = parse_corpus(DEFAULT_TRAINING.read_text(encoding="utf-8").splitlines())
    enricher = module.StoryEnricher(module.EnrichmentRules(Taxonomy.from_file(DEFAULT_TAXONOMY)))
    enricher.train((s.article(datetime(2026, 1, 1, tzinfo=UTC)), s.section) for s in stories)
    return enricher


def enriched(enricher: Any) -> Callable[[Article], bytes]:
    """The story as the service sends it, by whichever way that version of the code had."""
    if hasattr(enricher, "enriched"):
        return lambda article: enricher.enriched(article, now=NOW).story_value(article)
    if hasattr(enricher, "enrichment_of"):
        return lambda article: encode_story(article, enricher.enrichment_of(article, now=NOW))
    return lambda article: encode(enricher.enrich(article, now=NOW))


def e2e_articles(count: int) -> list[Article]:
    """The end-to-end bench's stories and corrections (not its withdrawals), as ingest would
    store them: one a millisecond.
    """
    items = [item for item in stream(count + count // 50, "ab") if item.kind != "withdraw"]
    return [
        Article.model_validate(
            {**json.loads(item.body), "versioncreated": NOW + timedelta(milliseconds=n)}
        )
        for n, item in enumerate(items[:count])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", default="bf597ab", help="reference commit")
    parser.add_argument("--indexed", type=int, default=30_000)
    parser.add_argument("--stories", type=int, default=2_000)
    parser.add_argument(
        "--stream",
        choices=("newsroom", "e2e"),
        default="newsroom",
        help="the enrichment bench's stories, or the end-to-end bench's (a small index whose "
        "stories share many terms: many candidates a lookup)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        old = reference(args.against, Path(folder), MODULES)
        enrichers = {"reference": enricher_of(old["domain"]), "this checkout": enricher_of(domain)}
        print(f"making {args.indexed} + {args.stories} bench stories ...", flush=True)
        if args.stream == "e2e":
            articles = e2e_articles(args.indexed + args.stories)
            preload, measured = articles[: args.indexed], articles[args.indexed :]
        else:
            newsroom = Newsroom()
            preload = [decode_article(v) for _, v in records(newsroom, 0, args.indexed)]
            measured = [decode_article(v) for _, v in records(newsroom, args.indexed, args.stories)]
        shingler = Shingler()
        spent = dict.fromkeys(enrichers, 0.0)
        for article in preload:
            features = features_of(article, shingler)
            for enricher in enrichers.values():
                enricher.observe(article, features)
        print(f"both indexes hold {args.indexed} stories; measuring ...", flush=True)
        outputs = {name: enriched(enricher) for name, enricher in enrichers.items()}
        for output in outputs.values():  # compiles each version's loops (or loads them)
            for article in preload[-20:]:
                output(article)
        names = list(enrichers)
        differences = 0
        for n, article in enumerate(measured):
            features = features_of(article, shingler)
            values = {}
            for name in names if n % 2 else reversed(names):
                started = time.process_time()
                enrichers[name].observe(article, features)
                values[name] = outputs[name](article)
                spent[name] += time.process_time() - started
            differences += len(set(values.values())) > 1

    per_story = {name: spent[name] / args.stories * 1e6 for name in names}
    print(f"stories: {args.stories} measured, {args.indexed} indexed (in process, no Kafka)")
    for name in names:
        print(f"{name}: {per_story[name]:,.0f} us CPU a story (observe + enrich + encode)")
    print(
        f"ratio this checkout / reference ({args.against}): "
        f"{per_story['this checkout'] / per_story['reference']:.2f}"
    )
    print(f"stories that came out different: {differences}")


if __name__ == "__main__":
    main()
