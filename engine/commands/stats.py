"""`playbook stats ID`: a playbook's funnel (docs/funnel.md)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from engine.storage.funnel import Funnel

_VERSION = re.compile(r"^[0-9a-f]{4,100}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ].*)?$")


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"playbook stats: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def parse_since(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 date-time (no offset: UTC); ValueError otherwise."""
    if not _DATE.match(text):
        raise ValueError(text)
    moment = datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # an offset past the calendar's ends: before or after every run
        return (datetime.min if moment.year < 5000 else datetime.max).replace(tzinfo=UTC)


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _as_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def stats(
    playbook_id: Annotated[str, typer.Argument(help="The playbook's id.")],
    version: Annotated[
        str | None, typer.Option("--version", help="One version (or a unique prefix, at least 4 characters).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only runs started at or after this date (UTC) or date-time.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the funnel as JSON (docs/funnel.md).")] = False,
) -> None:
    """A playbook's funnel: runs entered, each step, exits, goals, control versus treated."""
    from engine.language.library import Library
    from engine.runtime.settings import SettingsError, load_settings
    from engine.storage import funnel as fn
    from engine.storage.db import migrate, session

    if version is not None and not _VERSION.match(version):
        raise _fail(f"--version {version!r} is not a version: at least 4 of its hexadecimal digits (as listed)")
    start: datetime | None = None
    if since is not None:
        try:
            start = parse_since(since)
        except ValueError:
            raise _fail(f"--since {since!r} is not a date (2026-11-01) or a date-time (2026-11-01T09:00Z)") from None
    try:
        settings = load_settings()
    except SettingsError as err:
        raise _fail(str(err)) from None
    playbook = Library.load(settings.library).playbooks.get(playbook_id)
    migrate(settings.db_url)  # as `playbook suppressions`: the projection's tables exist from here on
    with session(settings.db_url) as s:
        try:
            result = fn.playbook_funnel(s, playbook_id, playbook, version=version, since=start)
        except fn.FunnelError as err:
            raise _fail(str(err)) from None
    if json_output:
        print(json.dumps(dataclasses.asdict(result), default=_as_json, indent=2))
        return
    unnamed: dict[str, str] = {}
    if playbook is not None and result.version in (None, playbook.version):
        unnamed = {step.path: step.kind for step in playbook.walk() if not step.id}
    show(result, Console(), unnamed)


def show(f: Funnel, console: Console, unnamed: dict[str, str] | None = None) -> None:
    """The funnel as rich tables: summary, steps, goals, comparisons. ``unnamed``: the kind of each step without
    id by its path (a live run waiting in one is counted by the path)."""
    unnamed = unnamed or {}
    which = f"version {f.version}" if f.version else f"all versions ({len(f.versions)})"
    when = f", runs started since {f.since.isoformat()}" if f.since else ""
    console.print(f"[bold]{f.playbook_id}[/bold]: {which}{when}", highlight=False)
    console.print("Every rate is over the runs entered, live ones included (intention to treat).", highlight=False)

    summary = Table(title="Runs", title_justify="left", show_header=True)
    summary.add_column("runs")
    summary.add_column("count", justify="right")
    summary.add_column("share", justify="right")
    rows = [("entered", f.entered), ("live", f.live), ("completed", f.completed), ("goal", f.goal)]
    rows += [(f"exited: {event}", n) for event, n in f.exited.items()]
    rows += [("failed", f.failed), ("cancelled", f.cancelled)]
    for label, n in rows:
        share = _percent(n / f.entered) if f.entered and label != "entered" else ""
        summary.add_row(label, str(n), share)
    console.print(summary)

    steps = Table(title="Steps", title_justify="left", show_header=True)
    for column in ("step", "kind", "done", "skipped", "failed", "not run", "waiting"):
        steps.add_column(column, justify="left" if column in ("step", "kind") else "right")
    for step in f.steps:
        steps.add_row(
            "  " * step.depth + step.step_id,
            step.kind or (f"{unnamed[step.step_id]}, no id" if step.step_id in unnamed else "(not in this version)"),
            *(str(n) for n in (step.done, step.skipped, step.failed, step.not_run, step.waiting)),
        )
    console.print(steps if f.steps else "No steps: no run reported one yet.")

    if f.goals:
        goals = Table(title="Goals (rate over runs entered)", title_justify="left", show_header=True)
        for column in ("goal", "reached", "rate", "median time"):
            goals.add_column(column, justify="left" if column == "goal" else "right")
        for goal in f.goals:
            goals.add_row(goal.event, str(goal.reached), _percent(goal.rate), _duration(goal.median_seconds))
        console.print(goals)

    for comparison in f.comparisons:
        title = "Treated versus control" if comparison.name == "control" else f"Split {comparison.name}"
        table = Table(title=f"{title}: goal conversion", title_justify="left", show_header=True)
        for column in ("group", "runs", "converted", "rate", "95% interval"):
            table.add_column(column, justify="left" if column == "group" else "right")
        for group in comparison.groups:
            interval = f"{_percent(group.low)} - {_percent(group.high)}" if group.runs else "-"
            table.add_row(group.group, str(group.runs), str(group.converted), _percent(group.rate), interval)
        console.print(table)
        if comparison.difference is not None and comparison.low is not None and comparison.high is not None:
            what = "treated - control" if comparison.name == "control" else "second path - first path"
            console.print(
                f"  difference ({what}): {_points(comparison.difference)} points, 95% interval "
                f"{_points(comparison.low)} to {_points(comparison.high)}",
                highlight=False,
            )
        elif len(comparison.groups) == 2:
            console.print("  difference: none yet (a group has no runs)", highlight=False)
