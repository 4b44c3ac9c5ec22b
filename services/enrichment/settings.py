"""enrichment's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import NewsflowSettings

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.json")
# The labelled corpus (a copy of tests/data/corpus/stories.jsonl) the classifier starts from.
DEFAULT_TRAINING = Path(__file__).with_name("seed_corpus.jsonl")


class EnrichmentSettings(NewsflowSettings):
    # Interface enrichment's health/metrics API listens on.
    enrichment_host: str = "127.0.0.1"
    # Port of enrichment's health/metrics API.
    enrichment_port: int = 8002
    # Consumer group of the enrichment instances (the topic prefix is not added).
    enrichment_group_id: str = "newsflow-enrichment"
    # The sections file (versioned JSON); replace it to change the taxonomy.
    enrichment_taxonomy_path: Path = DEFAULT_TAXONOMY
    # Labelled stories (JSON lines: section, headline, summary) to train the classifier at start;
    # empty string: start from the taxonomy keywords and learn online only.
    enrichment_training_path: Path | None = DEFAULT_TRAINING
    # Below this classifier confidence a story goes to `general`.
    enrichment_min_section_confidence: float = 0.5
    # Most related stories linked from one story.
    enrichment_related_limit: int = 5
    # Weakest score still linked: unrelated same-section stories stay out.
    enrichment_related_min_score: float = 0.2
    # How far back related stories are looked for (default 7 days).
    enrichment_index_window_s: float = 7 * 24 * 3600.0
    # Most stories kept in the related-stories index.
    enrichment_index_capacity: int = 200_000
    # MinHash similarity from which a story is a near-duplicate.
    enrichment_duplicate_similarity: float = 0.7
    # Processes computing story features (tokens, entities, MinHash) for the story table, so they
    # run on another core; 0: in the service process itself.
    enrichment_feature_workers: int = Field(1, ge=0)
    # While the enricher waits for the story table (at start-up, or after a burst), the service
    # process computes one chunk's features itself at a time besides the workers: its core is
    # idle then. False: the workers compute them all.
    enrichment_features_here_while_waiting: bool = True
    # A fetch of the story table cut into chunks this small or smaller (the steady flow, a few
    # stories a fetch) has its features computed in the service process: a round trip to a
    # worker added 4-10 ms to the enrichment hop at 400 stories/s. Bigger chunks (a rebuild, a
    # burst) go to the workers. 0: every chunk goes to the workers.
    enrichment_features_here_up_to: int = Field(16, ge=0)
    # Latest records of each partition the story table keeps once read, for this instance's
    # group member to take from there rather than fetch each record a second time (~3.5 KB
    # each: 1,000 of each of 6 partitions hold ~21 MB). A member further behind than that
    # fetches its records itself until it catches up. 0: the member always fetches its own.
    enrichment_recent_per_partition: int = Field(1000, ge=0)
    # Longest a fetch of the story table or of the group's consumer waits for records. Shorter
    # than the other consumers' (NEWSFLOW_KAFKA_FETCH_MAX_WAIT_MS): while the enricher works on a
    # partition's records, the client's next fetch goes out without that partition, and records
    # arriving there wait until that fetch comes back (at 100 stories/s the enrichment hop took
    # 42 ms p50 with 20 ms, 23 ms with 10). Costs ~5% of a core more when idle (service, broker).
    enrichment_fetch_max_wait_ms: int = Field(10, ge=1)
    # How often the consumer group commits the offsets of stories whose enriched records are
    # acknowledged (as NEWSFLOW_DELIVERY_COMMIT_INTERVAL_S): a commit each batch was ~23 requests
    # a second to the broker at 700 stories/s. A restart or a rebalance redoes at most this much
    # (at least once, as before). 0: each batch as soon as its output is acknowledged.
    enrichment_commit_interval_s: float = Field(0.5, ge=0)
