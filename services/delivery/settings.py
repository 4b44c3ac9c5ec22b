"""delivery's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from shared.settings import NewsflowSettings


class DeliverySettings(NewsflowSettings):
    delivery_host: str = "127.0.0.1"
    delivery_port: int = 8003
    delivery_group_id: str = "newsflow-delivery"
    admin_token: str = ""
    # Loopback/private webhook targets are refused unless this is on (local demos and tests).
    delivery_allow_private_targets: bool = False
    delivery_timeout_s: float = 15.0
    # Seconds before each attempt: in-process for now, not yet durable across restarts.
    delivery_retry_delays_s: list[float] = [0.0, 1.0, 4.0]
    delivery_max_in_flight: int = 200
    cache_per_section: int = 200
