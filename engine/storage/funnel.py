"""A playbook's funnel, read from the run_progress projection (docs/funnel.md).

Everything here is counted by the database (GROUP BY over ``run_progress`` and ``run_step_progress``); only the
goal runs' durations are loaded, for the median time to goal. The projection is kept by the runs themselves as
they move (engine/storage/progress.py); this module only reads it.

Conversion is intention to treat: a group's rate is its runs that reached a goal over ALL the runs that entered
it, live ones included (a run still waiting counts as not converted yet, so a young playbook's rates are low until
its runs end). Control versus treated compares every counted run; a split compares the treated runs by the path
each took (a held-out run draws a path too, but its effects are skipped, so it would only dilute the paths).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, case, func, select, true
from sqlalchemy.orm import Session

from engine.storage import models as t
from engine.storage.db import utc

if TYPE_CHECKING:  # the language is read by its shape only (engine.storage imports nothing of the project)
    from engine.language.model import Playbook

RP = t.RunProgress.__table__
RSP = t.RunStepProgress.__table__

STOP_EXIT = "(stop)"  # the `exited` key of runs ended by a `stop` step with outcome exited (no event)
MIN_PREFIX = 4
Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal distribution


class FunnelError(ValueError):
    """A version that cannot be used: too short, unknown or ambiguous."""


class UnknownPlaybook(FunnelError):
    """The playbook is neither in the library nor in any run."""


class UnknownVersion(FunnelError):
    """No version of the playbook starts with the one given."""


class AmbiguousVersion(FunnelError):
    """More than one version of the playbook starts with the one given."""


@dataclass(frozen=True)
class StepInfo:
    step_id: str
    kind: str
    depth: int
    paths: tuple[str, ...] = ()  # a split step's path names, in the playbook's order


@dataclass(frozen=True)
class StepFunnel:
    step_id: str
    kind: str  # "" for a step no longer in the playbook's steps given (an older version's)
    depth: int
    done: int
    skipped: int
    failed: int
    not_run: int
    waiting: int  # live runs there now


@dataclass(frozen=True)
class GoalFunnel:
    event: str
    reached: int
    rate: float  # reached / entered (intention to treat)
    median_seconds: float | None  # from start to the goal, None when no run reached it


@dataclass(frozen=True)
class Conversion:
    group: str
    runs: int
    converted: int
    rate: float
    low: float  # Wilson 95% interval of the rate ([0, 1] for an empty group)
    high: float


@dataclass(frozen=True)
class Comparison:
    name: str  # "control", or the split step id
    groups: list[Conversion]  # control: [treated, control]; split: one per path
    difference: float | None  # treated - control, or path 2 - path 1 for a two-path split
    low: float | None  # Newcombe's 95% interval of the difference; None when a group is empty
    high: float | None


@dataclass(frozen=True)
class Funnel:
    playbook_id: str
    version: str | None  # the full version counted, None: every version
    versions: list[str]  # the playbook's versions with runs (newest first) and those the caller knows
    since: datetime | None
    entered: int
    live: int
    completed: int
    goal: int
    failed: int
    cancelled: int
    exited: dict[str, int]  # non-goal exits by event type (STOP_EXIT: a `stop` step)
    steps: list[StepFunnel]
    goals: list[GoalFunnel]
    comparisons: list[Comparison]
    conversion: str = field(default="entered")  # the denominator of every rate: all runs entered (ITT)


# ------------------------------------------------------------------ intervals


def wilson(converted: int, runs: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (Wilson 1927; Newcombe 1998a, method 3, no continuity
    correction): centre (p + z²/2n) / (1 + z²/n), half-width z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)."""
    if runs <= 0:
        return 0.0, 1.0
    p = converted / runs
    z2 = z * z
    denominator = 1 + z2 / runs
    centre = (p + z2 / (2 * runs)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs * runs))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float] | None:
    """The difference p1 - p2 with Newcombe's hybrid score interval (R. G. Newcombe, "Interval estimation for
    the difference between independent proportions: comparison of eleven methods", Statistics in Medicine 17,
    873-890, 1998; method 10). With (l1, u1), (l2, u2) the Wilson intervals of p1 and p2:
        low  = (p1 - p2) - sqrt((p1 - l1)² + (u2 - p2)²)
        high = (p1 - p2) + sqrt((u1 - p1)² + (p2 - l2)²)
    None when a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, low), min(1.0, high)


def conversion(group: str, converted: int, runs: int) -> Conversion:
    low, high = wilson(converted, runs)
    return Conversion(group, runs, converted, converted / runs if runs else 0.0, low, high)


def compare(name: str, groups: list[Conversion]) -> Comparison:
    """The comparison of two groups: treated - control for "control" ([treated, control]), else the second
    group - the first (path 2 - path 1); no difference for another number of groups or an empty group."""
    if len(groups) != 2:
        return Comparison(name, groups, None, None, None)
    first, second = groups
    if name == "control":  # [treated, control]: treated - control
        found = newcombe(first.converted, first.runs, second.converted, second.runs)
    else:  # two paths: path 2 - path 1
        found = newcombe(second.converted, second.runs, first.converted, first.runs)
    if found is None:
        return Comparison(name, groups, None, None, None)
    return Comparison(name, groups, *found)


# ------------------------------------------------------------------ the playbook's steps


def steps_of(playbook: Playbook) -> list[StepInfo]:
    """The playbook's steps in document order with their nesting depth (0 at the top); steps without an id are
    left out (the projection keys steps by id) but their nested steps are not."""
    found: list[StepInfo] = []

    def visit(steps: Iterable[Any], depth: int) -> None:
        for step in steps:
            nested: list[Iterable[Any]] = []
            kind = str(getattr(step, "kind", ""))
            paths: tuple[str, ...] = ()
            if kind == "switch":
                nested = [case.steps for case in step.cases] + ([step.otherwise] if step.otherwise else [])
            elif kind == "parallel":
                nested = [branch.steps for branch in step.branches]
            elif kind == "split":
                nested = [path.steps for path in step.paths]
                paths = tuple(path.name for path in step.paths)
            elif kind == "for_each":
                nested = [step.steps]
            if step.id:
                found.append(StepInfo(step.id, kind, depth, paths))
            for inner in nested:
                visit(inner, depth + 1)

    visit(playbook.steps, 0)
    return found


def goals_of(playbook: Playbook) -> list[str]:
    """The event types of the playbook's goal exits, in its order."""
    return list(dict.fromkeys(rule.event for rule in playbook.exit_when if rule.goal))


