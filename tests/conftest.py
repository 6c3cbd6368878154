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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis 4.32 under pytest 9 gives every operation's item of tests/test_api_schemathesis.py the same node
    id (the operation is only in its name): pytest-xdist's `--dist loadfile` (make test) schedules by node id and ran
    one of them. Each gets its name as its id, as pytest's own parametrized items have."""
    for item in items:
        if getattr(item, "operation_label", None) and not item.nodeid.endswith(f"::{item.name}"):
            unique = f"{item.nodeid.rsplit('::', 1)[0]}::{item.name}"
            if hasattr(item, "_id"):  # pytest 9 keeps it structured
                from _pytest.nodeid import coerce_node_id

                item._id = coerce_node_id(unique)
            else:
                item._nodeid = unique
