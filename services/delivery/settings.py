"""delivery's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import NewsflowSettings

DAY_S = 86_400.0


class DeliverySettings(NewsflowSettings):
    delivery_host: str = "127.0.0.1"
    delivery_port: int = 8003
    delivery_group_id: str = "newsflow-delivery"
    delivery_sender_group_id: str = "newsflow-delivery-sender"
    admin_token: str = ""
    # Loopback/private webhook targets are refused unless this is on (local demos and tests).
    delivery_allow_private_targets: bool = False
    delivery_timeout_s: float = 15.0
    # Wait before each attempt (the first is "immediately"); the number of entries is the number
    # of attempts. Retries wait on Kafka retry topics, so they survive restarts and crashes.
    delivery_retry_delays_s: list[float] = Field(
        default=[0, 5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1
    )
    delivery_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    # A 429/503 asking for more than this is waited this long.
    delivery_max_retry_after_s: float = 6 * 3600.0
    delivery_auto_disable_after_s: float = 5 * DAY_S
    delivery_rotation_overlap_s: float = DAY_S
    delivery_max_in_flight: int = 500
    delivery_per_endpoint_in_flight: int = 32
    delivery_breaker_failures: int = 5
    delivery_breaker_cooldown_s: float = 30.0
    # How soon a newer version of a story waiting behind an older, undelivered one looks again.
    delivery_order_recheck_s: float = 2.0
    delivery_attempts_kept: int = 1000
    delivery_commit_interval_s: float = 0.5
    embargo_poll_s: float = 1.0
    cache_per_section: int = 1000
    cache_check_interval_s: float = 2.0
    cache_max_age_s: int = 5