# ------------------------------------------------------------------ the funnel


def resolve_version(s: Session, playbook_id: str, version: str, known: Iterable[str] = ()) -> str:
    """The full version a version or a unique prefix of it (at least 4 characters) names; FunnelError if none or
    several of the playbook's versions (those of its runs and ``known``) start with it."""
    if len(version) < MIN_PREFIX:
        raise FunnelError(f"version {version!r} is too short: give at least {MIN_PREFIX} characters")
    candidates = set(s.scalars(select(RP.c.version).where(RP.c.playbook_id == playbook_id).distinct())) | set(known)
    if version in candidates:
        return version
    matches = sorted(v for v in candidates if v.startswith(version))
    if not matches:
        raise UnknownVersion(f"playbook {playbook_id!r} has no version {version!r}")
    if len(matches) > 1:
        raise AmbiguousVersion(f"version {version!r} of {playbook_id!r} is ambiguous: {', '.join(matches)}")
    return matches[0]


def has_runs(s: Session, playbook_id: str) -> bool:
    return s.scalar(select(RP.c.run_key).where(RP.c.playbook_id == playbook_id).limit(1)) is not None


def versions_of(s: Session, playbook_id: str) -> list[str]:
    """The playbook's versions with runs, the one whose first run started last first."""
    first = func.min(RP.c.started_at)
    rows = s.execute(
        select(RP.c.version, first).where(RP.c.playbook_id == playbook_id).group_by(RP.c.version).order_by(first.desc())
    )
    return [version for version, _ in rows]


def _naive_utc(moment: datetime) -> datetime:
    return utc(moment).replace(tzinfo=None)


