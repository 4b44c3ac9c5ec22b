"""numba for enrichment's hot loops, typed for mypy as the plain Python functions they compile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def compiled(function: F) -> F:
    """`function` compiled to machine code by numba (cached on disk), typed as the original."""
    return cast(F, numba.njit(cache=True)(function))
