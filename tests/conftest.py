from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import ROOT
from tests.postgres import postgres_server


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL (tests/postgres.py), one per test module that asks for it: the URL of its migrated
    database."""
    yield from postgres_server(tmp_path_factory)
