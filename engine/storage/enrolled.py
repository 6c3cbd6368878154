"""The account's runs by workflow id (table ``enrolled_runs``): how an event reaches live runs at once.

Temporal's visibility store lags behind a start by up to a second or two, so an exit posted right after
the trigger found no run. Here the intake records each run it starts before it answers the event that
started it, and every run records itself in its first activity (manual starts, schedule ticks,
`run_playbook`), so the ids are there before anyone can post an event that concerns them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.storage import models as t

_TABLE = t.EnrolledRun.__table__


def register(s: Session, runs: Iterable[tuple[str, str, str]], at: datetime) -> None:
    """Records runs (workflow id, account id, playbook id); one already there is left as it is."""
    rows = [{"workflow_id": w, "account_id": a, "playbook_id": p, "started_at": at} for w, a, p in runs]
    if not rows:
        return
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        s.execute(postgresql.insert(_TABLE).on_conflict_do_nothing(index_elements=["workflow_id"]), rows)
    elif dialect == "sqlite":
        s.execute(sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=["workflow_id"]), rows)
    else:  # another database: look first (a race between two first activities of one run cannot happen)
        known = set(
            s.scalars(select(_TABLE.c.workflow_id).where(_TABLE.c.workflow_id.in_([r["workflow_id"] for r in rows])))
        )
        fresh = [r for r in rows if r["workflow_id"] not in known]
        if fresh:
            s.execute(_TABLE.insert(), fresh)


def run_ids(s: Session, account_id: str, playbook_ids: Iterable[str]) -> list[str]:
    """The workflow ids of the account's runs of these playbooks (some may have ended)."""
    wanted = list(playbook_ids)
    if not wanted:
        return []
    query = select(_TABLE.c.workflow_id).where(_TABLE.c.account_id == account_id, _TABLE.c.playbook_id.in_(wanted))
    return list(s.scalars(query))


def forget(s: Session, workflow_ids: Iterable[str]) -> None:
    """Removes runs that have ended (an event found them gone)."""
    ids = list(workflow_ids)
    if ids:
        s.execute(delete(_TABLE).where(_TABLE.c.workflow_id.in_(ids)))
