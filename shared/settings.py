"""Settings every service reads; each service subclasses this with its own fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.cpu import CpuScheduling
from shared.events import Topics


class NewsflowSettings(BaseSettings):
    """Read once at start-up from `NEWSFLOW_*` environment variables (or a `.env` file)."""

    model_config = SettingsConfigDict(env_prefix="NEWSFLOW_", env_file=".env", extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap address(es), comma-separated."
    )
    kafka_enable_idempotence: bool = Field(
        False,
        description="Idempotent producer: on for Apache Kafka; the embedded Tansu broker does not "
        "support it.",
    )
    kafka_linger_ms: int = Field(
        5,
        description="Producer batching delay. The first record opens a window this long for "
        "every partition: what is written meanwhile goes out with it, in one produce request.",
    )
    kafka_max_batch_bytes: int = Field(
        262_144, description="Producer batch size; the client default (16 KiB) holds 5 stories."
    )
    kafka_fetch_max_wait_ms: int = Field(
        10,
        description="Longest a consumer's fetch waits for records (delivery's story consumer). "
        "A fetch in flight leaves out the partitions whose records the service is still "
        "working on, and the embedded broker answers a fetch with no records only after about "
        "half this wait, even when records arrive meanwhile: it bounds each hop's latency. "
        "Shorter waits cost broker and client CPU when idle (more polls a second).",
    )
    kafka_fetch_interval_ms: int = Field(
        15,
        ge=0,
        description="Least time between two fetches of the story streams (enrichment's story "
        "table, delivery's story consumer) while records keep coming (a fetch brought records "
        "within this of its start); the partitions rest in between, so each fetch brings what "
        "came meanwhile. A quiet stream is fetched at once. 0: never rest. On the embedded "
        "broker every fetch that returns records costs CPU in proportion to the batches a "
        "topic holds.",
    )
    kafka_compression: Literal["zstd", "lz4", "gzip", "none"] = Field(
        "zstd",
        description="Record compression. zstd costs about as much CPU as none and shrinks "
        "batches of stories ~4x; gzip costs ~8x more CPU per 3 KB story (docs/benchmarks.md).",
    )
    topic_prefix: str = Field("", description="Prepended to every topic name.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis server.")
    redis_key_prefix: str = Field("newsflow:", description="Prepended to every Redis key.")
    event_source: str = Field(
        "urn:newsflow", description="CloudEvents `source` stem; the service name is appended."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: console on a terminal, JSON otherwise."
    )

    cpu_scheduling: CpuScheduling = Field(
        "batch",
        description="The kernel's scheduling policy for the service's process. `batch` "
        "(SCHED_BATCH): a process woken by a record or request waits for the running one to "
        "block or use up its time slice rather than cutting it short; on a small box running the "
        "whole pipeline this halved the p99 at 700 stories/s. The same share of CPU either way. "
        "`normal`: the default policy. Where the system has no SCHED_BATCH, `normal`.",
    )

    otel_enabled: bool = Field(
        False, description="OpenTelemetry HTTP spans (needs the `otel` extra)."
    )
    otel_endpoint: str = Field(
        "",
        description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; empty: console.",
    )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
