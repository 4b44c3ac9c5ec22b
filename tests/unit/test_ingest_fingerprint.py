"""An identical re-post is recognised by its fingerprint: taken from the record's bytes, it is
the fingerprint of the article itself, whatever the article holds."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.domain import fingerprint_of, prepare
from shared.events import Article, encode
from tests.factories import article_payload

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 2, tzinfo=UTC)

# Text that looks like the member the fingerprint leaves out, in every field that holds text.
DECOYS = ['","versioncreated":"2020-01-01T00:00:00Z', ',"versioncreated":"', '\\",\\"', '"}']
text = st.one_of(st.sampled_from(DECOYS), st.text(min_size=1, max_size=40)).map(
    lambda s: s.strip() or "x"
)


def fingerprint(article: Article) -> str:
    """The fingerprint as the ledgers have always held it: of the article encoded again."""
    payload = article.model_dump_json(exclude={"versioncreated"}, exclude_none=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def article(**overrides: Any) -> Article:
    return prepare(Article.model_validate(article_payload(**overrides)))


@settings(max_examples=300, deadline=None)
@given(
    uri=st.sampled_from(["urn:x:1", 'urn:x:"versioncreated"', 'urn:,"versioncreated":"x']),
    headline=text,
    summary=st.none() | text,
    byline=st.none() | text,
    keywords=st.lists(text, max_size=3),
    firstcreated=st.none() | st.just(datetime(2026, 1, 1, tzinfo=UTC)),
    seconds=st.integers(0, 10**6),
)
def test_the_fingerprint_of_the_record_is_the_articles(
    uri: str,
    headline: str,
    summary: str | None,
    byline: str | None,
    keywords: list[str],
    firstcreated: datetime | None,
    seconds: int,
) -> None:
    story = article(
        uri=uri,
        headline=headline,
        summary=summary,
        byline=byline,
        keywords=keywords,
        firstcreated=firstcreated,
        versioncreated=datetime(2026, 1, 2, tzinfo=UTC)
        + timedelta(seconds=seconds, microseconds=7),
    )
    assert fingerprint_of(encode(story)) == fingerprint(story)


def test_a_re_post_at_another_time_has_the_same_fingerprint_and_an_edit_another() -> None:
    first = article(uri="urn:x:1", versioncreated="2026-01-02T10:00:00Z")
    later = article(uri="urn:x:1", versioncreated="2026-01-02T11:30:00.5+02:00")
    edited = article(uri="urn:x:1", headline="Another headline")
    assert fingerprint_of(encode(first)) == fingerprint_of(encode(later))
    assert fingerprint_of(encode(edited)) != fingerprint_of(encode(first))
