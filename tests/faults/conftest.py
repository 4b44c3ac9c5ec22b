"""Fixtures of the fault suite: each test gets a broker and Redis of its own, stopped by pid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Infra, Partner


@pytest.fixture
def infra(tmp_path: Path) -> Iterator[Infra]:
    running = Infra.start(tmp_path)
    try:
        yield running
    finally:
        running.stop()
        print(f"\nlogs: {tmp_path}")


@pytest.fixture
def partner() -> Iterator[Partner]:
    server = Partner().start()
    try:
        yield server
    finally:
        server.stop()
