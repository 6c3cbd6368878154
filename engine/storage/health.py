"""The health scores' tables (docs/health.md): what events gave the measures, the scores, their history.

Plain queries over ids, times and numbers, in the caller's transaction (SQLite and PostgreSQL alike); the
arithmetic is engine.language.health's and the bookkeeping engine.runtime.health's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, union_all, update
from sqlalchemy.orm import Session

from engine.storage import models as t
from engine.storage.db import in_chunks, sqlite_driver, utc

_VALUES = t.HealthEventValue.__table__
_SCORES = t.HealthScore.__table__
_HISTORY = t.HealthHistory.__table__

_SEEN = select(_VALUES.c.scorecard_id, _VALUES.c.measure_id).where(
    _VALUES.c.account_id == bindparam("account_id"), _VALUES.c.event_id == bindparam("event_id")
)
_INSERT_VALUE = insert(_VALUES)
_INSERT_SCORE = insert(_SCORES)
_UPDATE_SCORE = update(_SCORES).where(
    _SCORES.c.account_id == bindparam("key_account"), _SCORES.c.scorecard_id == bindparam("key_scorecard")
)
_INSERT_HISTORY = insert(_HISTORY)


@functools.lru_cache(maxsize=4)
def _insert_new_values(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING (scorecard, measure) on PostgreSQL: a (scorecard, measure) the
    event gave before is skipped by the unique key in the same statement, and the rows inserted come back (SQLite
    runs the same statement as the driver's own text: add_event_values)."""
    from sqlalchemy.dialects import postgresql

    if dialect != "postgresql":
        return None
    return (postgresql.insert(_VALUES).on_conflict_do_nothing(index_elements=_KEY)
            .returning(_VALUES.c.scorecard_id, _VALUES.c.measure_id))


_KEY = ["account_id", "scorecard_id", "measure_id", "event_id"]  # the unique key (migration 0008)


_RAW_INSERT_VALUES_HEAD = (
    "INSERT INTO health_event_values (event_id, account_id, scorecard_id, measure_id, at, value) VALUES "
)
_RAW_INSERT_VALUES_TAIL = (
    f" ON CONFLICT ({', '.join(_KEY)}) DO NOTHING RETURNING scorecard_id, measure_id"
)


