"""The live runs of one version of a playbook, cancelled, and with ``reenroll`` started again on the library's
current version (`playbook runs cancel --playbook ID --version V [--reenroll]`, docs/runs.md).

A run is pinned to the version it started on (its model is its input). Moving runs to a new version is therefore
"cancel and re-enroll": each run is cancelled through Temporal, waited for until it has closed, its open asks
(call tasks it waits for, approvals) are closed as cancelled in the inbox, and the same account is started again on
the current version with the run's own trigger event and input, read from the first event of its history, under the
run's own workflow id: the id the intake gave it (`<playbook>/<key>`, or with `reenroll: always`
`<playbook>/<key>/<event id>`), so a later event reaches the new run by that id and the enrollment rules go on
holding (`never`: the id has had its runs; `after_exit`: the next one after this one ends).

Doing it twice starts nothing twice. A run this command cancelled carries a marker in its cancel request's reason;
one whose workflow id has had no run since is "cancelled, not re-enrolled yet", and a later `--reenroll` of the same
version re-enrolls it (the command was interrupted, the run took longer than the wait to close, or it was first
cancelled without `--reenroll`). The start itself is refused by Temporal when the id has a live run or its last run
did not end cancelled (reuse policy ALLOW_DUPLICATE_FAILED_ONLY, conflict policy FAIL), so two commands racing
start one run, not two.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest,
    GetWorkflowExecutionHistoryReverseRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from engine.interpreter.messages import WORKFLOW_NAME, RunInput
from engine.language.model import Playbook
from engine.storage import enrolled
from engine.storage import models as t
from engine.storage.db import session

from .runs import ACCOUNT_ID, PLAYBOOK_VERSION, search_attributes

MARKER = "playbook runs cancel"  # the start of the reason of every cancel request this module sends
MIN_PREFIX = 4
_VERSION = re.compile(r"^[0-9a-f]{4,64}$")
_PLAYBOOK_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class BulkError(ValueError):
    """Bad input: an unknown playbook, an unknown or ambiguous version, nothing to re-enroll on."""


@dataclass(frozen=True)
class Target:
    """A run to act on: live (to cancel), or cancelled earlier by this command and not re-enrolled yet."""

    workflow_id: str
    run_id: str
    account_id: str
    live: bool
    parent: str | None = None  # a child run (run_playbook with wait: true): left to its parent

    def label(self) -> str:
        return f"{self.workflow_id} (account {self.account_id})"


@dataclass(frozen=True)
class Plan:
    playbook_id: str
    version: str  # the full version whose runs are acted on
    current: Playbook | None  # the library's version of the playbook (None: not in the library)
    reenroll: bool
    targets: list[Target]

    def to_cancel(self) -> list[Target]:
        return [x for x in self.targets if x.live and x.parent is None]

    def to_reenroll_only(self) -> list[Target]:
        return [x for x in self.targets if not x.live]


@dataclass
class Outcome:
    target: Target
    status: str  # cancelled | reenrolled | ended | skipped | failed
    detail: str
    new_run_id: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def reason_for(playbook_id: str, version: str, reenroll: bool) -> str:
    return f"{MARKER} --playbook {playbook_id} --version {version}" + (" --reenroll" if reenroll else "")


def resolve_version(given: str, known: Iterable[str]) -> str:
    """The full version ``given`` names among the ``known`` ones: itself, or the one it is a prefix of
    (at least MIN_PREFIX characters). BulkError when it names none or several."""
    wanted = given.strip().lower()
    if not _VERSION.match(wanted):
        raise BulkError(f"{given!r} is not a version: give a playbook version or a prefix of {MIN_PREFIX}+ hex digits")
    versions = sorted(set(known))
    if wanted in versions:
        return wanted
    matches = [v for v in versions if v.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listed = ", ".join(v[:8] for v in versions) or "none"
        raise BulkError(f"no version {given!r} of this playbook is known (its runs' and the library's: {listed})")
    raise BulkError(f"version {given!r} is ambiguous: {', '.join(matches)}; give more of it")


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def _listed(client: Client, query: str) -> list[Any]:
    return [wf async for wf in client.list_workflows(query)]


def _version_of(wf: Any) -> str:
    return str(wf.typed_search_attributes.get(PLAYBOOK_VERSION) or "")


def _account_of(wf: Any) -> str:
    return str(wf.typed_search_attributes.get(ACCOUNT_ID) or "")


def _progress_versions(db_url: str | None, playbook_id: str) -> set[str]:
    """The versions the funnel's projection has seen runs of (empty when it cannot be read)."""
    if not db_url:
        return set()
    try:
        with session(db_url) as s:
            rows = s.scalars(select(t.RunProgress.version).where(t.RunProgress.playbook_id == playbook_id).distinct())
            return {str(v) for v in rows}
    except SQLAlchemyError:
        return set()


