"""What an event from the product does: upsert the account, start the playbooks it triggers, reach live runs.

Temporal does the bookkeeping: a run's workflow id is its playbook and enrollment key, so "one live
run per key" is Temporal's own id conflict policy, and "never again" its id reuse policy. The event id
is remembered in the engine's database, so the same event posted twice answers the same and starts
nothing new.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.crm import csm_exists, read_account, write_account
from activities.types import AccountSnapshot
from engine.interpreter.messages import EVENT_SIGNAL, WORKFLOW_NAME, Event, event_context
from engine.language import expressions as ex
from engine.language.model import Playbook, WaitForStep
from engine.storage import models as t
from engine.storage.db import session

from .runs import ACCOUNT_ID, start_run


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


def trigger_refusal(playbook: Playbook, event: Event, account: dict[str, Any]) -> str | None:
    """Why the event does not start the playbook; None when it does.

    A trigger whose condition cannot be evaluated for this event (a missing field) does not start.
    """
    trigger = playbook.trigger
    if trigger.type != "event" or trigger.event != event.type:
        return f"the trigger does not listen to {event.type}"
    if trigger.when is None:
        return None
    try:
        if not ex.evaluate(trigger.when, {"event": event_context(event), "account": account}):
            return f"trigger when is false: {trigger.when}"
    except ex.ExpressionError as err:
        return f"trigger when failed: {err}"
    return None


def trigger_matches(playbook: Playbook, event: Event, account: dict[str, Any]) -> bool:
    return trigger_refusal(playbook, event, account) is None


def enrollment_key(playbook: Playbook, event: Event, account: dict[str, Any], contacts: list[dict[str, Any]]) -> str:
    context = {"account": account, "event": event_context(event), "contact": contacts[0] if contacts else {}}
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
        await start_run(
            client, task_queue, playbook, account_id, event, workflow_id=workflow_id, id_reuse_policy=reuse,
            # a live run for this key is left alone: one live run per enrollment key
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        try:
            description = await client.get_workflow_handle(workflow_id).describe()
            running = description.status == WorkflowExecutionStatus.RUNNING
        except RPCError:
            running = False
        return StartedRun(playbook.id, workflow_id, "already_running" if running else "already_enrolled")
    return StartedRun(playbook.id, workflow_id, "started")


LiveRun = tuple[str, str]  # workflow id, run id


class _LiveRunLookup:
    """The live runs of accounts, from Temporal's visibility store, for the events being taken at the moment.

    One list query per event cost the Temporal server half as much again as the start itself. Here an event that
    finds a query under way waits for the next one, which asks for every account waiting by then (AccountId IN
    (...)): alone, an event gets its own query at once; under load, one query serves many. The wait hides behind
    the starts, which take longer than a query. Each answer is what a query of its own, made after the event
    arrived, would have said.
    """

    MAX_IN_FLIGHT = 1
    MAX_ACCOUNTS = 100  # per query

    def __init__(self, client: Client) -> None:
        self.client = client
        self.waiting: dict[str, list[asyncio.Future[list[LiveRun]]]] = {}
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    async def of(self, account_id: str) -> list[LiveRun]:
        future: asyncio.Future[list[LiveRun]] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(account_id, []).append(future)
        if self.in_flight < self.MAX_IN_FLIGHT:
            self.in_flight += 1
            task = asyncio.create_task(self._serve())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _serve(self) -> None:
        try:
            while self.waiting:
                batch = {k: self.waiting.pop(k) for k in list(self.waiting)[: self.MAX_ACCOUNTS]}
                try:
                    found = await self._query(list(batch))
                except Exception as err:  # noqa: BLE001 - each waiting event gets the error, as its own query would
                    for futures in batch.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(err)
                    continue
                for account_id, futures in batch.items():
                    for f in futures:
                        if not f.done():
                            f.set_result(list(found.get(account_id, [])))
        finally:
            self.in_flight -= 1

    async def _query(self, account_ids: list[str]) -> dict[str, list[LiveRun]]:
        accounts = ", ".join(f"'{_quote(a)}'" for a in account_ids)
        query = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running' AND AccountId IN ({accounts})"
        found: dict[str, list[LiveRun]] = {}
        async for wf in self.client.list_workflows(query):
            account_id = wf.typed_search_attributes.get(ACCOUNT_ID)
            if account_id is not None:
                found.setdefault(account_id, []).append((wf.id, wf.run_id))
        return found


_lookups: weakref.WeakKeyDictionary[Client, _LiveRunLookup] = weakref.WeakKeyDictionary()


async def live_runs(client: Client, account_id: str) -> list[LiveRun]:
    """The account's live runs (workflow id, run id)."""
    lookup = _lookups.get(client)
    if lookup is None:
        lookup = _lookups[client] = _LiveRunLookup(client)
    return await lookup.of(account_id)


async def signal_runs(client: Client, runs: list[LiveRun], event: Event) -> list[str]:
    """Signals the event to the runs (they decide: wait_for, exit_when, or ignore); the ids of those reached."""

    async def signal(workflow_id: str, run_id: str) -> str | None:
        try:
            await client.get_workflow_handle(workflow_id, run_id=run_id).signal(EVENT_SIGNAL, event)
            return workflow_id
        except RPCError:
            return None  # it ended meanwhile

    reached = await asyncio.gather(*(signal(w, r) for w, r in runs))
    return [w for w in reached if w is not None]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class UnknownOwner(ValueError):
    """The event names as the account's owner a CSM the engine does not know."""