def add_event_values(s: Session, event_id: str, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Records what an event gives measures (rows: account_id, scorecard_id, measure_id, at, value); an (account,
    scorecard, measure) the event already gave is left as it is. Returns (inserted, already there). One statement on
    SQLite and PostgreSQL (insert, the unique key skipping what is there); elsewhere a read of what is there, then an
    insert: two posts of one event at once, the unique (account, scorecard, measure, event id) refuses the second
    (IntegrityError: the caller runs again)."""
    if not rows:
        return 0, 0
    if (driver := sqlite_driver(s)) is not None:
        # one execution of the driver's: SQLAlchemy's insertmanyvalues with RETURNING cost twice the insert
        sql = _RAW_INSERT_VALUES_HEAD + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(rows)) + _RAW_INSERT_VALUES_TAIL
        params: list[Any] = []
        for r in rows:
            params += [event_id, r["account_id"], r["scorecard_id"], r["measure_id"], _sqlite_time(r["at"]),
                       r["value"]]
        inserted = driver.execute(sql, params).fetchall()
        return len(inserted), len(rows) - len(inserted)
    statement = _insert_new_values(s.get_bind().dialect.name)
    if statement is not None:
        inserted = s.execute(statement, [{**r, "event_id": event_id, "at": utc(r["at"])} for r in rows]).all()
        return len(inserted), len(rows) - len(inserted)
    seen = {(account_id, r.scorecard_id, r.measure_id) for account_id in {r["account_id"] for r in rows}
            for r in s.execute(_SEEN, {"account_id": account_id, "event_id": event_id})}
    fresh = [{**r, "event_id": event_id, "at": utc(r["at"])} for r in rows
             if (r["account_id"], r["scorecard_id"], r["measure_id"]) not in seen]
    if fresh:
        s.execute(_INSERT_VALUE, fresh)
    return len(fresh), len(rows) - len(fresh)


class MeasureQuery(NamedTuple):  # a tuple: an event builds a few, a night's page a few per scorecard
    """One measure of one scorecard that reads events: ``last`` (the newest value) or the sum of the values (a count
    is a sum of ones) since ``since`` (None: no window)."""

    scorecard_id: str
    measure_id: str
    last: bool
    since: datetime | None


# Statements built once per shape (SQLAlchemy keeps their compiled form): an event's recompute is a few executions
# of prepared statements, not a few constructions of them.
@functools.lru_cache(maxsize=256)
def _sum_query(windowed: bool) -> Any:
    query = (
        select(_VALUES.c.account_id, _VALUES.c.measure_id, func.sum(_VALUES.c.value))
        .where(_VALUES.c.account_id.in_(bindparam("account_ids", expanding=True)),
               _VALUES.c.scorecard_id == bindparam("scorecard_id"),
               _VALUES.c.measure_id.in_(bindparam("measure_ids", expanding=True)))
        .group_by(_VALUES.c.account_id, _VALUES.c.measure_id)
    )
    return query.where(_VALUES.c.at > bindparam("since")) if windowed else query


@functools.lru_cache(maxsize=256)
def _last_query(windowed: bool) -> Any:
    query = (
        select(_VALUES.c.account_id, _VALUES.c.value)
        .where(_VALUES.c.account_id.in_(bindparam("account_ids", expanding=True)),
               _VALUES.c.scorecard_id == bindparam("scorecard_id"), _VALUES.c.measure_id == bindparam("measure_id"))
        .order_by(_VALUES.c.account_id, _VALUES.c.at, _VALUES.c.id)
    )
    return query.where(_VALUES.c.at > bindparam("since")) if windowed else query


def _sum_groups(queries: Sequence[MeasureQuery]) -> dict[tuple[str, datetime | None], list[str]]:
    """The summed measures (counts and sums) by scorecard and window start: one grouped read each."""
    groups: dict[tuple[str, datetime | None], list[str]] = {}
    for q in queries:
        if not q.last:
            groups.setdefault((q.scorecard_id, q.since), []).append(q.measure_id)
    return groups


def event_values(
    s: Session, account_ids: Sequence[str], queries: Sequence[MeasureQuery]
) -> dict[tuple[str, str, str], float]:
    """(account, scorecard, measure) -> the measure's value from the events recorded: the sum over the window (an
    absent key: no event in it), or the last value. Sums: one grouped query per window and scorecard."""
    found: dict[tuple[str, str, str], float] = {}
    sums = _sum_groups(queries)
    for ids in in_chunks(list(account_ids), 500):
        for (card, since), measures in sums.items():
            params: dict[str, Any] = {"account_ids": list(ids), "scorecard_id": card, "measure_ids": measures}
            if since is not None:
                params["since"] = utc(since)
            for account_id, measure_id, total in s.execute(_sum_query(since is not None), params):
                found[(account_id, card, measure_id)] = float(total or 0.0)
        for q in queries:
            if not q.last:
                continue
            params = {"account_ids": list(ids), "scorecard_id": q.scorecard_id, "measure_id": q.measure_id}
            if q.since is not None:
                params["since"] = utc(q.since)
            for row in s.execute(_last_query(q.since is not None), params):  # in time order: the last one stays
                found[(row.account_id, q.scorecard_id, q.measure_id)] = float(row.value)
    return found


@functools.lru_cache(maxsize=256)
def _account_values_query(shape: tuple[tuple[bool, bool], ...]) -> Any:
    """account_event_values's statement for queries of this shape, per part (last, windowed): a `last` measure's
    newest value or a scorecard's grouped sums over one window, all in one UNION ALL; parameters p<n>_*."""
    parts: list[Any] = []
    for n, (last, windowed) in enumerate(shape):
        where = [_VALUES.c.account_id == bindparam("account_id"), _VALUES.c.scorecard_id == bindparam(f"p{n}_card")]
        if windowed:
            where.append(_VALUES.c.at > bindparam(f"p{n}_since"))
        if last:
            newest = (
                select(_VALUES.c.scorecard_id, _VALUES.c.measure_id, _VALUES.c.value)
                .where(*where, _VALUES.c.measure_id == bindparam(f"p{n}_measure"))
                .order_by(_VALUES.c.at.desc(), _VALUES.c.id.desc())
                .limit(1)
                .subquery()
            )
            parts.append(select(newest.c.scorecard_id, newest.c.measure_id, newest.c.value))
        else:
            parts.append(
                select(_VALUES.c.scorecard_id, _VALUES.c.measure_id, func.sum(_VALUES.c.value))
                .where(*where, _VALUES.c.measure_id.in_(bindparam(f"p{n}_measures", expanding=True)))
                .group_by(_VALUES.c.scorecard_id, _VALUES.c.measure_id)
            )
    return union_all(*parts)