def funnel(
    s: Session,
    playbook_id: str,
    *,
    version: str | None = None,
    since: datetime | None = None,
    steps: Sequence[StepInfo] = (),
    goals: Sequence[str] = (),
    control: bool = False,
    known_versions: Sequence[str] = (),
) -> Funnel:
    """The funnel of a playbook's runs (one version's, or all), those started at or after ``since``.

    ``steps``: the playbook's steps in order (steps_of), listed even when no run reached them; steps seen only in
    the runs follow, by id or path (a live run waiting in a step without id is counted by the step's path).
    ``goals``: the playbook's goal events (goals_of), listed with zeros. ``control``: the playbook holds out a share
    (settings.control > 0), so the control comparison is given even before a held-out run. ``known_versions``:
    versions that exist without runs yet (the library's), accepted by ``version``."""
    full = resolve_version(s, playbook_id, version, known_versions) if version is not None else None
    versions = versions_of(s, playbook_id)
    versions += [v for v in known_versions if v not in versions]
    since = utc(since) if since is not None else None

    conditions: list[ColumnElement[bool]] = [RP.c.playbook_id == playbook_id]
    if full is not None:
        conditions.append(RP.c.version == full)
    if since is not None:
        bound = _naive_utc(since) if s.get_bind().dialect.name == "sqlite" else since
        conditions.append(RP.c.started_at >= bound)

    def where(query: Select[Any]) -> Select[Any]:
        return query.where(*conditions)

    # the runs by group, status and exit event
    count = func.count()
    by_status = s.execute(
        where(select(RP.c.control, RP.c.status, RP.c.exit_event, count)).group_by(
            RP.c.control, RP.c.status, RP.c.exit_event
        )
    ).all()
    totals: dict[str, int] = {}
    exited: dict[str, int] = {}
    reached: dict[str, int] = {}
    runs_by_group = {False: 0, True: 0}
    converted_by_group = {False: 0, True: 0}
    for held_out, status, event, n in by_status:
        totals[status] = totals.get(status, 0) + n
        runs_by_group[bool(held_out)] += n
        if status == "exited":
            key = event or STOP_EXIT
            exited[key] = exited.get(key, 0) + n
        elif status == "goal":
            reached[event or ""] = reached.get(event or "", 0) + n
            converted_by_group[bool(held_out)] += n
    entered = sum(totals.values())

    # each step: how runs finished it, and the live runs there now
    step_rows = s.execute(
        where(select(RSP.c.step_id, RSP.c.status, count).join(RP, RP.c.run_key == RSP.c.run_key)).group_by(
            RSP.c.step_id, RSP.c.status
        )
    ).all()
    finished: dict[str, dict[str, int]] = {}
    for step_id, status, n in step_rows:
        finished.setdefault(step_id, {})[status] = n
    waiting = _waiting(s, where)

    listed = {info.step_id for info in steps}
    extra = sorted((set(finished) | set(waiting)) - listed, key=_natural)
    infos = list(steps) + [StepInfo(step_id, "", 0) for step_id in extra]
    step_funnels = [
        StepFunnel(
            info.step_id,
            info.kind,
            info.depth,
            finished.get(info.step_id, {}).get("done", 0),
            finished.get(info.step_id, {}).get("skipped", 0),
            finished.get(info.step_id, {}).get("failed", 0),
            finished.get(info.step_id, {}).get("not_run", 0),
            waiting.get(info.step_id, 0),
        )
        for info in infos
    ]

    # goals: the rate over every run entered, the median time of those that reached it
    durations: dict[str, list[float]] = {}
    goal_rows = s.execute(
        where(select(RP.c.exit_event, RP.c.started_at, RP.c.ended_at)).where(
            RP.c.status == "goal", RP.c.ended_at.is_not(None)
        )
    )
    for event, started, ended in goal_rows:
        durations.setdefault(event or "", []).append((utc(ended) - utc(started)).total_seconds())
    goal_events = list(dict.fromkeys([*goals, *sorted(reached)]))
    goal_funnels = [
        GoalFunnel(
            event,
            reached.get(event, 0),
            reached.get(event, 0) / entered if entered else 0.0,
            statistics.median(durations[event]) if durations.get(event) else None,
        )
        for event in goal_events
    ]

    # comparisons: treated against control, then each split's paths (treated runs only)
    comparisons: list[Comparison] = []
    if control or runs_by_group[True]:
        groups = [
            conversion("treated", converted_by_group[False], runs_by_group[False]),
            conversion("control", converted_by_group[True], runs_by_group[True]),
        ]
        comparisons.append(compare("control", groups))
    split_counts = _paths(s, where)
    split_order = [info for info in infos if info.kind == "split"]
    split_ids = [info.step_id for info in split_order] + sorted(set(split_counts) - {i.step_id for i in split_order})
    declared = {info.step_id: info.paths for info in split_order}
    for split_id in split_ids:
        seen = split_counts.get(split_id, {})
        names = list(declared.get(split_id, ())) + sorted(set(seen) - set(declared.get(split_id, ())))
        groups = [conversion(name, seen.get(name, (0, 0))[1], seen.get(name, (0, 0))[0]) for name in names]
        comparisons.append(compare(split_id, groups))

    return Funnel(
        playbook_id=playbook_id,
        version=full,
        versions=versions,
        since=since,
        entered=entered,
        live=totals.get("running", 0),
        completed=totals.get("completed", 0),
        goal=totals.get("goal", 0),
        failed=totals.get("failed", 0),
        cancelled=totals.get("cancelled", 0),
        exited=dict(sorted(exited.items())),
        steps=step_funnels,
        goals=goal_funnels,
        comparisons=comparisons,
    )


