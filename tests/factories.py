"""Articles for tests, written for the project (no copied text)."""

from __future__ import annotations

import uuid
from typing import Any


def article_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "uri": f"urn:newsflow:test:{uuid.uuid4().hex[:12]}",
        "version": 1,
        "headline": "Harbour authority opens the new ferry terminal",
        "summary": "The terminal doubles capacity for island crossings.",
        "body_html": "<p>The harbour authority opened the new ferry terminal on Tuesday.</p>",
        "byline": "Test Desk",
        "provider": "test",
        "section": "Business",
        "language": "en",
        "urgency": 5,
    }
    payload.update(overrides)
    return payload


def dam_story(uri: str, **overrides: Any) -> dict[str, Any]:
    """A world story; two of these with different uris are about the same events and people."""
    return article_payload(
        uri=uri,
        headline="Veldoria and Ostmark resume talks over the Seralin river dam",
        summary="Foreign minister Irena Kass will lead Veldoria's delegation in Geneva.",
        body_html="<p>Veldoria and Ostmark will resume negotiations over the Seralin dam, "
        "mediated by the United Nations, foreign minister Irena Kass said.</p>",
        section="International",
        **overrides,
    )


def dam_followup(uri: str) -> dict[str, Any]:
    return article_payload(
        uri=uri,
        headline="Veldoria pauses filling of the Seralin dam before Geneva talks",
        summary="Ostmark welcomed the pause announced by foreign minister Irena Kass.",
        body_html="<p>Veldoria paused the filling of the Seralin river dam reservoir days "
        "before talks with Ostmark, Irena Kass said.</p>",
        section="world",
    )
