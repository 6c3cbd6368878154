"""Runs (start by hand, list, read, cancel) and playbooks (list, validate)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from temporalio.service import RPCError, RPCStatusCode

from engine.interpreter.messages import Event
from engine.language.validator import validate_playbook_text
from engine.runtime import runs as run_service

from ..deps import OpsDep, StateDep
from ..problems import UPSTREAM, Problem, documented
from ..schemas import PlaybookOut, ProblemOut, RunDetailOut, RunOut, RunStartIn, TimelineOut, ValidateIn, ValidationOut

router = APIRouter(tags=["runs and playbooks"])
ERRORS = documented({401: "No or unknown token", 403: "Needs an ops token", 404: "No such run or playbook",
                     409: "Conflict", 422: "Not a valid request", **UPSTREAM})
WITH_BODY = {**ERRORS, **documented({400: "The body is not JSON"})}
Status = Literal["running", "completed", "failed", "canceled", "terminated", "timed_out"]


@router.get("/runs", response_model=list[RunOut], summary="List runs", responses=ERRORS)
async def list_runs(
    state: StateDep,
    _caller: OpsDep,
    playbook: str | None = Query(default=None, max_length=200, pattern=r"^[a-z0-9-]+$"),
    account: str | None = Query(default=None, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$"),
    status: Status | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[RunOut]:
    runs = await run_service.list_runs(state.client, playbook=playbook, account=account, status=status, limit=limit)
    return [RunOut(id=r.id, playbook=r.playbook, version=r.version, account=r.account, status=r.status,
                   started_at=r.started_at, current=r.current) for r in runs]


@router.get(
    "/runs/{run_id:path}", response_model=RunDetailOut, summary="A run: version, status and timeline", responses=ERRORS
)
async def get_run(run_id: str, state: StateDep, _caller: OpsDep) -> RunDetailOut:
    try:
        handle = state.client.get_workflow_handle(run_id)
        description = await handle.describe()
        run_state, status = await run_service.run_state(state.client, run_id)
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise Problem(404, "Not Found", f"no run {run_id}") from None
        raise
    return RunDetailOut(
        id=run_id, playbook=run_state.playbook_id, version=run_state.version, account=run_state.account_id,
        status=status, started_at=description.start_time, current=run_state.current,
        timeline=[TimelineOut(at=e.at, step=e.step_id or e.path, kind=e.kind, status=e.status, detail=e.detail)
                  for e in run_state.timeline],
        pending=[{"kind": p.kind, "id": p.id, "step": p.step_id, "for": p.deciders} for p in run_state.pending],
    )


@router.post("/runs", response_model=RunOut, status_code=201, summary="Start a run by hand", responses=WITH_BODY)
async def start_run(body: RunStartIn, state: StateDep, _caller: OpsDep) -> RunOut:
    playbook = state.library.get(body.playbook)
    if playbook is None:
        raise Problem(404, "Not Found", f"no valid playbook {body.playbook!r} in the library")
    event = None
    if body.event:
        occurred_at = body.event.occurred_at.isoformat() if body.event.occurred_at else None
        event = Event(type=body.event.type, data=body.event.data, id=body.event.id, occurred_at=occurred_at,
                      account_id=body.account_id)
    handle = await run_service.start_run(state.client, state.settings.task_queue, playbook, body.account_id, event)
    return RunOut(id=handle.id, playbook=playbook.id, version=playbook.version[:8], account=body.account_id,
                  status="running", started_at=None)


@router.post("/runs/{run_id:path}/cancel", status_code=202, summary="Cancel a live run", responses=ERRORS)
async def cancel_run(run_id: str, state: StateDep, _caller: OpsDep) -> dict[str, str]:
    try:
        await state.client.get_workflow_handle(run_id).cancel()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise Problem(404, "Not Found", f"no live run {run_id}") from None
        raise
    return {"id": run_id, "status": "cancel requested"}


@router.get("/playbooks", response_model=list[PlaybookOut], summary="The library's valid playbooks", responses=ERRORS)
def list_playbooks(state: StateDep, _caller: OpsDep) -> list[PlaybookOut]:
    out = []
    for p in state.library.values():
        trigger = {"event": p.trigger.event, "schedule": p.trigger.cron}.get(p.trigger.type, "manual")
        out.append(PlaybookOut(id=p.id, title=p.title, version=p.version, trigger=f"{p.trigger.type}: {trigger}",
                               steps=sum(1 for _ in p.walk())))
    return out


@router.post(
    "/playbooks/validate", response_model=ValidationOut, summary="Validate a playbook's text", responses=WITH_BODY
)
def validate(body: ValidateIn, state: StateDep, _caller: OpsDep) -> ValidationOut:
    # against the library's messaging policy: its categories are the ones an email step may name
    result = validate_playbook_text(body.text, body.file, state.policy)
    return ValidationOut(
        valid=not result.problems,
        problems=[
            ProblemOut(file=p.file, line=p.line, column=p.column, message=p.message, rule=p.rule)
            for p in result.problems
        ],
    )
