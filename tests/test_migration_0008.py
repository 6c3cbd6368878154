"""Migration 0008 (the event values' one index, led by the account) on a database of 0.5.0 with values in it: every
value is kept, an event taken before the upgrade and posted again counts once, and a downgrade gives 0007's table
back with the same rows."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config

from engine.storage import health as hs
from engine.storage.db import MIGRATIONS, engine_for, session

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _to(url: str, revision: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    with engine_for(url).begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, event_id, account_id, scorecard_id, measure_id, at, value "
                          "FROM health_event_values ORDER BY id").fetchall()


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE tbl_name = 'health_event_values'")
                if sql}


def test_0008_keeps_the_values_and_their_idempotency(tmp_path: Path) -> None:
    path = tmp_path / "playbook.db"
    url = f"sqlite:///{path}"
    _to(url, "0007")
    with sqlite3.connect(path) as db:  # what 0.5.0 recorded (its insert; today's names 0008's key)
        db.executemany(
            "INSERT INTO health_event_values (event_id, account_id, scorecard_id, measure_id, at, value) "
            "VALUES (?, ?, 'card', ?, '2026-12-01 12:00:00.000000', ?)",
            [(f"ev-{n}", account, m, float(n)) for n, account in enumerate(["acc-1", "acc-2", "acc-1"])
             for m in ("tickets", "urgent")],
        )
    before = _rows(path)
    assert len(before) == 6

    _to(url, "head")
    assert _rows(path) == before
    assert any("UNIQUE (account_id, scorecard_id, measure_id, event_id)" in sql for sql in _indexes(path))
    assert not any("ix_health_event_values_window" in sql for sql in _indexes(path))
    with session(url) as s:  # ev-2 again (a retry after the upgrade): nothing new; a new event: recorded
        again = hs.add_event_values(s, "ev-2", [
            {"account_id": "acc-1", "scorecard_id": "card", "measure_id": m, "at": AT, "value": 2.0}
            for m in ("tickets", "urgent")
        ])
        fresh = hs.add_event_values(s, "ev-3", [
            {"account_id": "acc-2", "scorecard_id": "card", "measure_id": "tickets", "at": AT, "value": 3.0}
        ])
    assert (again, fresh) == ((0, 2), (1, 0))

    _to(url, "0007", down=True)
    assert _rows(path)[:6] == before and len(_rows(path)) == 7
    assert any("ix_health_event_values_window" in sql for sql in _indexes(path))