async def plan(
    client: Client,
    playbook_id: str,
    version: str,
    *,
    current: Playbook | None,
    reenroll: bool,
    db_url: str | None = None,
) -> Plan:
    """What the command would do: the version resolved and the runs to act on. Raises BulkError on bad input."""
    if not _PLAYBOOK_ID.match(playbook_id):
        raise BulkError(f"{playbook_id!r} is not a playbook id (lower-case letters, digits and dashes)")
    base = f"WorkflowType = '{WORKFLOW_NAME}' AND PlaybookId = {_quoted(playbook_id)}"
    live = await _listed(client, f"{base} AND ExecutionStatus = 'Running'")
    if current is None and not live:
        count = await client.count_workflows(base)
        if count.count == 0:
            raise BulkError(f"no playbook {playbook_id!r}: not in the library and no run of it in Temporal")
    known = {_version_of(wf) for wf in live} | _progress_versions(db_url, playbook_id)
    if current is not None:
        known.add(current.version)
    known.discard("")
    wanted = version.strip().lower()
    if _VERSION.match(wanted) and not any(v.startswith(wanted) for v in known):
        # a version whose runs have all closed (and the projection has not seen): Temporal's search index knows it
        known |= await _closed_versions(client, base, wanted)
    full = resolve_version(version, known)
    if reenroll:
        if current is None:
            raise BulkError(f"playbook {playbook_id!r} is not in the library: nothing to re-enroll on")
        if full == current.version:
            raise BulkError(
                f"version {full} is the library's current version of {playbook_id}: nothing to move its runs to"
            )
    targets = [
        Target(wf.id, wf.run_id or "", _account_of(wf), live=True, parent=wf.parent_id)
        for wf in live
        if _version_of(wf) == full
    ]
    if reenroll:
        targets += await _cancelled_not_reenrolled(client, base, full, {x.workflow_id for x in targets})
    targets.sort(key=lambda x: x.workflow_id)
    return Plan(playbook_id, full, current, reenroll, targets)


async def _closed_versions(client: Client, base: str, prefix: str, most: int = 5) -> set[str]:
    """The versions starting with ``prefix`` of the playbook's runs in Temporal (up to ``most``, enough to call a
    prefix ambiguous): one look-up per version with STARTS_WITH, else every run of the playbook, filtered."""
    found: set[str] = set()
    try:
        while len(found) < most:
            query = f"{base} AND PlaybookVersion STARTS_WITH {_quoted(prefix)}" + "".join(
                f" AND PlaybookVersion != {_quoted(v)}" for v in sorted(found)
            )
            versions = [_version_of(wf) async for wf in client.list_workflows(query, limit=1)]
            if not versions:
                break
            found.add(versions[0])
    except RPCError:  # a visibility store without STARTS_WITH
        found = {v for wf in await _listed(client, base) if (v := _version_of(wf)).startswith(prefix)}
    return found


async def _cancelled_not_reenrolled(client: Client, base: str, version: str, live_ids: set[str]) -> list[Target]:
    """Runs of the version this command cancelled whose workflow id has had no run since."""
    query = f"{base} AND PlaybookVersion = {_quoted(version)} AND ExecutionStatus = 'Canceled'"
    cancelled = await _listed(client, query)
    found: list[Target] = []
    for wf in cancelled:
        if wf.id in live_ids or wf.parent_id:
            continue
        latest = await client.get_workflow_handle(wf.id).describe()
        if latest.run_id != wf.run_id or latest.status != WorkflowExecutionStatus.CANCELED:
            continue  # the id has had a run since (a re-enrollment, a new enrollment)
        if (await _cancel_reason(client, wf.id, wf.run_id) or "").startswith(MARKER):
            found.append(Target(wf.id, wf.run_id or "", _account_of(wf), live=False))
    return found