def account_event_values(s: Session, account_id: str, queries: Sequence[MeasureQuery]) -> dict[tuple[str, str], float]:
    """(scorecard, measure) -> the measure's value for one account (an event's update on PostgreSQL), as
    event_values gives it: the sum over the window (an absent key: no event in it) or the last value. One
    statement, the database summing (the same SUM the nightly pass gets), as account_state's on SQLite."""
    if not queries:
        return {}
    parts = _parts(queries)
    params: dict[str, Any] = {"account_id": account_id}
    for n, part in enumerate(parts):
        params[f"p{n}_card"] = part.scorecard_id
        if part.last:
            params[f"p{n}_measure"] = part.measures[0]
        else:
            params[f"p{n}_measures"] = part.measures
        if part.since is not None:
            params[f"p{n}_since"] = utc(part.since)
    shape = tuple((part.last, part.since is not None) for part in parts)
    return {(card, measure): float(value or 0.0)
            for card, measure, value in s.execute(_account_values_query(shape), params)}


class _Part(NamedTuple):
    """One part of an account's read of its measures' values (account_state, account_event_values)."""

    last: bool  # a `last` measure's newest value; else the sums of a scorecard's measures over one window
    scorecard_id: str
    measures: list[str]  # the `last` measure alone
    since: datetime | None


def _parts(queries: Sequence[MeasureQuery]) -> list[_Part]:
    """The parts of an account's read, in the order both statements take them: each `last` measure, then each
    scorecard's summed measures per window (grouped as event_values groups them)."""
    parts = [_Part(True, q.scorecard_id, [q.measure_id], q.since) for q in queries if q.last]
    parts += [_Part(False, card, measures, since) for (card, since), measures in _sum_groups(queries).items()]
    return parts


# An account's score rows and its measures' values in one statement (SQLite: no row locks to take first): the
# score rows, then per scorecard and window the sums of its measures (grouped), and per `last` measure its newest
# value, each read through the unique key (led by the account); what event_values reads for a page, in SQLite's own
# SUM (the same sum the nightly pass gets), without sending the account's rows to Python.
_STATE_SCORES = (
    "SELECT 0, scorecard_id, NULL, computed_at, score, band, components, scorecard_version, previous_score, "
    "previous_band FROM health_scores WHERE account_id = ?"
)
_STATE_SUMS = (
    "SELECT 1, scorecard_id, measure_id, NULL, SUM(value), NULL, NULL, NULL, NULL, NULL FROM health_event_values "
    "WHERE account_id = ? AND scorecard_id = ? AND measure_id IN ({measures}){window} GROUP BY measure_id"
)
_STATE_LAST = (
    "SELECT * FROM (SELECT 1, scorecard_id, measure_id, NULL, value, NULL, NULL, NULL, NULL, NULL "
    "FROM health_event_values WHERE account_id = ? AND scorecard_id = ? AND measure_id = ?{window} "
    "ORDER BY at DESC, id DESC LIMIT 1)"
)


@functools.lru_cache(maxsize=256)
def _state_sql(shape: tuple[tuple[bool, int, bool], ...]) -> str:
    """account_state's statement for queries of this shape: per part (last, how many measures, windowed)."""
    parts = [_STATE_SCORES]
    for last, measures, windowed in shape:
        window = " AND at > ?" if windowed else ""
        parts.append(_STATE_LAST.format(window=window) if last
                     else _STATE_SUMS.format(measures=", ".join("?" * measures), window=window))
    return " UNION ALL ".join(parts)


def account_state(
    s: Session, account_id: str, queries: Sequence[MeasureQuery], lock: bool = False
) -> tuple[dict[str, ScoreRow], dict[tuple[str, str], float]]:
    """scores_of_account and account_event_values together (an event's update): the account's stored scores by
    scorecard, and its measures' values by (scorecard, measure). One statement on SQLite; elsewhere the two reads
    (``lock``: the score rows locked first, PostgreSQL)."""
    driver = sqlite_driver(s)
    if driver is None:
        return scores_of_account(s, account_id, lock=lock), account_event_values(s, account_id, queries)
    parts = _parts(queries)
    params: list[Any] = [account_id]
    for part in parts:
        params += (account_id, part.scorecard_id, *part.measures)
        if part.since is not None:
            params.append(_sqlite_time(part.since))
    shape = tuple((part.last, len(part.measures), part.since is not None) for part in parts)
    scores: dict[str, ScoreRow] = {}
    found: dict[tuple[str, str], float] = {}
    for kind, card, measure, at, value, band, components, version, previous, previous_band in (
        driver.execute(_state_sql(shape), params)
    ):
        if kind == 0:
            scores[card] = ScoreRow(account_id, card, value, band, list(_loads(components) if components else []),
                                    _from_sqlite_time(at), version, previous, previous_band)
        else:
            found[(card, measure)] = float(value or 0.0)
    return scores, found


