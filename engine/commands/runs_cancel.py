"""`playbook runs cancel --playbook ID --version V [--reenroll]`: a version's live runs, cancelled (docs/runs.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PROGRESS_FROM = 10  # runs: a progress bar from this many on (on a terminal)


def _err() -> Console:
    return Console(stderr=True)


def _say(text: str) -> None:
    print(text, flush=True)


def _describe_plan(plan: Any) -> str:
    cancel, later = plan.to_cancel(), plan.to_reenroll_only()
    onto = f" and re-enroll their accounts on {plan.current.version[:8]}" if plan.reenroll else ""
    parts = [f"{len(cancel)} live run(s) of {plan.playbook_id} version {plan.version[:8]} to cancel{onto}"]
    if later:
        parts.append(f"{len(later)} run(s) cancelled earlier by this command to re-enroll")
    return "; ".join(parts)


def runs_cancel(
    playbook: Annotated[str, typer.Option(help="The playbook's id.")],
    version: Annotated[
        str, typer.Option(help="The version whose live runs are cancelled: in full, or a unique prefix (4+ digits).")
    ],
    reenroll: Annotated[
        bool,
        typer.Option(
            "--reenroll",
            help="Start each account's run again on the library's current version, with the run's own trigger event.",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for each cancelled run to close before calling it failed.")
    ] = 60,
    library: Annotated[
        Path | None, typer.Option("--library", help="The library folder (default: PLAYBOOK_LIBRARY).")
    ] = None,
) -> None:
    """Cancel every live run of a playbook's version (their open call tasks and approvals leave the inbox as
    cancelled); with --reenroll, start each account again on the current version. Exits 0: all done (or nothing
    to do), 1: some runs failed, 2: bad input."""
    from temporalio.service import RPCError

    from ..language.library import Library
    from ..runtime import bulk_runs
    from ..runtime.settings import load_settings

    settings = load_settings()
    folder = library or Path(settings.library)
    if not folder.is_dir():
        _err().print(f"no library folder {folder}", markup=False)
        raise typer.Exit(2)
    current = Library.load(folder).playbooks.get(playbook)
    try:
        code = asyncio.run(_run(settings, playbook, version, current, reenroll, dry_run, yes, wait))
    except bulk_runs.BulkError as err:
        _err().print(f"playbook runs cancel: {err}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (RPCError, RuntimeError, OSError) as err:
        _err().print(f"playbook runs cancel: cannot reach Temporal: {err}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


async def _run(
    settings: Any, playbook: str, version: str, current: Any, reenroll: bool, dry_run: bool, yes: bool, wait: float
) -> int:
    from ..runtime import bulk_runs
    from ..runtime.connect import connect

    client = await connect(settings)
    plan = await bulk_runs.plan(client, playbook, version, current=current, reenroll=reenroll, db_url=settings.db_url)
    if not plan.targets:
        _say(f"no live runs of {playbook} version {plan.version[:8]}: nothing to do")
        return 0
    await bulk_runs.check_enrollment(client, plan)
    _say(_describe_plan(plan) + ":")
    if dry_run:
        onto = f"re-enroll on {plan.current.version[:8]}" if plan.reenroll and plan.current else ""
        for x in plan.targets:
            if x.parent:
                what = f"skip it (a child of {x.parent}: cancel its parent)"
            elif x.live:
                what = "cancel" + (f", {onto}" if onto else "")
            else:
                what = onto + " (cancelled earlier by this command)"
            _say(f"  {x.label()}: would {what}")
        _say("dry run: nothing changed")
        return 0
    if not yes and not typer.confirm(f"Go ahead with {len(plan.targets)} run(s)?", default=False):
        _say("nothing done")
        return 1
    outcomes = await _execute(client, plan, settings, wait)
    failed = [o for o in outcomes if o.failed]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    _say("done: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    if failed:
        _err().print(
            f"{len(failed)} run(s) failed: {', '.join(o.target.workflow_id for o in failed)} "
            "(run the same command again once the cause is fixed: nothing done is done twice)",
            markup=False, highlight=False, soft_wrap=True,
        )
        return 1
    return 0


async def _execute(client: Any, plan: Any, settings: Any, wait: float) -> list[Any]:
    from ..runtime import bulk_runs

    console = _err()
    show = console.is_terminal and len(plan.targets) >= PROGRESS_FROM
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not show,
    ) as progress:
        task = progress.add_task("cancelling" + (" and re-enrolling" if plan.reenroll else ""), total=len(plan.targets))

        def done(outcome: Any) -> None:
            said = "" if outcome.status in ("cancelled", "reenrolled", "ended") else f"{outcome.status}: "
            line = f"{outcome.target.label()}: {said}{outcome.detail}"
            if show:  # above the bar
                progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                _say(line)
            progress.advance(task)

        return await bulk_runs.execute(
            client, plan, task_queue=settings.task_queue, db_url=settings.db_url, wait=wait, done=done
        )
