"""The index's compiled loops: they work where numba cannot cache them (a read-only install)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from numba import njit

from services.enrichment import kernels

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
