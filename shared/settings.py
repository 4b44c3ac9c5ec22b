"""Settings every service reads; each service subclasses this with its own fields."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.events import Topics


class NewsflowSettings(BaseSettings):
    """Read once at start-up from `NEWSFLOW_*` environment variables (or a `.env` file)."""

    model_config = SettingsConfigDict(env_prefix="NEWSFLOW_", env_file=".env", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Apache Kafka supports the idempotent producer; the embedded Tansu broker does not.
    kafka_enable_idempotence: bool = False
    kafka_linger_ms: int = 5
    kafka_max_batch_bytes: int = 262_144
    kafka_compression: Literal["gzip", "none"] = "gzip"
    topic_prefix: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "newsflow:"
    event_source: str = "urn:newsflow"
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
