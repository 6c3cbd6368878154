"""What CSMs decide and record, for the JSON API (routes/people.py) and the web inbox (routes/inbox.py) alike.

Who may see and answer what, and every refusal, live here once: a refusal is a Problem (403 not yours,
404 unknown, 409 answered already or the run has ended, 422 not a valid answer) that the JSON API turns
into a problem-details body and the inbox into a message.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from engine.interpreter.messages import DECIDE_UPDATE, OUTCOME_UPDATE, Decision, DecisionResult, Outcome
from engine.storage import models as t
from engine.storage.db import session

from .problems import Problem
from .schemas import DecisionIn
from .security import Caller

EDITABLE = frozenset({"subject", "body"})


def who(caller: Caller) -> str:
    """How a decision or outcome is signed in the run's history."""
    return caller.csm_id or f"ops:{caller.name}"


def pending_approvals(db_url: str, caller: Caller) -> list[t.Approval]:
    """Pending approvals the caller may decide: ops all of them, a CSM those naming them as approver."""
    with session(db_url) as s:
        rows = s.scalars(select(t.Approval).where(t.Approval.status == "pending").order_by(t.Approval.id)).all()
    return [a for a in rows if caller.is_ops or caller.csm_id in a.approvers]


def open_tasks(db_url: str, caller: Caller) -> list[t.CallTask]:
    """Open call tasks of the caller: ops all of them, a CSM those assigned to them."""
    with session(db_url) as s:
        rows = s.scalars(select(t.CallTask).where(t.CallTask.status == "open").order_by(t.CallTask.id)).all()
    return [x for x in rows if caller.is_ops or caller.csm_id == x.assignee]


def works_on(db_url: str, caller: Caller, account_id: str) -> bool:
    """Whether a CSM has something of the account in their inbox: a pending approval naming them, or an open call
    task assigned to them (the accounts whose score their inbox cards show)."""
    if caller.csm_id is None:
        return False
    with session(db_url) as s:
        if s.scalar(select(t.CallTask.id).where(t.CallTask.account_id == account_id, t.CallTask.status == "open",
                                                t.CallTask.assignee == caller.csm_id).limit(1)) is not None:
            return True
        approvers = s.scalars(select(t.Approval.approvers).where(t.Approval.account_id == account_id,
                                                                 t.Approval.status == "pending")).all()
    return any(caller.csm_id in names for names in approvers)


def approval(db_url: str, approval_id: str) -> t.Approval | None:
    with session(db_url) as s:
        return s.scalar(select(t.Approval).where(t.Approval.approval_id == approval_id))


def task(db_url: str, task_id: str) -> t.CallTask | None:
    with session(db_url) as s:
        return s.scalar(select(t.CallTask).where(t.CallTask.task_id == task_id))


NOT_WAITING_YET = ("is not pending in this run", "is not waiting for an outcome in this run")


async def _answer(client: Client, workflow_id: str, update: str, arg: Any, result_type: type) -> Any:
    """Sends an answer through the run's update; the run refusing it, or having ended, is a 409 with the reason.

    The task or approval row is written by an activity a moment before the run starts waiting on it (the run
    learns the id when the activity completes). An answer in that gap is refused as "not waiting", though the
    inbox already shows it: such a refusal is retried for a few seconds; any other is final.
    """
    delay = 0.1
    for attempt in range(6):
        try:
            return await client.get_workflow_handle(workflow_id).execute_update(update, arg, result_type=result_type)
        except WorkflowUpdateFailedError as err:
            if attempt == 5 or not any(text in _update_refusal(err) for text in NOT_WAITING_YET):
                raise Problem(409, "Conflict", _update_refusal(err)) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise Problem(409, "Conflict", f"the run {workflow_id} has ended") from None
            raise
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


async def decide(db_url: str, client: Client, caller: Caller, approval_id: str, body: DecisionIn) -> DecisionResult:
    """Approves or rejects through the waiting run's update; edits change the draft email's subject and body."""
    row = approval(db_url, approval_id)
    if row is None:
        raise Problem(404, "Not Found", f"no approval {approval_id}")
    if not caller.is_ops and caller.csm_id not in row.approvers:
        deciders = ", ".join(row.approvers) or "ops"
        raise Problem(403, "Forbidden", f"approval {approval_id} is for {deciders}, not {caller.csm_id}")
    if row.status != "pending":
        raise Problem(409, "Conflict", f"approval {approval_id} is {row.status} already")
    if body.edits and not row.draft:
        raise Problem(422, "Invalid request", "only an email draft can be edited; this approval has none")
    if body.edits and set(body.edits) - EDITABLE:
        raise Problem(422, "Invalid request", "edits may change subject and body only")
    decision = Decision(
        decision=body.decision, by=who(caller), approval_id=approval_id, comment=body.comment,
        edits=dict(body.edits.items()) if body.edits else None, admin=caller.is_ops,
    )
    return await _answer(client, row.workflow_id, DECIDE_UPDATE, decision, DecisionResult)


async def record_outcome(db_url: str, client: Client, caller: Caller, task_id: str, outcome: str) -> t.CallTask:
    """Records a call task's outcome; returns the task as it is now (done, with the outcome)."""
    row = task(db_url, task_id)
    if row is None:
        raise Problem(404, "Not Found", f"no task {task_id}")
    if not caller.is_ops and caller.csm_id != row.assignee:
        raise Problem(403, "Forbidden", f"task {task_id} is {row.assignee}'s, not {caller.csm_id}'s")
    if row.status != "open":
        raise Problem(409, "Conflict", f"task {task_id} is {row.status} already (outcome {row.outcome})")
    if row.outcomes and outcome not in row.outcomes:
        raise Problem(422, "Invalid request", f"outcome must be one of {', '.join(row.outcomes)}, not {outcome!r}")
    if row.wait:
        # The run waits for this outcome: it records it (and closes the task) through its update.
        answer = Outcome(outcome=outcome, by=who(caller), task_id=task_id, admin=caller.is_ops)
        await _answer(client, row.workflow_id, OUTCOME_UPDATE, answer, str)
        row.status, row.outcome = "done", outcome
        return row
    with session(db_url) as s:
        fresh = s.scalar(select(t.CallTask).where(t.CallTask.task_id == task_id, t.CallTask.status == "open"))
        if fresh is None:
            raise Problem(409, "Conflict", f"task {task_id} was answered meanwhile")
        fresh.status, fresh.outcome = "done", outcome
        fresh.completed_by, fresh.completed_at = who(caller), datetime.now(UTC)
        return fresh


def _update_refusal(err: WorkflowUpdateFailedError) -> str:
    return str(getattr(err.cause, "message", None) or err.cause or err)