_NEWER = _VALUES.alias("newer")
_PRUNE = delete(_VALUES).where(
    _VALUES.c.account_id.in_(bindparam("account_ids", expanding=True)),
    _VALUES.c.scorecard_id == bindparam("scorecard_id"),
    _VALUES.c.measure_id.in_(bindparam("measure_ids", expanding=True)),
    _VALUES.c.at <= bindparam("before"),
)


# A `last` measure without a window: every value but each account's newest is of no use.
_PRUNE_OLDER_LAST = delete(_VALUES).where(
    _VALUES.c.account_id.in_(bindparam("account_ids", expanding=True)),
    _VALUES.c.scorecard_id == bindparam("scorecard_id"),
    _VALUES.c.measure_id == bindparam("measure_id"),
    select(_NEWER.c.id).where(
        _NEWER.c.account_id == _VALUES.c.account_id,
        _NEWER.c.scorecard_id == _VALUES.c.scorecard_id,
        _NEWER.c.measure_id == _VALUES.c.measure_id,
        or_(_NEWER.c.at > _VALUES.c.at, and_(_NEWER.c.at == _VALUES.c.at, _NEWER.c.id > _VALUES.c.id)),
    ).exists(),
)
def prune(s: Session, account_ids: Sequence[str], queries: Sequence[MeasureQuery]) -> int:
    """Forgets the values that count for nothing any more (the nightly recompute, after it scored the page): those
    that have left their measure's window, and of a `last` measure without a window every value but each account's
    newest (a count or sum always has a window). Returns how many rows went."""
    gone = 0
    windows: dict[tuple[str, datetime], list[str]] = {}  # one statement per scorecard and window, not per measure
    for q in queries:
        if q.since is not None:
            windows.setdefault((q.scorecard_id, q.since), []).append(q.measure_id)
    for ids in in_chunks(list(account_ids), 500):
        for (card, since), measures in windows.items():
            result = s.execute(_PRUNE, {"account_ids": list(ids), "scorecard_id": card, "measure_ids": measures,
                                        "before": utc(since)})
            gone += max(0, int(getattr(result, "rowcount", 0) or 0))
        for q in queries:
            if q.since is None and q.last:
                result = s.execute(_PRUNE_OLDER_LAST, {"account_ids": list(ids), "scorecard_id": q.scorecard_id,
                                                       "measure_id": q.measure_id})
                gone += max(0, int(getattr(result, "rowcount", 0) or 0))
    return gone


@dataclass(frozen=True)
class ScoreRow:
    account_id: str
    scorecard_id: str
    score: float | None
    band: str | None
    components: list[Any]
    computed_at: datetime
    scorecard_version: str
    previous_score: float | None
    previous_band: str | None


def _score_row(r: Any) -> ScoreRow:
    return ScoreRow(r.account_id, r.scorecard_id, r.score, r.band, list(r.components or []), utc(r.computed_at),
                    r.scorecard_version, r.previous_score, r.previous_band)


_SCORES_OF = select(_SCORES).where(_SCORES.c.account_id.in_(bindparam("account_ids", expanding=True)))
_SCORES_OF_LOCKED = _SCORES_OF.with_for_update()  # SQLite has no row locks (nor needs them: one writer at a time)


def scores_of(s: Session, account_ids: Sequence[str], lock: bool = False) -> dict[tuple[str, str], ScoreRow]:
    """(account, scorecard) -> the stored score of these accounts. ``lock``: their rows locked until the transaction
    ends (PostgreSQL), so two events of one account recompute one after the other, the second seeing the first's
    values; two first scores of one account at once: the primary key refuses the second (the caller runs again)."""
    found: dict[tuple[str, str], ScoreRow] = {}
    for ids in in_chunks(list(dict.fromkeys(account_ids)), 500):
        for r in s.execute(_SCORES_OF_LOCKED if lock else _SCORES_OF, {"account_ids": list(ids)}):
            row = _score_row(r)
            found[(row.account_id, row.scorecard_id)] = row
    return found


