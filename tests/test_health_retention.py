"""What the nightly recompute keeps of a `last` measure without a window (docs/health.md, "How scores are kept"):
each account's newest value only (a count or sum always has a window, whose older values the night forgets too);
the scores read the same before and after, and a night that runs again changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from activities.crm import read_account, seed
from engine.interpreter.messages import Event
from engine.runtime import health
from engine.storage import health as hs
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.postgres import empty

CARD = """\
id: forever
title: A last value without a window
bands: [ { name: low, below: 50 }, { name: high } ]
measures:
  - id: tickets
    weight: 50
    events: { type: support.ticket_opened, window: 14d }
    score: [ { below: 10, score: 100 }, { below: 20, score: 50 }, { otherwise: 0 } ]
  - id: nps
    weight: 50
    last: { type: survey.answered, value: event.data.score }
    score: [ { below: 7, score: 0 }, { otherwise: 100 } ]
"""
NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
ACCOUNTS = ("acc-1", "acc-2")


def _rows(db_url: str) -> dict[tuple[str, str], int]:
    with session(db_url) as s:
        query = (select(t.HealthEventValue.account_id, t.HealthEventValue.measure_id, func.count())
                 .group_by(t.HealthEventValue.account_id, t.HealthEventValue.measure_id))
        return {(a, m): int(n) for a, m, n in s.execute(query)}


def _values(db_url: str, card: Any, at: datetime) -> dict[tuple[str, str, str], float]:
    with session(db_url) as s:
        return hs.event_values(s, list(ACCOUNTS), health._queries(card, at))


def _night(db_url: str, card: Any, at: datetime) -> tuple[int, list[health.ScoreChange]]:
    """What a night's page does to these accounts: recompute at the night's time, then prune."""
    with session(db_url) as s:
        accounts = [snapshot.account for a in ACCOUNTS if (snapshot := read_account(s, a)) is not None]
        changes = health.recompute_many(s, accounts, [card], at, cause=f"nightly/{at.isoformat()}")
        gone = hs.prune(s, list(ACCOUNTS), health._queries(card, at))
    return gone, changes


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_last_value_without_a_window_keeps_only_the_newest(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    folder = tmp_path / "scorecards"
    folder.mkdir()
    (folder / "forever.yaml").write_text(CARD, encoding="utf-8")
    [card] = health.read_scorecards(folder)
    if database == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
        migrate(db_url)
    else:
        db_url = empty(request.getfixturevalue("postgres"))
    for account_id in ACCOUNTS:
        seed(db_url, {"id": account_id, "name": account_id}, [], [])
    # 30 days of tickets (one a day, 2 hours each) and three survey answers, the newest 3 days ago
    with session(db_url) as s:
        for account_id in ACCOUNTS:
            snapshot = read_account(s, account_id)
            assert snapshot is not None
            for day in range(30, 0, -1):
                event = Event(type="support.ticket_opened", data={"hours": 2}, id=f"{account_id}-t{day}",
                              occurred_at=(NOW - timedelta(days=day)).isoformat(), account_id=account_id)
                health.update_for_event(s, snapshot.account, event, [card], NOW - timedelta(days=day - 1))
            for day, score in ((20, 9), (10, 3), (3, 8)):
                event = Event(type="survey.answered", data={"score": score}, id=f"{account_id}-s{day}",
                              occurred_at=(NOW - timedelta(days=day)).isoformat(), account_id=account_id)
                health.update_for_event(s, snapshot.account, event, [card], NOW - timedelta(days=day - 1))
    assert _rows(db_url)[("acc-1", "tickets")] == 30 and _rows(db_url)[("acc-1", "nps")] == 3
    before = _values(db_url, card, NOW)
    assert before[("acc-1", "forever", "tickets")] == 13 and before[("acc-1", "forever", "nps")] == 8

    gone, _ = _night(db_url, card, NOW)
    rows = _rows(db_url)
    # tickets: the 13 inside the 14-day window (one a day, the 14th day back on its edge); nps: the newest answer
    assert {(a, m): rows[(a, m)] for a in ACCOUNTS for m in ("tickets", "nps")} == {
        (a, m): n for a in ACCOUNTS for m, n in (("tickets", 13), ("nps", 1))}
    assert gone == 2 * (17 + 2)
    assert _values(db_url, card, NOW) == before  # the same values, so the same scores

    # the night run again changes nothing; an older answer that arrives late does not replace the newest
    assert _night(db_url, card, NOW) == (0, [])
    with session(db_url) as s:
        snapshot = read_account(s, "acc-1")
        assert snapshot is not None
        late = Event(type="survey.answered", data={"score": 1}, id="acc-1-late",
                     occurred_at=(NOW - timedelta(days=40)).isoformat(), account_id="acc-1")
        health.update_for_event(s, snapshot.account, late, [card], NOW)
    assert _values(db_url, card, NOW)[("acc-1", "forever", "nps")] == 8
    assert _night(db_url, card, NOW)[0] == 1  # and the next night forgets it
