from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runtime.devstack import DevServer
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


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A real Temporal dev server (`temporal server start-dev`) on free ports, one per test module that asks for it."""
    server = DevServer(tmp_path_factory.mktemp("temporal"), port=0, ui_port=0)
    try:
        asyncio.run(server.start())
        yield server
    finally:
        server.stop(kill=True)