_SCORES_OF_ACCOUNT = select(_SCORES).where(_SCORES.c.account_id == bindparam("account_id"))
_SCORES_OF_ACCOUNT_LOCKED = _SCORES_OF_ACCOUNT.with_for_update()


def scores_of_account(s: Session, account_id: str, lock: bool = False) -> dict[str, ScoreRow]:
    """Scorecard -> the stored score of one account (an event's update), as scores_of reads them (``lock``: the rows
    locked until the transaction ends, PostgreSQL)."""
    rows = s.execute(_SCORES_OF_ACCOUNT_LOCKED if lock else _SCORES_OF_ACCOUNT, {"account_id": account_id})
    return {row.scorecard_id: row for row in map(_score_row, rows)}


def write_scores(s: Session, new: Iterable[ScoreRow], known: Iterable[tuple[str, str]]) -> None:
    """Writes scores: an update for the (account, scorecard) pairs in ``known`` (read in this transaction), an insert
    for the others."""
    known = set(known)
    new = list(new)
    if (driver := sqlite_driver(s)) is not None:
        fresh = [r for r in new if (r.account_id, r.scorecard_id) not in known]
        _executemany(driver, _RAW_INSERT_SCORE, [
            (r.account_id, r.scorecard_id, r.score, r.band, _dumps(r.components), _sqlite_time(r.computed_at),
             r.scorecard_version, r.previous_score, r.previous_band)
            for r in fresh
        ])
        _executemany(driver, _RAW_UPDATE_SCORE, [
            (r.score, r.band, _dumps(r.components), _sqlite_time(r.computed_at), r.scorecard_version,
             r.previous_score, r.previous_band, r.account_id, r.scorecard_id)
            for r in new if (r.account_id, r.scorecard_id) in known
        ])
        return
    inserts, updates = [], []
    for row in new:
        values = {"score": row.score, "band": row.band, "components": row.components,
                  "computed_at": utc(row.computed_at), "scorecard_version": row.scorecard_version,
                  "previous_score": row.previous_score, "previous_band": row.previous_band}
        if (row.account_id, row.scorecard_id) in known:
            updates.append({**values, "key_account": row.account_id, "key_scorecard": row.scorecard_id})
        else:
            inserts.append({**values, "account_id": row.account_id, "scorecard_id": row.scorecard_id})
    if inserts:
        s.execute(_INSERT_SCORE, inserts)
    if updates:
        s.execute(_UPDATE_SCORE, updates)


_DELETE_SCORE = delete(_SCORES).where(
    _SCORES.c.account_id == bindparam("key_account"), _SCORES.c.scorecard_id == bindparam("key_scorecard")
)


def delete_scores(s: Session, keys: Sequence[tuple[str, str]]) -> None:
    """Takes away the scores of these (account, scorecard) pairs (their history stays)."""
    if keys:
        s.execute(_DELETE_SCORE, [{"key_account": a, "key_scorecard": c} for a, c in keys])


