"""enrichment's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from pathlib import Path

from shared.settings import NewsflowSettings

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.json")


class EnrichmentSettings(NewsflowSettings):
    enrichment_host: str = "127.0.0.1"
    enrichment_port: int = 8002
    enrichment_group_id: str = "newsflow-enrichment"
    enrichment_taxonomy_path: Path = DEFAULT_TAXONOMY
    enrichment_min_section_confidence: float = 0.4
    enrichment_related_limit: int = 5
    enrichment_related_min_score: float = 0.1
    enrichment_index_capacity: int = 50_000
