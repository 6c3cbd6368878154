"""A real PostgreSQL for tests: PostgreSQL 16 from the `pgserver` wheel, started in a temporary folder and reached
over its Unix socket by psycopg 3, so a test needs nothing but Python. Tests take the `postgres` fixture
(tests/conftest.py: a server per test module, its database migrated) and ``empty`` it between uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from engine.storage import models as t
from engine.storage.db import engine_for, migrate


def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Starts a server with a migrated database `engine`; yields its URL; stops it."""
    with pytest.MonkeyPatch.context() as patch:
        # pgserver keeps its lock files in the user's runtime folder; CI machines may have none
        patch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
        server.psql("CREATE DATABASE engine;")
        url = server.get_uri("engine").replace("postgresql://", "postgresql+psycopg://", 1)
        migrate(url)
        try:
            yield url
        finally:
            engine_for(url).dispose()
            server.cleanup()


def empty(url: str) -> str:
    """Empties every table of the engine (the schema stays): a scenario starts from nothing."""
    tables = ", ".join(f'"{table.name}"' for table in t.Base.metadata.sorted_tables)
    with engine_for(url).begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return url
