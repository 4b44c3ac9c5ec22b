"""The status page's rendering and sampling (the browser test sees it served for real)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.delivery.status_page import (
    LatestStory,
    Pulse,
    StatusView,
    SubscriptionHealth,
    render,
    sparkline,
)

pytestmark = pytest.mark.unit


def health(**overrides: object) -> SubscriptionHealth:
    values: dict[str, object] = {
        "id": "sub_1",
        "url": "https://partner.example/hooks",
        "description": "Partner <One>",
        "state": "active",
        "attempts": 10,
        "delivered": 9,
        "last_error": "HTTP 503",
        "last_attempt_at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "backlog": 3,
    }
    values.update(overrides)
    return SubscriptionHealth(**values)  # type: ignore[arg-type]


def test_page_shows_health_and_escapes_partner_text() -> None:
    view = StatusView(
        subscriptions=[health(), health(id="sub_2", state="disabled", attempts=0, delivered=0)],
        throughput_per_min=[1, 5, 3],
        lag=[0, 2, 1],
        latest={"world": [LatestStory("urn:a", "Talks <resume>", "2026-11-25T11:00:00Z")]},
    )
    page = render(view)
    assert "90.0%" in page
    assert "Partner &lt;One&gt;" in page and "<One>" not in page
    assert "Talks &lt;resume&gt;" in page
    assert "disabled" in page and "no attempts" in page
    assert page.count("<svg") == 2


def test_empty_page_says_so() -> None:
    page = render(StatusView([], [], [], {}))
    assert "No subscriptions yet." in page
    assert "The cache is empty." in page


def test_pulse_turns_counts_into_per_minute_rates() -> None:
    pulse = Pulse(size=3)
    for second, count in enumerate([0, 10, 30, 60, 100]):
        pulse.sample(count, lag=second, now=second * 10.0)
    assert list(pulse.rates) == [120.0, 180.0, 240.0]
    assert list(pulse.lags) == [2.0, 3.0, 4.0]


def test_sparkline_of_nothing_is_flat() -> None:
    assert "points=" in sparkline([])
