"""An account that leaves a scorecard's segment (its plan changed) loses its score there (docs/health.md, "How scores
are kept"): through the intake's transaction (an event carrying the new plan) and through the nightly recompute's
page (a plan a `crm` step changed). The score row goes, a history row says so, nothing is sent as
health.score_changed, and the CRM's health fields follow the account's primary scorecard: the next one that still
holds it, or none. An account that comes back is scored again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from activities.crm import read_account, seed, write_account, write_health_fields
from engine.interpreter.messages import Event
from engine.runtime import health
from engine.runtime.intake import Before, before_starts
from engine.storage.db import migrate, session

SUPPORT = """\
id: support-health
title: Support health
segment: account.plan != "trial"
bands: [ { name: red, below: 50 }, { name: green } ]
changes: { band: true }
measures:
  - id: urgent_tickets
    weight: 60
    events: { type: support.ticket_opened, window: 30d, where: 'event.data.priority == "urgent"' }
    score: [ { below: 1, score: 100 }, { below: 2, score: 60 }, { otherwise: 0 } ]
  - id: mrr
    weight: 40
    field: account.mrr
    score: [ { below: 100, score: 30 }, { otherwise: 100 } ]
"""
# every account, sorted after support-health: the primary scorecard only of accounts support-health does not hold
USAGE = """\
id: usage-health
title: Usage health
bands: [ { name: low, below: 50 }, { name: fine } ]
measures:
  - id: mrr
    weight: 100
    field: account.mrr
    score: [ { below: 100, score: 20 }, { otherwise: 90 } ]
"""
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _setup(tmp_path: Path, cards: dict[str, str]) -> tuple[str, tuple[Any, ...]]:
    folder = tmp_path / "scorecards"
    folder.mkdir()
    for name, text in cards.items():
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    seed(db_url, {"id": "acc-1", "name": "Acme", "plan": "pro", "mrr": 500}, [], [])
    return db_url, health.read_scorecards(folder)


def _event(db_url: str, cards: tuple[Any, ...], n: int, account: dict[str, Any] | None = None) -> Before:
    event = Event(type="support.ticket_opened", data={"priority": "urgent"}, id=f"evt-{n}", account_id="acc-1",
                  occurred_at=(NOW + timedelta(minutes=n)).isoformat())
    before = before_starts(db_url, event.id, "acc-1", account, None, frozenset(), event, cards)
    assert isinstance(before, Before)
    return before


def _state(db_url: str) -> tuple[dict[str, tuple[float | None, str | None]], tuple[Any, Any], list[Any]]:
    """The account's stored scores by scorecard, its CRM health fields, its history (card, score, band, previous)."""
    with session(db_url) as s:
        scores = {h.scorecard_id: (h.score, h.band) for h in health.health_of(s, "acc-1")}
        snapshot = read_account(s, "acc-1")
        assert snapshot is not None
        fields = (snapshot.account.get("health_score"), snapshot.account.get("health_band"))
        from engine.storage import health as hs

        rows = [(h.scorecard_id, h.score, h.band, h.previous_score)
                for card in ("support-health", "usage-health") for h in reversed(hs.history(s, "acc-1", card))]
    return scores, fields, rows


def _nightly(db_url: str, cards: tuple[Any, ...], at: datetime, plan: str) -> list[health.ScoreChange]:
    """A crm step changes the plan; the night's page recomputes the account and writes the built-in CRM's health
    fields in its transaction, as HealthActivities.recompute_health_page does."""
    with session(db_url) as s:
        write_account(s, {"id": "acc-1", "plan": plan}, None)
    with session(db_url) as s:
        snapshot = read_account(s, "acc-1")
        assert snapshot is not None
        changes = health.recompute_many(s, [snapshot.account], cards, at, cause=f"nightly/{at.isoformat()}")
        write_health_fields(s, health.crm_writes(changes))
    return changes


def test_leaving_a_segment_takes_the_score_away_and_the_crm_follows_the_primary_scorecard(tmp_path: Path) -> None:
    db_url, cards = _setup(tmp_path, {"support-health": SUPPORT, "usage-health": USAGE})
    _event(db_url, cards, 1, {"mrr": 500})  # one urgent ticket: 60 x 60% + 100 x 40% = 76; fields: every card
    scores, fields, _ = _state(db_url)
    assert scores == {"support-health": (76.0, "green"), "usage-health": (90.0, "fine")}
    assert fields == (76.0, "green")  # support-health is the primary scorecard

    # an event says the account is on a trial now: out of support-health's segment, in the same transaction
    before = _event(db_url, cards, 2, {"plan": "trial"})
    scores, fields, history = _state(db_url)
    assert scores == {"usage-health": (90.0, "fine")}
    assert fields == (90.0, "fine")  # the CRM holds the primary scorecard's score: usage-health's now
    assert ("support-health", None, None, 76.0) in history  # the history says it stopped applying
    assert not [c for c in before.health if c.notable]  # a score that stops applying is no health event

    # a crm step puts it back on pro: the night scores it again (a first score: no event), the CRM follows
    night = NOW + timedelta(days=1)
    changes = _nightly(db_url, cards, night, "pro")
    scores, fields, _ = _state(db_url)
    assert scores["support-health"] == (76.0, "green") and fields == (76.0, "green")
    assert not [c for c in changes if c.notable]
    # and back on a trial: the next night takes the score away again, and the CRM holds usage-health's (unchanged)
    _nightly(db_url, cards, night + timedelta(days=1), "trial")
    scores, fields, _ = _state(db_url)
    assert scores == {"usage-health": (90.0, "fine")} and fields == (90.0, "fine")


def test_an_account_no_scorecard_holds_has_no_health_fields_left(tmp_path: Path) -> None:
    db_url, cards = _setup(tmp_path, {"support-health": SUPPORT})
    _event(db_url, cards, 1)
    assert _state(db_url)[1] == (76.0, "green")
    _event(db_url, cards, 2, {"plan": "trial"})
    scores, fields, history = _state(db_url)
    assert scores == {} and fields == (None, None)
    assert history[-1] == ("support-health", None, None, 76.0)
    # a later event of the trial account scores nothing
    _event(db_url, cards, 3)
    assert _state(db_url)[0] == {}
