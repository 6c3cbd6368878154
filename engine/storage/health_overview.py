"""The book of accounts' health, for the ops page (docs/ops.md, "Health"): counts per band, recent band changes, the
lowest scores, an account's runs (its history with causes is engine.storage.health.history).

Read-only, plain SQLAlchemy Core over health_scores and health_history (engine/storage/health.py writes them), in
the caller's transaction, SQLite and PostgreSQL alike. Made for 100,000 accounts x 3 scorecards: the counts are one
GROUP BY over all scorecards, the lists are LIMITed and their totals one COUNT each. No personal data: account ids,
scorecard ids, bands, numbers, measure ids and titles.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from engine.storage import models as t
from engine.storage.db import utc

_SCORES = t.HealthScore.__table__
_HISTORY = t.HealthHistory.__table__


def band_counts(s: Session) -> dict[str, dict[str | None, int]]:
    """Scorecard id -> band -> how many accounts have their current score in it (band None: the account had a score
    and has none now, every measure missing). One GROUP BY over every scorecard."""
    found: dict[str, dict[str | None, int]] = {}
    query = select(_SCORES.c.scorecard_id, _SCORES.c.band, func.count()).group_by(_SCORES.c.scorecard_id,
                                                                                 _SCORES.c.band)
    for card, band, n in s.execute(query):
        found.setdefault(card, {})[band] = int(n)
    return found


@dataclass(frozen=True)
class BandChange:
    """A change of an account's band (a health_history row whose band differs from the one before)."""

    id: int
    account_id: str
    scorecard_id: str
    score: float | None
    band: str | None
    previous_score: float | None
    previous_band: str | None
    computed_at: datetime
    reasons: list[dict[str, Any]]
    cause: str


def _band_changed() -> Any:
    """A history row that left a band: its band differs from the previous one (a first score left none)."""
    h = _HISTORY.c
    return and_(h.previous_band.is_not(None), or_(h.band.is_(None), h.band != h.previous_band))


def band_changes(s: Session, scorecard_id: str, since: datetime, limit: int = 50) -> tuple[list[BandChange], int]:
    """The scorecard's band changes since ``since``, newest first (at most ``limit``), and how many there are. The
    history is read once: the ids of the newest and the total (a window count before the limit) in one query that
    reads no reasons, then those rows by id."""
    h = _HISTORY.c
    newest = (h.computed_at.desc(), h.id.desc())
    where = (h.scorecard_id == scorecard_id, h.computed_at >= utc(since), _band_changed())
    picked = s.execute(select(h.id, func.count().over().label("total")).where(*where).order_by(*newest)
                       .limit(limit)).all()
    if not picked:
        return [], 0
    rows = s.execute(select(_HISTORY).where(h.id.in_([r.id for r in picked])).order_by(*newest))
    return [_change(r) for r in rows], int(picked[0].total)


def _change(r: Any) -> BandChange:
    return BandChange(r.id, r.account_id, r.scorecard_id, r.score, r.band, r.previous_score, r.previous_band,
                      utc(r.computed_at), list(r.reasons or []), r.cause)


@dataclass(frozen=True)
class Scored:
    """An account's current score on a scorecard (a health_scores row)."""

    account_id: str
    scorecard_id: str
    score: float | None
    band: str | None
    computed_at: datetime
    components: list[dict[str, Any]]


def lowest(s: Session, scorecard_id: str, band: str, limit: int = 50) -> list[Scored]:
    """The accounts of a band of the scorecard, lowest score first (then by account id), at most ``limit``."""
    c = _SCORES.c
    query = (
        select(c.account_id, c.scorecard_id, c.score, c.band, c.computed_at, c.components)
        .where(c.scorecard_id == scorecard_id, c.band == band)
        .order_by(c.score, c.account_id)
        .limit(limit)
    )
    return [Scored(r.account_id, r.scorecard_id, r.score, r.band, utc(r.computed_at),
                   [x for x in (r.components or []) if isinstance(x, dict)]) for r in s.execute(query)]


def runs_of_account(s: Session, account_id: str, limit: int = 50) -> tuple[list[t.RunProgress], int]:
    """The account's runs (the run_progress projection), started last first, at most ``limit``, and how many."""
    RP = t.RunProgress
    total = s.scalar(select(func.count()).select_from(RP).where(RP.account_id == account_id)) or 0
    rows = list(s.scalars(select(RP).where(RP.account_id == account_id)
                          .order_by(RP.started_at.desc(), RP.run_key).limit(limit)))
    return rows, int(total)
