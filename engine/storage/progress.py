"""The funnel's projection, written side (tables ``run_progress`` and ``run_step_progress``): each run keeps its
own row as it moves, through the ``record_progress`` local activity (activities/playbook_activities.py).

A run's row is registered by its first activity (``load_account``: the run is "entered" from its first moment),
then updated by reports: before the run blocks in a wait when something changed since its last report, and once
when it ends. A report carries the run's whole row and the statuses of the steps that changed since the last
report written, so a report is applied whole or not at all: one older than the row's (by the run's clock, then by
its number: a retry of a report already applied, or one cut short that landed after its successor) changes
nothing, and its steps are in the newer report too. The read side is engine/storage/funnel.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Executable, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.storage import models as t

_RUNS = t.RunProgress.__table__
_STEPS = t.RunStepProgress.__table__


class Report(Protocol):
    """What apply() reads of a report (activities.types.ProgressReport, a frozen dataclass; times are ISO 8601 with
    an offset)."""

    @property
    def run_key(self) -> str: ...
    @property
    def workflow_id(self) -> str: ...
    @property
    def playbook_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def control(self) -> bool: ...
    @property
    def paths(self) -> dict[str, str]: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def exit_event(self) -> str | None: ...
    @property
    def current(self) -> list[str]: ...
    @property
    def started_at(self) -> str | None: ...
    @property
    def at(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def steps(self) -> dict[str, str]: ...


def register(
    s: Session, run_key: str, workflow_id: str, playbook_id: str, version: str, account_id: str, started_at: datetime
) -> None:
    """A run that has just started: its row (status running), unless it has one already."""
    row = {
        "run_key": run_key, "workflow_id": workflow_id, "playbook_id": playbook_id, "version": version,
        "account_id": account_id, "control": False, "paths": {}, "status": "running", "reason": "",
        "exit_event": None, "current": [], "started_at": started_at, "ended_at": None, "updated_at": started_at,
        "seq": 0,
    }
    _insert_absent(s, row)


def apply(s: Session, report: Report) -> bool:
    """Applies a report in the caller's transaction: the run's row (inserted when the run has none: a chain that
    began before runs reported, or a run whose registration was lost) and the step statuses it carries. False
    when the row has this report or a newer one already: nothing is changed."""
    at = _moment(report.at)
    values: dict[str, Any] = {
        "control": report.control, "paths": dict(report.paths), "status": report.status,
        "reason": report.reason[:500], "exit_event": report.exit_event, "current": list(report.current),
        "ended_at": None if report.status == "running" else at, "updated_at": at, "seq": report.seq,
    }
    # newer: by the run's clock, then by number (reports of one activation share the clock). The clock first, so
    # a run reset to an earlier point (its chain's run_key, its numbering from that point) overrides what its
    # reports from before the reset wrote.
    later = or_(_RUNS.c.updated_at < at, and_(_RUNS.c.updated_at == at, _RUNS.c.seq < report.seq))
    newer = update(_RUNS).where(_RUNS.c.run_key == report.run_key, later).values(**values)
    if _count(s, newer) == 0:
        started = _moment(report.started_at) if report.started_at else at
        row = {
            "run_key": report.run_key, "workflow_id": report.workflow_id, "playbook_id": report.playbook_id,
            "version": report.version, "account_id": report.account_id, "started_at": started, **values,
        }
        # absent: inserted; present (a report as new or newer applied, or registered meanwhile): try once more
        if not _insert_absent(s, row) and _count(s, newer) == 0:
            return False
    if report.steps:
        _upsert_steps(s, report.run_key, report.steps, at)
    return True


def _insert_absent(s: Session, row: Mapping[str, Any]) -> bool:
    """Inserts the run's row unless its run_key has one; whether it did."""
    dialect = s.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert(_RUNS) if dialect == "postgresql" else sqlite.insert(_RUNS)
        # RETURNING says whether it inserted (a driver may answer rowcount -1 for an insert)
        inserted = insert.on_conflict_do_nothing(index_elements=["run_key"]).returning(_RUNS.c.run_key)
        return s.execute(inserted, row).first() is not None
    # another database: look first (one run writes its own row, one report at a time)
    if s.scalar(select(_RUNS.c.run_key).where(_RUNS.c.run_key == row["run_key"])) is not None:
        return False
    s.execute(_RUNS.insert(), row)
    return True


def _upsert_steps(s: Session, run_key: str, steps: Mapping[str, str], at: datetime) -> None:
    rows = [{"run_key": run_key, "step_id": step_id, "status": status, "at": at} for step_id, status in steps.items()]
    dialect = s.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert(_STEPS) if dialect == "postgresql" else sqlite.insert(_STEPS)
        statement = insert.on_conflict_do_update(
            index_elements=["run_key", "step_id"],
            set_={"status": insert.excluded.status, "at": insert.excluded.at},
        )
        s.execute(statement, rows)
        return
    known = set(s.scalars(select(_STEPS.c.step_id).where(_STEPS.c.run_key == run_key)))
    for row in rows:
        if row["step_id"] in known:
            s.execute(
                update(_STEPS)
                .where(_STEPS.c.run_key == run_key, _STEPS.c.step_id == row["step_id"])
                .values(status=row["status"], at=at)
            )
        else:
            s.execute(_STEPS.insert(), row)


def _count(s: Session, statement: Executable, params: Mapping[str, Any] | None = None) -> int:
    """The rows an UPDATE changed."""
    return cast(CursorResult[Any], s.execute(statement, params)).rowcount


def _moment(at: str) -> datetime:
    # stored in UTC: SQLite keeps no offset, so a local time would read as UTC and be hours off
    return datetime.fromisoformat(at).astimezone(UTC)
