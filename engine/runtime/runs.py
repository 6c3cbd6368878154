"""Starting, listing and reading runs through the Temporal client (used by the CLI, later the API)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from engine.interpreter.messages import STATE_QUERY, WORKFLOW_NAME, Event, RunInput, RunState
from engine.language.model import Playbook

PLAYBOOK_ID = SearchAttributeKey.for_keyword("PlaybookId")
PLAYBOOK_VERSION = SearchAttributeKey.for_keyword("PlaybookVersion")
ACCOUNT_ID = SearchAttributeKey.for_keyword("AccountId")


def search_attributes(playbook: Playbook, account_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(PLAYBOOK_ID, playbook.id),
            SearchAttributePair(PLAYBOOK_VERSION, playbook.version),
            SearchAttributePair(ACCOUNT_ID, account_id),
        ]
    )


async def start_run(
    client: Client,
    task_queue: str,
    playbook: Playbook,
    account_id: str,
    event: Event | None = None,
    *,
    workflow_id: str | None = None,
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.UNSPECIFIED,
) -> WorkflowHandle[Any, Any]:
    """Starts a run of the playbook for the account: its id, memo and search attributes say which run it is."""
    workflow_id = workflow_id or f"{playbook.id}/{account_id}/{uuid.uuid4().hex[:8]}"
    return await client.start_workflow(
        WORKFLOW_NAME,
        RunInput(playbook=playbook, account_id=account_id, event=event),
        id=workflow_id,
        task_queue=task_queue,
        id_reuse_policy=id_reuse_policy,
        id_conflict_policy=id_conflict_policy,
        memo={
            "playbook_id": playbook.id, "version": playbook.version, "account_id": account_id, "title": playbook.title
        },
        search_attributes=search_attributes(playbook, account_id),
    )


@dataclass
class RunSummary:
    id: str
    playbook: str
    version: str
    account: str
    status: str
    started_at: datetime | None
    current: list[str] = field(default_factory=list)


def _status(status: WorkflowExecutionStatus | None) -> str:
    return status.name.lower() if status else "unknown"


async def list_runs(
    client: Client,
    *,
    playbook: str | None = None,
    account: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[RunSummary]:
    query = [f"WorkflowType = '{WORKFLOW_NAME}'"]
    if playbook:
        query.append(f"PlaybookId = '{playbook}'")
    if account:
        query.append(f"AccountId = '{account}'")
    if status:
        query.append(f"ExecutionStatus = '{''.join(part.capitalize() for part in status.split('_'))}'")  # TimedOut
    runs: list[RunSummary] = []
    async for wf in client.list_workflows(" AND ".join(query), limit=limit):
        memo = await wf.memo()
        runs.append(
            RunSummary(
                id=wf.id,
                playbook=str(memo.get("playbook_id", "?")),
                version=str(memo.get("version", "?"))[:8],
                account=str(memo.get("account_id", "?")),
                status=_status(wf.status),
                started_at=wf.start_time,
            )
        )

    async def current(run: RunSummary) -> None:
        if run.status != "running":
            return
        try:
            query = client.get_workflow_handle(run.id).query(STATE_QUERY, result_type=RunState)
            state = await asyncio.wait_for(query, 5)
            run.current = state.current
        except Exception:  # noqa: BLE001 - a run without a worker to answer still lists
            run.current = ["?"]

    await asyncio.gather(*(current(r) for r in runs))
    return runs


async def run_state(client: Client, workflow_id: str) -> tuple[RunState, str]:
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    state = await handle.query(STATE_QUERY, result_type=RunState)
    return state, _status(description.status)
