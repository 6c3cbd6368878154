"""The database: SQLite under .playbook/ by default, PostgreSQL (or any SQLAlchemy URL) by setting.

The schema is owned by Alembic migrations (engine/storage/migrations); ``migrate`` brings a
database to the newest revision and is run by ``playbook dev``, the worker and ``playbook db upgrade``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")


def default_url(home: Path | str = ".playbook") -> str:
    return f"sqlite:///{Path(home).resolve() / 'playbook.db'}"



def utc(at: datetime) -> datetime:
    """A time as the tables keep it: UTC (SQLite gives back naive times: they are UTC; an aware one is converted)."""
    if at.tzinfo is UTC:  # most of them (a page's rows all carry its time): astimezone costs microseconds a row
        return at
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@functools.lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # LIFO: a session gets the connection returned last, whose page cache is warm and still valid (SQLite drops a
        # connection's cache when another connection wrote since its last transaction: the API's threads took the
        # pool's connections in turn, each finding its cache stale; POST /events 3.5 -> 2.4 ms in one measurement)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_use_lifo=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while the worker writes; foreign keys are off by default in SQLite.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # with WAL: consistent always; a process crash loses nothing, a power cut at most the last commits
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(url: str) -> None:
    """Upgrades the database at url to the newest schema."""
    import logging

    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-revision chatter is not news

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    with engine_for(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def sqlite_driver(s: Session) -> Any | None:
    """The session's sqlite3 connection, in the session's transaction, when the database is SQLite (else None): a
    hot path's few statements executed by the driver, without SQLAlchemy's result and event machinery around each
    (about 10 us a statement; an event's health update, the built-in CRM's health fields)."""
    if s.get_bind().dialect.name != "sqlite":
        return None
    return s.connection().connection.driver_connection


def in_chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """IN lists of at most ``size``: SQLite allows 32,766 bound parameters per statement, older builds 999."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


@functools.lru_cache(maxsize=16)
def _sessions(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session(url: str) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back on error."""
    with _sessions(url).begin() as s:
        yield s
