"""ingest's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from shared.settings import NewsflowSettings


class IngestSettings(NewsflowSettings):
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8001
    # Comma-separated API keys accepted on `Authorization: Bearer <key>`.
    ingest_api_keys: str = ""
    ingest_max_body_bytes: int = 1_048_576

    @property
    def api_keys(self) -> list[str]:
        return [key.strip() for key in self.ingest_api_keys.split(",") if key.strip()]
