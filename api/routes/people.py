"""Approvals and call tasks: what CSMs decide and record. A CSM sees and answers only their own.

The rules (who may answer what, and every refusal) are in api/actions.py, shared with the web inbox.
"""

from __future__ import annotations

from fastapi import APIRouter

from engine.storage import models as t

from .. import actions
from ..deps import PeopleDep, StateDep
from ..problems import UPSTREAM, documented
from ..schemas import ApprovalOut, DecisionIn, DecisionOut, OutcomeIn, TaskOut

router = APIRouter(tags=["approvals and tasks"])

ERRORS = documented({
    401: "No or unknown token",
    403: "Not yours to answer",
    404: "No such approval or task",
    409: "Answered already, or the run has ended",
    422: "Not a valid answer",
    **UPSTREAM,
})
WITH_BODY = {**ERRORS, **documented({400: "The body is not JSON"})}


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


@router.get(
    "/approvals", response_model=list[ApprovalOut], summary="Pending approvals the caller may decide", responses=ERRORS
)
def list_approvals(state: StateDep, caller: PeopleDep) -> list[ApprovalOut]:
    return [_approval_out(a) for a in actions.pending_approvals(state.settings.db_url, caller)]


@router.post("/approvals/{approval_id}", response_model=DecisionOut, summary="Approve or reject", responses=WITH_BODY)
async def decide(approval_id: str, body: DecisionIn, state: StateDep, caller: PeopleDep) -> DecisionOut:
    result = await actions.decide(state.settings.db_url, state.client, caller, approval_id, body)
    return DecisionOut(id=result.approval_id, decision=result.decision)


@router.get("/tasks", response_model=list[TaskOut], summary="Open call tasks of the caller", responses=ERRORS)
def list_tasks(state: StateDep, caller: PeopleDep) -> list[TaskOut]:
    return [_task_out(x) for x in actions.open_tasks(state.settings.db_url, caller)]


@router.post(
    "/tasks/{task_id}/outcome", response_model=TaskOut, summary="Record a call task's outcome", responses=WITH_BODY
)
async def record_outcome(task_id: str, body: OutcomeIn, state: StateDep, caller: PeopleDep) -> TaskOut:
    return _task_out(await actions.record_outcome(state.settings.db_url, state.client, caller, task_id, body.outcome))