_RECEIVED = t.ReceivedEvent.__table__
_ANSWER_OF = select(_RECEIVED.c.answer).where(_RECEIVED.c.id == bindparam("event_id"))
_REMEMBER = insert(_RECEIVED)


def before_starts(
    db_url: str, event_id: str | None, account_id: str, account: dict[str, Any] | None, contacts: list[dict[str, Any]] | None
) -> EventAnswer | AccountSnapshot:
    """The database work before an event starts anything, in one transaction: the answer it got the first time, if
    its id was seen before; else what it says about the account written (fields merged, contacts replaced) and the
    account read back as triggers see it. An account the engine does not know gets a snapshot with its id only.

    Two events creating the same account at once both find no row and both insert it: the one that loses (the
    unique id refuses it) runs again and finds the account there.
    """
    try:
        return _before_starts(db_url, event_id, account_id, account, contacts)
    except IntegrityError:
        return _before_starts(db_url, event_id, account_id, account, contacts)


def _before_starts(
    db_url: str, event_id: str | None, account_id: str, account: dict[str, Any] | None, contacts: list[dict[str, Any]] | None
) -> EventAnswer | AccountSnapshot:
    with session(db_url) as s:
        if event_id:
            answer = s.scalar(_ANSWER_OF, {"event_id": event_id})
            if answer is not None:
                return EventAnswer(
                    event_id=event_id,
                    runs=[StartedRun(**r) for r in answer.get("runs", [])],
                    delivered_to=list(answer.get("delivered_to", [])),
                    duplicate=True,
                )
        if account and account.get("owner") is not None and not csm_exists(s, account["owner"]):
            raise UnknownOwner(f"no CSM {account['owner']!r} is known to the engine")
        if account or contacts:
            write_account(s, {**(account or {}), "id": account_id}, contacts)
        snapshot = read_account(s, account_id)
    return snapshot or AccountSnapshot(account={"id": account_id, "owner": None}, contacts=[], found=False)


def remember(db_url: str, event: Event, answer: EventAnswer) -> None:
    """Keeps the event's answer under its id (the first answer stays when two posts of it raced)."""
    row = {
        "id": event.id, "type": event.type, "account_id": event.account_id or "",
        "received_at": datetime.now(timezone.utc), "answer": answer.as_json(),
    }
    try:
        with session(db_url) as s:
            s.execute(_REMEMBER, row)
    except IntegrityError:
        pass


async def take_event(
    client: Client,
    task_queue: str,
    db_url: str,
    library: dict[str, Playbook],
    event: Event,
    account: dict[str, Any] | None = None,
    contacts: list[dict[str, Any]] | None = None,
) -> EventAnswer:
    """The whole of POST /events: idempotent by event id.

    The database work (a few milliseconds of SQLite) runs in a thread, so the event loop goes on serving other
    requests meanwhile. The account's live runs are looked up while the triggered playbooks start: an event that
    starts a run is its trigger, not something it waits for, so it is delivered to every live run but those.
    """
    account_id = event.account_id or ""
    before = await asyncio.to_thread(before_starts, db_url, event.id, account_id, account, contacts)
    if isinstance(before, EventAnswer):
        return before
    account_data, contact_data = before.account, before.contacts
    answer = EventAnswer(event_id=event.id or "")
    starts: list[Any] = []  # a StartedRun already (invalid key), or the start to await
    for playbook in library.values():
        if not trigger_matches(playbook, event, account_data):
            continue
        try:
            key = enrollment_key(playbook, event, account_data, contact_data)
        except ex.ExpressionError:
            starts.append(StartedRun(playbook.id, "", "invalid_key"))
            continue
        starts.append(start_enrolled(client, task_queue, playbook, account_id, key, event))

    async def started(item: Any) -> StartedRun:
        return item if isinstance(item, StartedRun) else await item

    async def no_runs() -> list[LiveRun]:
        return []

    # Only runs that wait for (wait_for) or exit on (exit_when) this type of event need it: for any other type
    # the visibility query is skipped, which is most of what an event costs the Temporal server.
    lookup = live_runs(client, account_id) if event.type in listened_types(library) else no_runs()
    live, runs = await asyncio.gather(lookup, asyncio.gather(*(started(x) for x in starts)))
    answer.runs = list(runs)
    triggered = {r.run_id for r in answer.runs if r.status == "started"}
    answer.delivered_to = await signal_runs(client, [r for r in live if r[0] not in triggered], event)
    if event.id:
        await asyncio.to_thread(remember, db_url, event, answer)
    return answer


def listened_types(library: dict[str, Playbook]) -> frozenset[str]:
    """The event types some playbook of the library waits for or exits on."""
    key = tuple(sorted((p.id, p.version) for p in library.values()))
    cached = _listened.get(key)
    if cached is None:
        types = {rule.event for p in library.values() for rule in p.exit_when}
        types |= {s.event for p in library.values() for s in p.walk() if isinstance(s, WaitForStep)}
        cached = _listened[key] = frozenset(types)
    return cached


_listened: dict[tuple[tuple[str, str], ...], frozenset[str]] = {}
