"""ingest's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.ingest.domain import KeyRing, Limits
from services.ingest.feeds import FeedIn
from shared.settings import NewsflowSettings


class IngestSettings(NewsflowSettings):
    # Interface the ingest API listens on (0.0.0.0 in containers).
    ingest_host: str = "127.0.0.1"
    # Port of the ingest API.
    ingest_port: int = 8001
    # Uvicorn worker processes (each with its own producer); 2 suits a 2-core box.
    ingest_workers: int = 1
    # Comma-separated API keys on `Authorization: Bearer <key>`: `provider=secret` binds a key to
    # a provider, `provider=sha256:<hex>` gives only its digest, a bare `secret` is unscoped.
    ingest_api_keys: str = ""
    # A file with one such entry per line (`#` comments); digests keep keys out of config.
    ingest_api_keys_file: Path | None = None
    # Where a provider's uris must start; `{provider}` is replaced by the key's provider.
    ingest_uri_namespace: str = "urn:newsflow:{provider}:"
    # Larger request bodies get 413.
    ingest_max_body_bytes: int = 1_048_576
    # Longer headlines get 413.
    ingest_max_headline_chars: int = 300
    # Most articles in one POST /v1/articles/batch (more: 413).
    ingest_max_batch_items: int = 500
    # Articles per key per window, shared by all replicas through Redis.
    ingest_rate_limit: int = 6_000
    # The rate limit's window.
    ingest_rate_window_s: int = 60
    # While articles keep coming (one within this of the last claim sent), how long a claim on
    # an article version waits for others to go to Redis with it: fewer round trips at high
    # rates (1,000 paced posts a second: ~3 claims a call, not 1) for at most this much latency.
    # A quiet stream's claim goes at once. 0: each event-loop tick's claims at once.
    ingest_claim_window_ms: float = Field(2.0, ge=0)
    # How long a request waits for the broker's ack before answering 503.
    ingest_ack_timeout_s: float = 10.0
    # `Retry-After` sent with 503 and 429 answers.
    ingest_retry_after_s: int = 5
    # Feeds polled from start-up (JSON list of {url, provider, section, interval_s}).
    ingest_feeds: list[FeedIn] = Field(default_factory=list)
    # How often the poller looks for feeds that are due.
    ingest_feed_tick_s: float = 1.0
    # Loopback/private feed hosts are refused unless this is on (local demos and tests).
    ingest_feeds_allow_private: bool = False

    @property
    def api_keys(self) -> KeyRing:
        entries = self.ingest_api_keys.split(",")
        if self.ingest_api_keys_file is not None:
            entries += self.ingest_api_keys_file.read_text().splitlines()
        return KeyRing(entries)

    @property
    def limits(self) -> Limits:
        return Limits(self.ingest_max_headline_chars, self.ingest_max_batch_items)
