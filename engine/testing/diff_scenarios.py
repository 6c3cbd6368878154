"""`playbook diff --scenarios`: the library's scenarios of a playbook, run on two versions of it.

Each scenario runs twice, on the old model and on the new one, exactly as `playbook test` runs it
(a fresh time-skipping server, the scenario's account, script and policy, the real interpreter and
activities); what the run did is then read back: its outcome, the emails of the outbox (step,
recipients, subject, status, when), the call tasks (step, assignee, title) and the last status of
each step. The difference between the two is a difference of behaviour, whatever the scenario's
expectations say (they may well fail on the new version: that is what the diff is for).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from temporalio.testing import WorkflowEnvironment

from engine.language.diff import step_names
from engine.language.documents import load_document, read_text
from engine.language.library import discover, is_scenario
from engine.language.model import Playbook
from engine.language.scenario import validate_scenario_file
from engine.runtime.connect import quiet_runtime
from engine.storage import models as t
from engine.storage.db import session

from .scenarios import (
    DEFAULT_NIGHTLY,
    DEFAULT_START,
    SAME_MOMENT,
    offset_seconds,
    offset_text,
    run_checked,
    sqlite_database,
    test_server_path,
)


@dataclass
class Behaviour:
    """What one scenario did on one version of the playbook."""

    outcome: str | None = None
    emails: list[dict[str, Any]] = field(default_factory=list)  # step, to, subject, status, at
    tasks: list[dict[str, Any]] = field(default_factory=list)  # step, assignee, title, at
    steps: dict[str, str] = field(default_factory=dict)  # step id (or path) -> its last status
    failures: list[str] = field(default_factory=list)  # the scenario's expectations this version misses
    error: str | None = None  # the scenario could not run on this version

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "emails": self.emails,
            "tasks": self.tasks,
            "steps": self.steps,
            "failures": self.failures,
            "error": self.error,
        }


@dataclass
class ScenarioDiff:
    file: str
    old: Behaviour
    new: Behaviour
    differences: list[str]

    @property
    def differs(self) -> bool:
        return bool(self.differences)

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "differs": self.differs,
            "differences": self.differences,
            "old": self.old.as_json(),
            "new": self.new.as_json(),
        }


def scenarios_of(playbook_file: Path, playbook_id: str) -> list[Path]:
    """The scenario files of a playbook's library (the folder holding the file, and below) that name it:
    by its id, or by a path that leads to the file."""
    found = []
    target = playbook_file.resolve()
    for path in discover([playbook_file.parent]):
        if not is_scenario(path):
            continue
        text, problem = read_text(path)
        doc = None if problem else load_document(text, str(path)).doc
        reference = doc.data.get("playbook") if doc is not None and isinstance(doc.data, dict) else None
        if not isinstance(reference, str):
            continue
        by_path = reference.endswith((".yaml", ".yml")) or "/" in reference
        if (by_path and (path.parent / reference).resolve() == target) or (not by_path and reference == playbook_id):
            found.append(path)
    return found


async def diff_scenarios(
    paths: list[Path], old: Playbook, new: Playbook, library: Path | None = None, nightly: str = DEFAULT_NIGHTLY
) -> list[ScenarioDiff]:
    """Every scenario on both versions, one after the other, each run on a fresh time-skipping server (health
    recomputed at the nights of ``nightly``, as run_scenarios)."""
    results = []
    for path in paths:
        before = await run_on(path, old, library, nightly=nightly)
        after = await run_on(path, new, library, nightly=nightly)
        results.append(ScenarioDiff(str(path), before, after, differences(before, after)))
    return results


async def run_on(
    path: Path, playbook: Playbook, library: Path | None = None, database: Callable[[Path], str] = sqlite_database,
    nightly: str = DEFAULT_NIGHTLY,
) -> Behaviour:
    """One scenario on one version: what `playbook test` would run, with what it did kept."""
    checked = validate_scenario_file(path, lambda _reference, _scenario: playbook)
    # A step the new version lacks makes the scenario's script or expectations name a step it does not have:
    # those are reported as failures of that version. Anything else wrong with the file stops the scenario.
    blocking = [p for p in checked.problems if not _names_missing_step(p.message)]
    if blocking or checked.playbook is None or not isinstance(checked.data, dict):
        return Behaviour(error="; ".join(p.header() for p in blocking) or "the scenario could not be read")
    behaviour = Behaviour(failures=[p.message for p in checked.problems])
    folder = Path(tempfile.mkdtemp(prefix="scenario-diff-"))
    db_url = database(folder)
    try:
        try:
            async with await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=test_server_path(), runtime=quiet_runtime()
            ) as env:
                report = await run_checked(path, checked.data, checked.playbook, env, db_url, library, nightly)
        except Exception as err:  # noqa: BLE001 - one scenario that cannot run is reported, the others still run
            behaviour.error = f"{type(err).__name__}: {err}"
            return behaviour
        behaviour.outcome = report.outcome
        behaviour.failures.extend(report.failures)
        names = step_names(checked.playbook)  # a step without an id is known by its path, which an edit can shift
        for entry in report.timeline:
            if entry["step"]:
                behaviour.steps[names.get(str(entry["step"]), str(entry["step"]))] = entry["status"]
        start = _start_of(checked.data)
        behaviour.emails, behaviour.tasks = _effects(db_url, start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return behaviour


def _names_missing_step(message: str) -> bool:
    return " has no step " in message or ("is a " in message and " step, not " in message)


def _start_of(data: dict[str, Any]) -> datetime:
    at = (data.get("start") or {}).get("at")
    return datetime.fromisoformat(str(at).replace("Z", "+00:00")) if at else DEFAULT_START


def _at(moment: datetime | None, start: datetime) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return offset_text(moment - start)


def _effects(db_url: str, start: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with session(db_url) as s:
        rows = s.scalars(select(t.OutboxEmail).order_by(t.OutboxEmail.id)).all()
        task_rows = s.scalars(select(t.CallTask).order_by(t.CallTask.id)).all()
        # when each email was let through: a deferred (capped) email's row is older than its sending
        admitted = dict(
            s.execute(select(t.EmailDelivery.key, func.max(t.EmailDelivery.at)).group_by(t.EmailDelivery.key)).all()
        )
        emails = [
            {
                "step": e.step_id,
                "to": list(e.to),
                "subject": e.subject,
                "status": e.status,
                "at": _at(admitted.get(e.key, e.created_at), start),
            }
            for e in rows
        ]
        tasks = [
            {"step": x.step_id, "assignee": x.assignee, "title": x.title, "at": _at(x.created_at, start)}
            for x in task_rows
        ]
    return emails, tasks


# ------------------------------------------------------------------ the differences, one line each


def differences(old: Behaviour, new: Behaviour) -> list[str]:
    if old.error or new.error:
        return [f"{side} version: could not run ({b.error})" for side, b in (("old", old), ("new", new)) if b.error]
    lines = []
    if old.outcome != new.outcome:
        lines.append(f"outcome: {old.outcome} → {new.outcome}")
    lines.extend(_effect_lines("email", old.emails, new.emails, ("subject", "status", "at")))
    lines.extend(_effect_lines("call_task", old.tasks, new.tasks, ("assignee", "title", "at")))
    for step in dict.fromkeys([*old.steps, *new.steps]):
        a, b = old.steps.get(step, "not reached"), new.steps.get(step, "not reached")
        if a != b:
            lines.append(f"step {step}: {a} → {b}")
    return lines


def _effect_key(item: dict[str, Any]) -> tuple[str, str]:
    to = item.get("to")
    return (str(item["step"]), ", ".join(to) if isinstance(to, list) else str(item.get("assignee")))


def _effect_lines(
    what: str, old: list[dict[str, Any]], new: list[dict[str, Any]], compared: tuple[str, ...]
) -> list[str]:
    """Emails are matched by step and recipients, tasks by step and assignee, in the order they were made."""
    lines = []
    remaining = list(new)
    for item in old:
        key = _effect_key(item)
        match = next((x for x in remaining if _effect_key(x) == key), None)
        if match is None:
            match = next((x for x in remaining if x["step"] == item["step"]), None)
        name = f"{what} {item['step']} ({key[1]})"
        if match is None:
            lines.append(f"{name}: only on the old version ({_describe(item)})")
            continue
        remaining.remove(match)
        for field_name in ("to", "assignee", *compared):
            if field_name in item and not _same(field_name, item[field_name], match.get(field_name)):
                lines.append(f"{name}: {field_name} {_value(item[field_name])} → {_value(match.get(field_name))}")
    for item in remaining:
        lines.append(f"{what} {item['step']} ({_effect_key(item)[1]}): only on the new version ({_describe(item)})")
    return lines


def _same(field_name: str, a: Any, b: Any) -> bool:
    """Equal; for "at", less than SAME_MOMENT apart (the scenario's clock runs in real time while effects are made)."""
    if field_name == "at" and isinstance(a, str) and isinstance(b, str):
        return abs(offset_seconds(a) - offset_seconds(b)) < SAME_MOMENT.total_seconds()
    return bool(a == b)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value)
    return repr(value) if isinstance(value, str) and not value.startswith(("+", "-")) else str(value)


def _describe(item: dict[str, Any]) -> str:
    if "subject" in item:
        return f"{item['status']} at {item['at']}, subject {item['subject']!r}"
    return f"created at {item['at']}, title {item['title']!r}"
