"""The read path's query parsing: what it answers itself, and what it leaves to the validator."""

from __future__ import annotations

import pytest

from services.delivery.reads import latest_query

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("query", "parsed"),
    [
        (b"", (None, 20, None)),
        (b"section=World&limit=10", ("world", 10, None)),
        (b"section=&limit=100", (None, 100, None)),
        (b"before=1700000999.0&limit=05", (None, 5, 1700000999.0)),
        (b"section=a%20b", ("a b", 20, None)),
    ],
)
def test_well_formed_queries_are_answered(
    query: bytes, parsed: tuple[str | None, int, float | None]
) -> None:
    assert latest_query(query) == parsed


@pytest.mark.parametrize(
    "query",
    [b"limit=0", b"limit=101", b"limit=%C2%B2", b"limit=1.5", b"before=nan", b"before=1e",
     b"section=" + b"x" * 65, b"limit=5&limit=6", b"page=2"],
)  # fmt: skip
def test_anything_else_goes_to_the_validator(query: bytes) -> None:
    assert latest_query(query) is None
