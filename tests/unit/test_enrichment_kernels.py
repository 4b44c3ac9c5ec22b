"""The index's compiled loops: they work where numba cannot cache them (a read-only install),
and add up scores exactly as the numpy code before them did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numba import njit

from services.enrichment import kernels
from services.enrichment.index import IndexSettings

pytestmark = pytest.mark.unit


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