async def _cancel_reason(client: Client, workflow_id: str, run_id: str) -> str | None:
    """The reason of the cancel request that closed the run (from the end of its history)."""
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
        maximum_page_size=200,
    )
    response = await client.workflow_service.get_workflow_execution_history_reverse(request)
    for event in response.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            return str(event.workflow_execution_cancel_requested_event_attributes.cause)
    return None


async def run_input(client: Client, workflow_id: str, run_id: str) -> RunInput:
    """The input a run started with (the first event of its history), through the client's data converter: for a
    run that continued as new, the newest run's input, which keeps the chain's trigger event and input."""
    request = GetWorkflowExecutionHistoryRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
        maximum_page_size=1,
    )
    response = await client.workflow_service.get_workflow_execution_history(request)
    first = response.history.events[0].workflow_execution_started_event_attributes
    decoded = await client.data_converter.decode(list(first.input.payloads), [RunInput])
    found = decoded[0]
    if not isinstance(found, RunInput):
        raise TypeError(f"the run's input is a {type(found).__name__}, not a RunInput")
    return found


async def check_enrollment(client: Client, plan: Plan) -> None:
    """For re-enrollment under the runs' own workflow ids, the current version must enroll as the old one did
    (same key template and reenroll rule): else its ids would differ and the next event could start a second run.
    Raises BulkError before anything is cancelled."""
    if not plan.reenroll or plan.current is None or not plan.targets:
        return
    first = plan.targets[0]
    try:
        old = (await run_input(client, first.workflow_id, first.run_id)).playbook
    except (RPCError, TypeError, ValueError, IndexError) as err:
        raise BulkError(f"cannot read the input of {first.workflow_id} to compare its enrollment: {err}") from None
    if old.enrollment != plan.current.enrollment:
        raise BulkError(
            f"the enrollment of {plan.playbook_id} changed between {plan.version[:8]} ({old.enrollment.key!r}, "
            f"reenroll {old.enrollment.reenroll}) and {plan.current.version[:8]} ({plan.current.enrollment.key!r}, "
            f"reenroll {plan.current.enrollment.reenroll}): re-enrolling under the old ids would not hold the new "
            "rules; cancel without --reenroll and let the next events enroll the accounts"
        )


def close_open_asks(db_url: str, workflow_id: str, at: datetime) -> tuple[int, int]:
    """The call tasks a cancelled run waited for and its pending approvals, closed as cancelled in the inbox (as the
    run closes them itself when an exit rule ends it). Only for a workflow id whose last run has closed cancelled
    and none started since. The numbers of tasks and approvals closed."""
    with session(db_url) as s:
        tasks = s.execute(
            update(t.CallTask)
            .where(t.CallTask.workflow_id == workflow_id, t.CallTask.status == "open", t.CallTask.wait.is_(True))
            .values(status="cancelled", completed_at=at)
        )
        approvals = s.execute(
            update(t.Approval)
            .where(t.Approval.workflow_id == workflow_id, t.Approval.status == "pending")
            .values(status="cancelled", decided_at=at)
        )
        return int(getattr(tasks, "rowcount", 0) or 0), int(getattr(approvals, "rowcount", 0) or 0)


def _status_name(status: WorkflowExecutionStatus | None) -> str:
    return status.name.lower() if status else "unknown"


async def _cancel_and_wait(client: Client, plan: Plan, target: Target, wait: float) -> tuple[str, str, str]:
    """Cancels the run's chain and waits until it has closed: (status, detail, run id of the run that closed)."""
    described = await client.get_workflow_handle(target.workflow_id, run_id=target.run_id).describe()
    first_run = described.raw_description.workflow_execution_info.first_run_id or None
    if described.status == WorkflowExecutionStatus.RUNNING:
        # the chain the run belongs to, whichever of its runs is live by now (continue-as-new); never a newer
        # enrollment under the same workflow id
        chain = client.get_workflow_handle(target.workflow_id, first_execution_run_id=first_run or target.run_id)
        await chain.cancel(reason=reason_for(plan.playbook_id, plan.version, plan.reenroll))
    waited = client.get_workflow_handle(target.workflow_id, run_id=target.run_id)
    try:
        await asyncio.wait_for(waited.result(follow_runs=True), wait)
    except TimeoutError:
        return "failed", f"cancel requested, still running after {wait:g} s (is a worker polling?)", ""
    except WorkflowFailureError as err:
        if not isinstance(err.cause, CancelledError):
            latest = await client.get_workflow_handle(target.workflow_id).describe()
            return "ended", f"ended on its own before the cancel ({_status_name(latest.status)})", ""
    else:
        return "ended", "ended on its own before the cancel (completed)", ""
    latest = await client.get_workflow_handle(target.workflow_id).describe()
    latest_first = latest.raw_description.workflow_execution_info.first_run_id or None
    if latest.status != WorkflowExecutionStatus.CANCELED or (first_run and latest_first and latest_first != first_run):
        return "ended", f"closed as cancelled, but the id has a newer run ({_status_name(latest.status)})", ""
    return "cancelled", "cancelled", latest.run_id or ""


