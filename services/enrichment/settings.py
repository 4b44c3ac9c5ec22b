"""enrichment's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from pathlib import Path

from shared.settings import NewsflowSettings

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.json")
# The labelled corpus (a copy of tests/data/corpus/stories.jsonl) the classifier starts from.
DEFAULT_TRAINING = Path(__file__).with_name("seed_corpus.jsonl")


class EnrichmentSettings(NewsflowSettings):
    enrichment_host: str = "127.0.0.1"
    enrichment_port: int = 8002
    enrichment_group_id: str = "newsflow-enrichment"
    enrichment_taxonomy_path: Path = DEFAULT_TAXONOMY
    # Labelled stories (JSON lines: section, headline, summary) to train the classifier at start;
    # empty string: start from the taxonomy keywords and learn online only.
    enrichment_training_path: Path | None = DEFAULT_TRAINING
    enrichment_min_section_confidence: float = 0.5
    enrichment_related_limit: int = 5
    enrichment_related_min_score: float = 0.2
    enrichment_index_window_s: float = 7 * 24 * 3600.0
    enrichment_index_capacity: int = 200_000
    enrichment_duplicate_similarity: float = 0.7
