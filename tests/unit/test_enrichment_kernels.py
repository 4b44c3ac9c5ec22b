"""The index's compiled loops: they work where numba cannot cache them (a read-only install),
and add up scores exactly as the numpy code before them did."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from numba import njit

from bench.enrichment import Newsroom
from services.enrichment import kernels
from services.enrichment.index import IndexSettings, Neighbours, StoryIndex

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def test_a_loop_numba_cannot_cache_is_compiled_at_each_start_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def nowhere_to_cache(**options: Any) -> Callable[[Any], Any]:
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'twice': no locator available")
        compile_it: Callable[[Any], Any] = njit(**options)
        return compile_it

    monkeypatch.setattr("services.enrichment.kernels.njit", nowhere_to_cache)
    monkeypatch.setattr(kernels, "uncached", [])

    @kernels.compiled
    def twice(x: int) -> int:
        return 2 * x

    assert twice(21) == 42
    assert kernels.uncached == ["twice"]


def test_a_story_s_own_score_is_summed_in_numpy_s_order_to_the_last_bit() -> None:
    # Two instances, or this version and the last, must score a story alike: the compiled sum
    # of its query terms' weights adds them exactly as numpy's pairwise `sum` did.
    rng = np.random.default_rng(7)
    for count in range(kernels.PAIRWISE_BLOCK + 1):
        values = rng.uniform(0.0, 10.0, count) * rng.choice([1e-3, 1.0, 1e3], count)
        assert kernels.pairwise_sum(values, count) == values.sum()


def test_a_query_of_more_terms_than_the_compiled_sum_takes_is_refused() -> None:
    with pytest.raises(ValueError, match="query_terms"):
        IndexSettings(query_terms=kernels.PAIRWISE_BLOCK + 1)


def test_runs_without_removed_stories_are_counted_and_summed_as_runs_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no removed story among the earlier ones, a term's postings there are counted by a
    # search and summed without checking each story is live; the answers must be those of the
    # loops that check (forced here by reporting a removed story that is not there).
    newsroom = Newsroom(events=25)
    stories = [newsroom.story(n, T0 + timedelta(minutes=n)) for n in range(400)]
    index = StoryIndex()
    for story in stories:
        index.add(story)

    def answers() -> list[Neighbours]:
        return [index.neighbours(index.features(s), 5, 0.0) for s in stories[::7]]

    quick = answers()
    exact = kernels.earlier_pass

    def with_a_hole(*args: Any) -> tuple[int, int, int, int, int]:
        stories, first, end, last, holes = exact(*args)
        return stories, first, end, last, holes + 1

    monkeypatch.setattr(kernels, "earlier_pass", with_a_hole)
    checked = answers()

    assert checked == quick
    assert sum(len(n.related) for n in quick) >= 40  # enough links to compare
