"""What an event from the product does: upsert the account, start the playbooks it triggers, reach live runs.

Temporal does the bookkeeping: a run's workflow id is its playbook and enrollment key, so "one live
run per key" is Temporal's own id conflict policy, and "never again" its id reuse policy. The event id
is remembered in the engine's database, so the same event posted twice answers the same and starts
nothing new.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.crm import BuiltinCrm, seed
from engine.interpreter.messages import EVENT_SIGNAL, WORKFLOW_NAME, Event, RunInput
from engine.language import expressions as ex
from engine.language.model import Playbook
from engine.storage import models as t
from engine.storage.db import session

from .runs import search_attributes


@dataclass
class StartedRun:
    playbook: str
    run_id: str
    status: str  # started | already_running | already_enrolled | not_matched | invalid_key


@dataclass
class EventAnswer:
    event_id: str
    runs: list[StartedRun] = field(default_factory=list)
    delivered_to: list[str] = field(default_factory=list)
    duplicate: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def trigger_matches(playbook: Playbook, event: Event, account: dict[str, Any]) -> bool:
    trigger = playbook.trigger
    if trigger.type != "event" or trigger.event != event.type:
        return False
    if trigger.when is None:
        return True
    context = {"event": event_dict(event), "account": account}
    try:
        return bool(ex.evaluate(trigger.when, context))
    except ex.ExpressionError:
        return False  # a trigger whose condition cannot be evaluated for this event does not start


def event_dict(e: Event) -> dict[str, Any]:
    return {"type": e.type, "data": e.data, "id": e.id, "occurred_at": e.occurred_at, "account_id": e.account_id}


def enrollment_key(playbook: Playbook, event: Event, account: dict[str, Any], contacts: list[dict[str, Any]]) -> str:
    context = {"account": account, "event": event_dict(event), "contact": contacts[0] if contacts else {}}
    return str(ex.render(playbook.enrollment.key, context)).strip()


async def start_enrolled(
    client: Client, task_queue: str, playbook: Playbook, account_id: str, key: str, event: Event | None
) -> StartedRun:
    """Starts a run keyed by playbook and enrollment key, honouring `reenroll`."""
    reenroll = playbook.enrollment.reenroll
    if reenroll == "always":
        workflow_id = f"{playbook.id}/{key}/{event.id if event else 'manual'}"
    else:
        workflow_id = f"{playbook.id}/{key}"
    reuse = {
        "never": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "after_exit": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        "always": WorkflowIDReusePolicy.REJECT_DUPLICATE,
    }[reenroll]
    try:
        await client.start_workflow(
            WORKFLOW_NAME,
            RunInput(playbook=playbook, account_id=account_id, event=event),
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=reuse,
            # a live run for this key is left alone: one live run per enrollment key
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo={"playbook_id": playbook.id, "version": playbook.version, "account_id": account_id, "title": playbook.title},
            search_attributes=search_attributes(playbook, account_id),
        )
    except WorkflowAlreadyStartedError:
        try:
            description = await client.get_workflow_handle(workflow_id).describe()
            running = description.status == WorkflowExecutionStatus.RUNNING
        except RPCError:
            running = False
        return StartedRun(playbook.id, workflow_id, "already_running" if running else "already_enrolled")
    return StartedRun(playbook.id, workflow_id, "started")


async def deliver(client: Client, event: Event) -> list[str]:
    """Signals the event to every live run of the account (they decide: wait_for, exit_when, or ignore)."""
    delivered = []
    query = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running' AND AccountId = '{_quote(event.account_id or '')}'"
    async for wf in client.list_workflows(query):
        try:
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).signal(EVENT_SIGNAL, event)
            delivered.append(wf.id)
        except RPCError:
            continue  # it ended meanwhile
    return delivered


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def remembered(db_url: str, event_id: str) -> EventAnswer | None:
    with session(db_url) as s:
        row = s.get(t.ReceivedEvent, event_id)
        if row is None:
            return None
        answer = row.answer
    return EventAnswer(
        event_id=event_id,
        runs=[StartedRun(**r) for r in answer.get("runs", [])],
        delivered_to=list(answer.get("delivered_to", [])),
        duplicate=True,
    )


def remember(db_url: str, event: Event, answer: EventAnswer) -> None:
    with session(db_url) as s:
        if s.get(t.ReceivedEvent, event.id) is None:
            s.add(
                t.ReceivedEvent(
                    id=event.id, type=event.type, account_id=event.account_id or "",
                    received_at=datetime.now(timezone.utc), answer=answer.as_json(),
                )
            )


async def take_event(
    client: Client,
    task_queue: str,
    db_url: str,
    library: dict[str, Playbook],
    event: Event,
    account: dict[str, Any] | None = None,
    contacts: list[dict[str, Any]] | None = None,
) -> EventAnswer:
    """The whole of POST /events: idempotent by event id."""
    if event.id:
        seen = remembered(db_url, event.id)
        if seen is not None:
            return seen
    account_id = event.account_id or ""
    if account or contacts:
        seed(db_url, {**(account or {}), "id": account_id}, list(contacts or []), [])
    crm = BuiltinCrm(db_url)
    try:
        snapshot = crm.get_account(account_id)
        account_data, contact_data = snapshot.account, snapshot.contacts
    except Exception:  # noqa: BLE001 - an unknown account still gets its event delivered; triggers see only its id
        account_data, contact_data = {"id": account_id, "owner": None}, []
    answer = EventAnswer(event_id=event.id or "")
    # Live runs first: an event that starts a playbook is its trigger, not something it waits for.
    answer.delivered_to = await deliver(client, event)
    for playbook in library.values():
        if not trigger_matches(playbook, event, account_data):
            continue
        try:
            key = enrollment_key(playbook, event, account_data, contact_data)
        except ex.ExpressionError:
            answer.runs.append(StartedRun(playbook.id, "", "invalid_key"))
            continue
        answer.runs.append(await start_enrolled(client, task_queue, playbook, account_id, key, event))
    if event.id:
        remember(db_url, event, answer)
    return answer


def select_accounts(db_url: str) -> list[str]:
    with session(db_url) as s:
        return list(s.scalars(select(t.Account.id)))