def playbook_funnel(
    s: Session,
    playbook_id: str,
    playbook: Playbook | None,
    *,
    version: str | None = None,
    since: datetime | None = None,
) -> Funnel:
    """The funnel as the API and `playbook stats` show it: ``playbook`` is the library's (None: not in it); its
    steps, goals and control setting are used when the version asked is its own or none is asked. Raises
    UnknownPlaybook (in neither the library nor a run), UnknownVersion, AmbiguousVersion or FunnelError."""
    if playbook is None and not has_runs(s, playbook_id):
        raise UnknownPlaybook(f"no playbook {playbook_id!r} in the library or in any run")
    known = [playbook.version] if playbook is not None else []
    full = resolve_version(s, playbook_id, version, known) if version is not None else None
    library = playbook if playbook is not None and full in (None, playbook.version) else None
    return funnel(
        s,
        playbook_id,
        version=full,
        since=since,
        steps=steps_of(library) if library is not None else (),
        goals=goals_of(library) if library is not None else (),
        control=library is not None and library.settings.control > 0,
        known_versions=known,
    )


def _natural(label: str) -> tuple[tuple[int, int, str], ...]:
    """A step id or path in reading order: steps.2 before steps.10 (a live run in a step without id is counted by
    the step's path)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in label.split("."))


def _json_elements(s: Session, column: Any, *, keyed: bool) -> Any:
    """A table-valued function over a JSON column (key, value): SQLite's json_each, PostgreSQL's json_each_text
    (an object) or json_array_elements_text (an array); None for another database."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        return func.json_each(column).table_valued("key", "value")
    if dialect == "postgresql":
        if keyed:
            return func.json_each_text(column).table_valued("key", "value")
        return func.json_array_elements_text(column).table_valued("value")
    return None


def _waiting(s: Session, where: Any) -> dict[str, int]:
    """Live runs by the step they are in now (``current``)."""
    elements = _json_elements(s, RP.c.current, keyed=False)
    if elements is None:  # another database: read the live runs' current steps
        found: dict[str, int] = {}
        for (current,) in s.execute(where(select(RP.c.current)).where(RP.c.status == "running")):
            for step_id in set(current or []):
                found[str(step_id)] = found.get(str(step_id), 0) + 1
        return found
    query = where(
        select(elements.c.value, func.count(func.distinct(RP.c.run_key))).select_from(RP).join(elements, true())
    ).where(RP.c.status == "running")
    return {str(value): n for value, n in s.execute(query.group_by(elements.c.value))}


def _paths(s: Session, where: Any) -> dict[str, dict[str, tuple[int, int]]]:
    """Treated runs by split step and path: (runs, converted)."""
    goal = func.sum(case((RP.c.status == "goal", 1), else_=0))
    elements = _json_elements(s, RP.c.paths, keyed=True)
    found: dict[str, dict[str, tuple[int, int]]] = {}
    if elements is None:
        for paths, status in s.execute(where(select(RP.c.paths, RP.c.status)).where(RP.c.control.is_(False))):
            for split_id, path in (paths or {}).items():
                runs, converted = found.setdefault(str(split_id), {}).get(str(path), (0, 0))
                found[str(split_id)][str(path)] = (runs + 1, converted + (status == "goal"))
        return found
    query = where(
        select(elements.c.key, elements.c.value, func.count(), goal).select_from(RP).join(elements, true())
    ).where(RP.c.control.is_(False))
    for split_id, path, runs, converted in s.execute(query.group_by(elements.c.key, elements.c.value)):
        found.setdefault(str(split_id), {})[str(path)] = (int(runs), int(converted or 0))
    return found