async def _start_again(
    client: Client, task_queue: str, plan: Plan, target: Target, closed_run: str, db_url: str | None
) -> Outcome:
    """The account's run started again on the current version, under the same workflow id, once."""
    assert plan.current is not None
    latest = await client.get_workflow_handle(target.workflow_id).describe()
    if latest.run_id != closed_run:
        return Outcome(target, "skipped", f"not re-enrolled: {target.workflow_id} has a newer run ({latest.run_id})")
    before = await run_input(client, target.workflow_id, closed_run)
    playbook = plan.current
    account_id = before.account_id
    try:
        handle = await client.start_workflow(
            WORKFLOW_NAME,
            RunInput(playbook=playbook, account_id=account_id, event=before.event, input=dict(before.input)),
            id=target.workflow_id,
            task_queue=task_queue,
            # only after a run that did not complete (this one, cancelled), and never beside a live one
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo={
                "playbook_id": playbook.id, "version": playbook.version, "account_id": account_id,
                "title": playbook.title,
            },
            search_attributes=search_attributes(playbook, account_id),
        )
    except WorkflowAlreadyStartedError:
        return Outcome(target, "skipped", "not re-enrolled: the id already has a run started after this one")
    detail = f"re-enrolled on {playbook.version[:8]} (run {handle.result_run_id})"
    if db_url:
        try:
            with session(db_url) as s:  # an event right after reaches it by id (engine/storage/enrolled.py)
                enrolled.register(s, [(target.workflow_id, account_id, playbook.id)], datetime.now(UTC))
        except SQLAlchemyError as err:  # the run records itself in its first activity anyway
            detail += f" (not recorded in enrolled_runs yet: {type(err).__name__}; its first activity will)"
    return Outcome(target, "reenrolled", detail, handle.result_run_id)


async def act_on(
    client: Client, plan: Plan, target: Target, *, task_queue: str, db_url: str | None, wait: float
) -> Outcome:
    """One run: cancelled, its open asks closed, and with plan.reenroll started again."""
    if target.parent:
        return Outcome(target, "skipped", f"a child of run {target.parent} (run_playbook): cancel its parent")
    try:
        if target.live:
            status, detail, closed_run = await _cancel_and_wait(client, plan, target, wait)
            if status != "cancelled":
                return Outcome(target, status, detail)
        else:
            closed_run, detail = target.run_id, "cancelled earlier by this command"
        asks = ""
        if db_url:
            tasks, approvals = await asyncio.to_thread(close_open_asks, db_url, target.workflow_id, datetime.now(UTC))
            closed = [f"{n} {what}" for n, what in ((tasks, "call task(s)"), (approvals, "approval(s)")) if n]
            asks = f"; closed {' and '.join(closed)} in the inbox" if closed else ""
        if not plan.reenroll:
            return Outcome(target, "cancelled", detail + asks)
        outcome = await _start_again(client, task_queue, plan, target, closed_run, db_url)
        outcome.detail = f"{detail}{asks}; {outcome.detail}"
        return outcome
    except Exception as err:  # noqa: BLE001 - one run's failure is reported with the others, not raised
        return Outcome(target, "failed", f"{type(err).__name__}: {err}")


async def execute(
    client: Client,
    plan: Plan,
    *,
    task_queue: str,
    db_url: str | None,
    wait: float = 60.0,
    concurrency: int = 16,
    done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Acts on every target of the plan, ``concurrency`` at a time; ``done`` is told of each as it finishes."""
    gate = asyncio.Semaphore(concurrency)

    async def one(target: Target) -> Outcome:
        async with gate:
            outcome = await act_on(client, plan, target, task_queue=task_queue, db_url=db_url, wait=wait)
        if done is not None:
            done(outcome)
        return outcome

    return list(await asyncio.gather(*(one(x) for x in plan.targets)))
