"""Approvals and call tasks: what CSMs decide and record. A CSM sees and answers only their own."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from engine.interpreter.messages import DECIDE_UPDATE, OUTCOME_UPDATE, Decision, DecisionResult, Outcome
from engine.storage import models as t
from engine.storage.db import session

from ..deps import PeopleDep, StateDep
from ..problems import Problem
from ..schemas import ApprovalOut, DecisionIn, DecisionOut, OutcomeIn, TaskOut
from ..security import Caller

router = APIRouter(tags=["approvals and tasks"])

ERRORS = {
    401: {"description": "No or unknown token"},
    403: {"description": "Not yours to answer"},
    404: {"description": "No such approval or task"},
    409: {"description": "Answered already, or the run has ended"},
    422: {"description": "Not a valid answer"},
}


def _approval_out(a: t.Approval) -> ApprovalOut:
    return ApprovalOut(
        id=a.approval_id, run_id=a.workflow_id, playbook=a.playbook_id, account_id=a.account_id, step=a.step_id,
        message=a.message, draft=a.draft, approvers=list(a.approvers), status=a.status,
        created_at=a.created_at, due_at=a.due_at,
    )


def _task_out(x: t.CallTask) -> TaskOut:
    return TaskOut(
        id=x.task_id, run_id=x.workflow_id, playbook=x.playbook_id, account_id=x.account_id, step=x.step_id,
        assignee=x.assignee, title=x.title, notes=x.notes, outcomes=list(x.outcomes), status=x.status,
        outcome=x.outcome, created_at=x.created_at, due_at=x.due_at,
    )


def _who(caller: Caller) -> str:
    return caller.csm_id or f"ops:{caller.name}"


@router.get("/approvals", response_model=list[ApprovalOut], summary="Pending approvals the caller may decide", responses=ERRORS)
def list_approvals(state: StateDep, caller: PeopleDep) -> list[ApprovalOut]:
    with session(state.settings.db_url) as s:
        rows = s.scalars(select(t.Approval).where(t.Approval.status == "pending").order_by(t.Approval.id)).all()
    return [_approval_out(a) for a in rows if caller.is_ops or caller.csm_id in a.approvers]


@router.post("/approvals/{approval_id}", response_model=DecisionOut, summary="Approve or reject", responses=ERRORS)
async def decide(approval_id: str, body: DecisionIn, state: StateDep, caller: PeopleDep) -> DecisionOut:
    with session(state.settings.db_url) as s:
        row = s.scalar(select(t.Approval).where(t.Approval.approval_id == approval_id))
    if row is None:
        raise Problem(404, "Not Found", f"no approval {approval_id}")
    if not caller.is_ops and caller.csm_id not in row.approvers:
        raise Problem(403, "Forbidden", f"approval {approval_id} is for {', '.join(row.approvers) or 'ops'}, not {caller.csm_id}")
    if row.status != "pending":
        raise Problem(409, "Conflict", f"approval {approval_id} is {row.status} already")
    if body.edits and not row.draft:
        raise Problem(422, "Invalid request", "only an email draft can be edited; this approval has none")
    if body.edits and set(body.edits) - {"subject", "body"}:
        raise Problem(422, "Invalid request", "edits may change subject and body only")
    decision = Decision(
        decision=body.decision, by=_who(caller), approval_id=approval_id, comment=body.comment,
        edits=body.edits, admin=caller.is_ops,
    )
    try:
        result = await state.client.get_workflow_handle(row.workflow_id).execute_update(
            DECIDE_UPDATE, decision, result_type=DecisionResult
        )
    except WorkflowUpdateFailedError as err:
        raise Problem(409, "Conflict", str(getattr(err.cause, "message", None) or err.cause or err)) from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise Problem(409, "Conflict", f"the run {row.workflow_id} has ended") from None
        raise
    return DecisionOut(id=result.approval_id, decision=result.decision)


@router.get("/tasks", response_model=list[TaskOut], summary="Open call tasks of the caller", responses=ERRORS)
def list_tasks(state: StateDep, caller: PeopleDep) -> list[TaskOut]:
    with session(state.settings.db_url) as s:
        rows = s.scalars(select(t.CallTask).where(t.CallTask.status == "open").order_by(t.CallTask.id)).all()
    return [_task_out(x) for x in rows if caller.is_ops or caller.csm_id == x.assignee]


@router.post("/tasks/{task_id}/outcome", response_model=TaskOut, summary="Record a call task's outcome", responses=ERRORS)
async def record_outcome(task_id: str, body: OutcomeIn, state: StateDep, caller: PeopleDep) -> TaskOut:
    with session(state.settings.db_url) as s:
        row = s.scalar(select(t.CallTask).where(t.CallTask.task_id == task_id))
    if row is None:
        raise Problem(404, "Not Found", f"no task {task_id}")
    if not caller.is_ops and caller.csm_id != row.assignee:
        raise Problem(403, "Forbidden", f"task {task_id} is {row.assignee}'s, not {caller.csm_id}'s")
    if row.status != "open":
        raise Problem(409, "Conflict", f"task {task_id} is {row.status} already (outcome {row.outcome})")
    if row.outcomes and body.outcome not in row.outcomes:
        raise Problem(422, "Invalid request", f"outcome must be one of {', '.join(row.outcomes)}, not {body.outcome!r}")
    if row.wait:
        # The run waits for this outcome: it records it (and closes the task) through its update.
        outcome = Outcome(outcome=body.outcome, by=_who(caller), task_id=task_id, admin=caller.is_ops)
        try:
            await state.client.get_workflow_handle(row.workflow_id).execute_update(OUTCOME_UPDATE, outcome, result_type=str)
        except WorkflowUpdateFailedError as err:
            raise Problem(409, "Conflict", str(getattr(err.cause, "message", None) or err.cause or err)) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise Problem(409, "Conflict", f"the run {row.workflow_id} has ended") from None
            raise
        row.status, row.outcome = "done", body.outcome
        return _task_out(row)
    with session(state.settings.db_url) as s:
        fresh = s.scalar(select(t.CallTask).where(t.CallTask.task_id == task_id, t.CallTask.status == "open"))
        if fresh is None:
            raise Problem(409, "Conflict", f"task {task_id} was answered meanwhile")
        fresh.status, fresh.outcome = "done", body.outcome
        fresh.completed_by, fresh.completed_at = _who(caller), datetime.now(timezone.utc)
        return _task_out(fresh)
