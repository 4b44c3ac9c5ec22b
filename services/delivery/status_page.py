"""The ops status page: a server-rendered HTML view of delivery health. Pure rendering, no I/O.

What it shows is gathered by the app (subscriptions, their recent attempts, the cache) and a
`Pulse` that samples throughput and lag in this process.
"""

from __future__ import annotations

import html
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class SubscriptionHealth:
    id: str
    url: str
    description: str | None
    state: str  # "active", "paused" or "disabled"
    attempts: int
    delivered: int
    last_error: str | None
    last_attempt_at: datetime | None
    backlog: int

    @property
    def success_rate(self) -> float | None:
        return self.delivered / self.attempts if self.attempts else None


@dataclass(frozen=True)
class LatestStory:
    uri: str
    headline: str
    versioncreated: str


@dataclass(frozen=True)
class StatusView:
    subscriptions: list[SubscriptionHealth]
    throughput_per_min: list[float]
    lag: list[float]
    latest: dict[str, list[LatestStory]]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Pulse:
    """Samples a counter and a gauge every `interval_s`; keeps the last `size` samples."""

    interval_s: float = 10.0
    size: int = 60
    rates: deque[float] = field(default_factory=deque)
    lags: deque[float] = field(default_factory=deque)
    _last_count: float | None = None
    _last_at: float = 0.0

    def sample(self, count: float, lag: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._last_count is not None and now > self._last_at:
            per_min = (count - self._last_count) * 60 / (now - self._last_at)
            self.rates.append(max(per_min, 0.0))
            self.lags.append(max(lag, 0.0))
            while len(self.rates) > self.size:
                self.rates.popleft()
                self.lags.popleft()
        self._last_count, self._last_at = count, now


def sparkline(values: list[float], width: int = 240, height: int = 40, label: str = "") -> str:
    """An inline SVG polyline; flat when there is nothing yet."""
    if len(values) < 2:
        values = [0.0, *values] if values else [0.0, 0.0]
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="spark" role="img" aria-label="{html.escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><polyline fill="none" '
        f'stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>'
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#f7f8fa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 8px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{font-weight:600;background:#eef0f4} .muted{color:#6b7380}
.ok{color:#11733b} .warn{color:#a15c00} .bad{color:#b3261e;font-weight:600}
.cards{display:flex;gap:16px;flex-wrap:wrap} .card{background:#fff;padding:12px;border:1px solid
#e3e6eb;border-radius:6px} .spark{color:#2d5bd3;display:block} .sections{display:grid;
grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:16px}
"""


def _rate(subscription: SubscriptionHealth) -> str:
    rate = subscription.success_rate
    if rate is None:
        return '<span class="muted">no attempts</span>'
    css = "ok" if rate >= 0.99 else "warn" if rate >= 0.9 else "bad"
    count = f'<span class="muted">of {subscription.attempts}</span>'
    return f'<span class="{css}">{rate:.1%}</span> {count}'


def _state(subscription: SubscriptionHealth) -> str:
    css = {"active": "ok", "paused": "warn"}.get(subscription.state, "bad")
    return f'<span class="{css}">{html.escape(subscription.state)}</span>'


def _when(moment: datetime | None) -> str:
    return html.escape(moment.isoformat(timespec="seconds")) if moment else "—"


def _story(story: LatestStory) -> str:
    when = html.escape(story.versioncreated[:16])
    return f"<li>{html.escape(story.headline)} <span class='muted'>{when}</span></li>"


def render(view: StatusView) -> str:
    e = html.escape
    rows = (
        "".join(
            f"<tr data-subscription='{e(s.id)}'><td><code>{e(s.id)}</code><br>"
            f"<span class='muted'>{e(s.description or '')}</span></td><td>{e(s.url)}</td>"
            f"<td>{_state(s)}</td><td>{_rate(s)}</td><td>{s.backlog}</td>"
            f"<td>{e(s.last_error or '—')}</td>"
            f"<td>{_when(s.last_attempt_at)}</td></tr>"
            for s in view.subscriptions
        )
        or "<tr><td colspan='7' class='muted'>No subscriptions yet.</td></tr>"
    )
    sections = (
        "".join(
            f"<div class='card'><h3>{e(section)}</h3><ol>"
            + "".join(_story(story) for story in stories)
            + "</ol></div>"
            for section, stories in sorted(view.latest.items())
        )
        or "<p class='muted'>The cache is empty.</p>"
    )
    throughput = view.throughput_per_min[-1] if view.throughput_per_min else 0.0
    lag = view.lag[-1] if view.lag else 0.0
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>newsflow status</title>
<meta http-equiv="refresh" content="15"><style>{STYLE}</style></head>
<body>
<h1>newsflow delivery status</h1>
<p class="muted">Generated {e(view.generated_at.isoformat(timespec="seconds"))}; refreshes every
15 s. Figures are this delivery instance's.</p>
<div class="cards">
<div class="card" id="throughput"><strong>{throughput:.0f}</strong> deliveries/min
{sparkline(view.throughput_per_min, label="deliveries per minute")}</div>
<div class="card" id="lag"><strong>{lag:.0f}</strong> records of consumer lag
{sparkline(view.lag, label="consumer lag")}</div>
</div>
<h2>Subscriptions</h2>
<table id="subscriptions"><thead><tr><th>subscription</th><th>url</th><th>state</th>
<th>success (recent)</th><th>backlog</th><th>last error</th><th>last attempt</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Latest stories per section</h2>
<div class="sections" id="latest">{sections}</div>
</body></html>"""
