"""SQLite's WAL is checkpointed by a thread of the process (engine/storage/db.py), not by the write that crosses the
threshold: a request's transaction no longer pays a checkpoint and its fsync (POST /events' p99). The WAL must still
stay bounded while writes go on, and a database deleted meanwhile must not come back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import text

from engine.storage import db


def test_writes_do_not_checkpoint_and_the_wal_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    engine = db.engine_for(f"sqlite:///{path}")
    with engine.begin() as connection:
        assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0  # no write checkpoints
        connection.execute(text("CREATE TABLE filler (id INTEGER PRIMARY KEY, data BLOB)"))
    chunk = os.urandom(256 * 1024)
    largest = 0
    for _ in range(100):  # 25 MB in 100 transactions, over a few seconds
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO filler (data) VALUES (:data)"), {"data": chunk})
        largest = max(largest, os.path.getsize(f"{path}-wal"))
        time.sleep(0.03)
    # without a checkpoint the WAL would hold all 25 MB; the thread copies it back each time it passes 4 MB
    assert largest < 16 * 1024 * 1024, f"the WAL grew to {largest / 2**20:.1f} MB"
    engine.dispose()


def test_a_deleted_database_is_not_created_again(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    engine = db.engine_for(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert db._checkpoint(str(path.resolve())) is False  # no longer watched
    time.sleep(db.CHECKPOINT_SECONDS * 3)
    assert not path.exists()