# Scores and history on SQLite: the driver's executemany with the values as SQLAlchemy would bind them (JSON text,
# times as naive UTC text with microseconds), without SQLAlchemy's per-row processing, which cost more than the
# writes themselves for a nightly page's thousands of rows, and about half of an event's one or two (a prepared
# statement's execution: 25-35 us rather than 60). Other databases: SQLAlchemy's.
_RAW_INSERT_SCORE = (
    "INSERT INTO health_scores (account_id, scorecard_id, score, band, components, computed_at, scorecard_version, "
    "previous_score, previous_band) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RAW_UPDATE_SCORE = (
    "UPDATE health_scores SET score = ?, band = ?, components = ?, computed_at = ?, scorecard_version = ?, "
    "previous_score = ?, previous_band = ? WHERE account_id = ? AND scorecard_id = ?"
)
_RAW_INSERT_HISTORY = (
    "INSERT INTO health_history (account_id, scorecard_id, score, band, computed_at, previous_score, previous_band, "
    "reasons, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _dumps(value: Any) -> str:
    """JSON text of the health tables' components and reasons (ids, numbers, booleans): orjson, ten times faster than
    json.dumps on a score's components; compact, which SQLAlchemy's JSON type reads back alike."""
    return orjson.dumps(value).decode()


_loads = orjson.loads


def _sqlite_time(at: datetime) -> str:
    """A time as SQLAlchemy's SQLite DateTime stores it (the window queries compare these texts):
    "%Y-%m-%d %H:%M:%S.%f", which isoformat writes in two thirds of strftime's time."""
    return utc(at).replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_sqlite_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _executemany(driver: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if len(rows) == 1:
        driver.execute(sql, rows[0])
    elif rows:
        driver.executemany(sql, rows)


@dataclass(frozen=True)
class HistoryRow:
    account_id: str
    scorecard_id: str
    score: float | None
    band: str | None
    computed_at: datetime
    previous_score: float | None = None
    previous_band: str | None = None
    reasons: tuple[dict[str, Any], ...] = ()
    cause: str = ""


def _history_row(r: Any) -> HistoryRow:
    return HistoryRow(r.account_id, r.scorecard_id, r.score, r.band, utc(r.computed_at), r.previous_score,
                      r.previous_band, tuple(r.reasons or ()), r.cause)


def add_history(s: Session, rows: Sequence[HistoryRow]) -> None:
    if (driver := sqlite_driver(s)) is not None:
        _executemany(driver, _RAW_INSERT_HISTORY, [
            (r.account_id, r.scorecard_id, r.score, r.band, _sqlite_time(r.computed_at), r.previous_score,
             r.previous_band, _dumps(list(r.reasons)), r.cause)
            for r in rows
        ])
    elif rows:
        s.execute(_INSERT_HISTORY, [
            {"account_id": r.account_id, "scorecard_id": r.scorecard_id, "score": r.score, "band": r.band,
             "computed_at": utc(r.computed_at), "previous_score": r.previous_score, "previous_band": r.previous_band,
             "reasons": list(r.reasons), "cause": r.cause}
            for r in rows
        ])


def history_caused_by(s: Session, cause: str, account_ids: Sequence[str] | None = None) -> list[HistoryRow]:
    """The changes ``cause`` (an event id, nightly/<time>) made, oldest first (of these accounts, when given)."""
    query = select(_HISTORY).where(_HISTORY.c.cause == cause).order_by(_HISTORY.c.id)
    if account_ids is not None:
        query = query.where(_HISTORY.c.account_id.in_(list(account_ids)))
    return [_history_row(r) for r in s.execute(query)]


def history(s: Session, account_id: str, scorecard_id: str, limit: int = 100) -> list[HistoryRow]:
    """The account's changes of score on the scorecard, newest first."""
    query = (
        select(_HISTORY)
        .where(_HISTORY.c.account_id == account_id, _HISTORY.c.scorecard_id == scorecard_id)
        .order_by(_HISTORY.c.computed_at.desc(), _HISTORY.c.id.desc())
        .limit(limit)
    )
    return [_history_row(r) for r in s.execute(query)]


def score_at(s: Session, account_id: str, scorecard_id: str, at: datetime) -> HistoryRow | None:
    """The newest change at or before ``at`` (the score the account had then), None if none."""
    query = (
        select(_HISTORY)
        .where(_HISTORY.c.account_id == account_id, _HISTORY.c.scorecard_id == scorecard_id,
               _HISTORY.c.computed_at <= utc(at))
        .order_by(_HISTORY.c.computed_at.desc(), _HISTORY.c.id.desc())
        .limit(1)
    )
    r = s.execute(query).first()
    return _history_row(r) if r is not None else None


# ------------------------------------------------------------------------------------------------- the nightly pass

_RECEIVED = t.ReceivedEvent.__table__
_RECEIVED_IDS = select(_RECEIVED.c.id).where(_RECEIVED.c.id.in_(bindparam("event_ids", expanding=True)))
_REMEMBER_EVENT = insert(_RECEIVED)


def received(s: Session, event_ids: Sequence[str]) -> set[str]:
    """Which of these event ids were taken already (received_events): a retried nightly page sends them no more."""
    found: set[str] = set()
    for ids in in_chunks(list(dict.fromkeys(event_ids)), 500):
        found.update(s.scalars(_RECEIVED_IDS, {"event_ids": list(ids)}))
    return found


def remember_events(s: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Records taken events (rows: id, type, account_id, received_at, answer) in one executemany, those whose id is
    not there yet (a nightly page's health.score_changed; the page is the only sender of its ids). Returns how many."""
    if not rows:
        return 0
    taken = received(s, [r["id"] for r in rows])
    fresh = [r for r in rows if r["id"] not in taken]
    if fresh:
        s.execute(_REMEMBER_EVENT, fresh)
    return len(fresh)
