"""The database: SQLite under .playbook/ by default, PostgreSQL (or any SQLAlchemy URL) by setting.

The schema is owned by Alembic migrations (engine/storage/migrations); ``migrate`` brings a
database to the newest revision and is run by ``playbook dev``, the worker and ``playbook db upgrade``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

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


# SQLite's WAL is checkpointed (its pages copied into the database file) by a thread of the process, not by the
# write that happens to cross SQLite's threshold: that write's transaction paid the checkpoint and its fsync, about
# 14 ms, one event in 70 (bench/health.py's POST /events p99: 15 ms with scorecards against 5 without; 1.6 ms once
# checkpoints left the requests). The thread checkpoints a database whose WAL has grown past SQLite's own threshold
# (1,000 pages), PASSIVE: it neither waits for nor blocks readers and writers, and a process that has stopped leaves
# the next one (or the last connection's close) to do it.
CHECKPOINT_SECONDS = 0.5
CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024
_checkpointed: set[str] = set()
_checkpointer_lock = threading.Lock()
_checkpointer: threading.Thread | None = None


def _checkpoint(path: str) -> bool:
    """One PASSIVE checkpoint of the database at ``path`` when its WAL is past the threshold; False when the database
    is gone (no longer to be watched)."""
    try:
        if os.path.getsize(f"{path}-wal") < CHECKPOINT_WAL_BYTES:
            return True
    except OSError:  # no WAL now (every connection closed), or no database any more
        return os.path.exists(path)
    try:  # mode=rw: a database deleted meanwhile is not created again
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0.1)) as connection:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error:
        return os.path.exists(path)  # busy (another checkpoint): the next round
    return True


def _checkpoint_forever() -> None:
    while True:
        time.sleep(CHECKPOINT_SECONDS)
        with _checkpointer_lock:
            paths = list(_checkpointed)
        for path in paths:
            if not _checkpoint(path):
                with _checkpointer_lock:
                    _checkpointed.discard(path)


def _watch_wal(path: str) -> None:
    global _checkpointer
    with _checkpointer_lock:
        _checkpointed.add(path)
        if _checkpointer is None:
            _checkpointer = threading.Thread(target=_checkpoint_forever, name="sqlite-checkpointer", daemon=True)
            _checkpointer.start()


@functools.lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        on_disk = bool(path) and path != ":memory:"
        if on_disk:
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
            if on_disk:
                cursor.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it (above)
            cursor.close()

        if on_disk:
            _watch_wal(str(Path(path).resolve()))
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
