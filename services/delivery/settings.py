"""delivery's settings (env prefix `NEWSFLOW_`)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import NewsflowSettings

DAY_S = 86_400.0


class DeliverySettings(NewsflowSettings):
    # Interface the delivery API listens on (0.0.0.0 in containers).
    delivery_host: str = "127.0.0.1"
    # Port of the delivery API, the read API and /ops.
    delivery_port: int = 8003
    # Consumer group stem (the topic prefix is prepended; `-sender` for jobs).
    delivery_group_id: str = "newsflow-delivery"
    # Bearer token of the admin API and the /ops status page.
    admin_token: str = ""
    # Key that seals the subscriptions' signing secrets on the subscriptions topic, which every
    # reader of the cluster could otherwise read (a Fernet key: `newsflow secrets-key` makes
    # one). Every delivery instance needs the same one. To rotate, list the new key first and the
    # old ones after, comma-separated: the first seals, any opens; then `newsflow subs reseal`
    # seals every stored secret with the first, and the old ones can go. Unset: stored
    # in plain text, with a warning at start.
    delivery_secrets_key: str = ""
    # Loopback/private webhook targets are refused unless this is on (local demos and tests).
    delivery_allow_private_targets: bool = False
    # Timeout of one webhook attempt.
    delivery_timeout_s: float = 15.0
    # Wait before each attempt (the first is "immediately"); the number of entries is the number
    # of attempts. Retries wait on Kafka retry topics, so they survive restarts and crashes.
    delivery_retry_delays_s: list[float] = Field(
        default=[0, 5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1
    )
    # Each retry delay varies by up to this fraction (0.2 = ±20%).
    delivery_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    # A 429/503 asking for more than this is waited this long.
    delivery_max_retry_after_s: float = 6 * 3600.0
    # A subscription failing continuously this long is disabled (default 5 days).
    delivery_auto_disable_after_s: float = 5 * DAY_S
    # After a secret rotation the old secret also signs for this long.
    delivery_rotation_overlap_s: float = DAY_S
    # Webhook attempts in flight at once, over all endpoints.
    delivery_max_in_flight: int = 256
    # Outbox/retry records being worked on; must stay well above the per-endpoint queue so one
    # slow endpoint can never hold every record.
    delivery_max_records_in_flight: int = 5000
    # Attempts in flight at once to one endpoint.
    delivery_per_endpoint_in_flight: int = 16
    # Jobs queued for one endpoint beyond its in-flight limit; more are parked on a retry tier.
    delivery_per_endpoint_queue: int = 500
    # Consecutive failures that open an endpoint's circuit breaker.
    delivery_breaker_failures: int = 5
    # How long an open breaker waits before trying the endpoint again.
    delivery_breaker_cooldown_s: float = 30.0
    # How soon a newer version of a story waiting behind an older, undelivered one looks again.
    delivery_order_recheck_s: float = 2.0
    # Attempts kept per subscription for GET .../attempts and /ops.
    delivery_attempts_kept: int = 1000
    # How often the story consumer and the sender commit the offsets of settled records.
    delivery_commit_interval_s: float = 0.5
    # Longest a fetch of the sender (outbox and retry tiers) waits for records (Tansu answers
    # only when it runs out). The story consumer, which sends first attempts, uses
    # NEWSFLOW_KAFKA_FETCH_MAX_WAIT_MS. Its jobs are due a second or more later, and a fetch
    # over the outbox and every tier (54 partitions) costs the embedded broker ~4 ms even
    # when empty: at 100 ms an idle sender took ~4 % of a core of it (and ~1 % of delivery's),
    # and at 300 stories/s on a busy 2-core box every hop's p50 was twice what it is at 500 ms
    # (docs/benchmarks.md).
    delivery_fetch_max_wait_ms: int = 500
    # How often embargoed stories are checked for release.
    embargo_poll_s: float = 1.0
    # Stories kept per section (and across all sections) in the cache.
    cache_per_section: int = 1000
    # How often delivery checks the cache is built (rebuilds it if not).
    cache_check_interval_s: float = 2.0
    # `Cache-Control: max-age` of the read API.
    cache_max_age_s: int = 5
