"""What an event from the product does: upsert the account, start the playbooks it triggers, reach live runs.

Temporal does the bookkeeping: a run's workflow id is its playbook and enrollment key, so "one live
run per key" is Temporal's own id conflict policy, and "never again" its id reuse policy. The event id
is remembered in the engine's database, so the same event posted twice answers the same and starts
nothing new.

The account lives in the CRM of record (PLAYBOOK_CRM_PROVIDER): the event's account and contacts are upserted
there and triggers judge the account as that CRM reads it back, the same account the runs will read. With the
built-in CRM that is one transaction of the engine's database; with another (HubSpot) the CRM's calls, and the
event ids and enrolled runs stay in the engine's database.

Health scores (docs/health.md): when there are scorecards, what the event gives their measures is recorded and the
account's scores recomputed in the same transaction as the account's upsert (built-in CRM; with HubSpot, in the
engine's database after HubSpot's calls); a change that meets a scorecard's `changes` rule is the event
health.score_changed, taken here like any other once the event's own runs are started (its own id: once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.crm import (
    BuiltinCrm,
    CrmProvider,
    csm_exists,
    read_account_and_fields,
    write_account,
    write_health_fields,
)
from activities.errors import NotFoundError, ProviderError, RejectedError
from activities.types import AccountSnapshot
from engine.interpreter.messages import EVENT_SIGNAL, Event, event_context
from engine.language import expressions as ex
from engine.language.model import Playbook, WaitForStep
from engine.language.scorecard import Scorecard
from engine.storage import enrolled
from engine.storage import models as t
from engine.storage.db import session

from .health import SCORE_CHANGED, ScoreChange, crm_writes, update_for_event
from .runs import start_run

log = structlog.get_logger("intake")


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


async def start_triggered(
    client: Client, task_queue: str, playbooks: Iterable[Playbook], event: Event, account_id: str,
    account: dict[str, Any], contacts: list[dict[str, Any]],
) -> list[StartedRun]:
    """The runs of the playbooks whose trigger takes the event, started side by side, each under its enrollment key
    (a key that cannot be rendered is answered ``invalid_key``)."""
    starts: list[Any] = []  # a StartedRun already (invalid key), or the start to await
    for playbook in playbooks:
        if not trigger_matches(playbook, event, account):
            continue
        try:
            key = enrollment_key(playbook, event, account, contacts)
        except ex.ExpressionError:
            starts.append(StartedRun(playbook.id, "", "invalid_key"))
            continue
        starts.append(start_enrolled(client, task_queue, playbook, account_id, key, event))

    async def started(item: Any) -> StartedRun:
        return item if isinstance(item, StartedRun) else await item

    return list(await asyncio.gather(*(started(x) for x in starts)))


async def signal_runs(client: Client, workflow_ids: list[str], event: Event) -> tuple[list[str], list[str]]:
    """Signals the event to runs by workflow id (the live run of each id: after continue-as-new or a re-enrollment
    that is the newest); they decide: wait_for, exit_when, or ignore. The ids reached, and those that have ended."""

    async def signal(workflow_id: str) -> tuple[str, bool]:
        try:
            await client.get_workflow_handle(workflow_id).signal(EVENT_SIGNAL, event)
            return workflow_id, True
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return workflow_id, False  # it has ended
            raise

    outcomes = await asyncio.gather(*(signal(w) for w in workflow_ids))
    return [w for w, ok in outcomes if ok], [w for w, ok in outcomes if not ok]


class UnknownOwner(ValueError):
    """The event names as the account's owner a CSM the engine does not know."""


class CrmRefused(ValueError):
    """The CRM of record refused what the event says about the account (a property it does not have, an owner it
    does not know, a company it cannot create): sending the same event again will not help."""


class CrmUnavailable(Exception):
    """The CRM of record failed while the event was taken (down, slow, rate limiting, refusing the engine's
    credentials). Nothing was started and the event id is not remembered: the same event may be sent again, after
    ``retry_after`` seconds when the CRM said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_RECEIVED = t.ReceivedEvent.__table__
_ANSWER_OF = select(_RECEIVED.c.answer).where(_RECEIVED.c.id == bindparam("event_id"))
_REMEMBER = insert(_RECEIVED)


@dataclass
class Before:
    """What the database says before an event starts anything: the account as triggers see it, and the ids of the
    account's runs of the playbooks that listen for the event's type."""

    snapshot: AccountSnapshot
    listening_runs: list[str]
    health: list[ScoreChange] = field(default_factory=list)  # the scores the event changed


def before_starts(
    db_url: str, event_id: str | None, account_id: str, account: dict[str, Any] | None,
    contacts: list[dict[str, Any]] | None, listening: frozenset[str] = frozenset(),
    event: Event | None = None, scorecards: Sequence[Scorecard] = (),
) -> EventAnswer | Before:
    """The database work before an event starts anything, in one transaction: the answer it got the first time, if
    its id was seen before; else what it says about the account written (fields merged, contacts replaced), the
    account read back as triggers see it, and the account's runs of the ``listening`` playbooks. An account the
    engine does not know gets a snapshot with its id only.

    Two events creating the same account at once both find no row and both insert it: the one that loses (the
    unique id refuses it) runs again and finds the account there.

    With ``scorecards`` (and the ``event``), the account's health scores are updated in the same transaction
    (engine.runtime.health.update_for_event) and the primary scorecard's score and band written into the account's
    fields ``health_score`` and ``health_band``; two posts of one event at once count nothing twice: the unique
    (account, scorecard, measure, event id) skips the second's values (SQLite, PostgreSQL: it then answers the
    first's changes) or refuses them (elsewhere: it runs again), and two first scores of one account the primary key
    (it runs again).
    """
    try:
        return _before_starts(db_url, event_id, account_id, account, contacts, listening, event, scorecards)
    except IntegrityError:
        return _before_starts(db_url, event_id, account_id, account, contacts, listening, event, scorecards)


def _before_starts(
    db_url: str, event_id: str | None, account_id: str, account: dict[str, Any] | None,
    contacts: list[dict[str, Any]] | None, listening: frozenset[str], event: Event | None = None,
    scorecards: Sequence[Scorecard] = (),
) -> EventAnswer | Before:
    with session(db_url) as s:
        if event_id and (seen := _answer_of(s, event_id)) is not None:
            return seen
        if account and account.get("owner") is not None and not csm_exists(s, account["owner"]):
            raise UnknownOwner(f"no CSM {account['owner']!r} is known to the engine")
        if account or contacts:
            write_account(s, {**(account or {}), "id": account_id}, contacts)
        snapshot, fields = read_account_and_fields(s, account_id)
        runs = enrolled.run_ids(s, account_id, listening)
        health: list[ScoreChange] = []
        if scorecards and event is not None and snapshot is not None and fields is not None:
            health = update_for_event(
                s, snapshot.account, event, scorecards, datetime.now(UTC), fields_changed=bool(account)
            )
            write_health_fields(s, crm_writes(health), {account_id: fields})
    snapshot = snapshot or AccountSnapshot(account={"id": account_id, "owner": None}, contacts=[], found=False)
    return Before(snapshot, runs, health)


def before_starts_in(
    crm: CrmProvider, db_url: str, event_id: str | None, account_id: str, account: dict[str, Any] | None,
    contacts: list[dict[str, Any]] | None, listening: frozenset[str] = frozenset(),
    event: Event | None = None, scorecards: Sequence[Scorecard] = (),
) -> EventAnswer | Before:
    """before_starts for a CRM of record other than the built-in one: the answer of an event seen before (the
    engine's database); else the account and contacts upserted in the CRM, the account read back from it as the
    runs will read it (one the CRM does not have: its id only), and the account's runs of the ``listening``
    playbooks (the engine's database). Synchronous (the providers are): call it in a thread.

    Raises CrmRefused when the CRM refuses the event's data, CrmUnavailable when it fails otherwise; either way
    nothing is remembered, and an upsert that did land is written the same again when the event is sent again.

    Health scores are kept in the engine's database (a transaction of their own after the CRM's calls: not one with
    the upsert, which HubSpot has already made) and the primary score and band written to the CRM afterwards; a
    failure of that write is logged, not raised (the event is taken; the next change or night writes them again).
    """
    if event_id:
        with session(db_url) as s:
            seen = _answer_of(s, event_id)
        if seen is not None:
            return seen
    try:
        if account or contacts:
            crm.upsert_account({**(account or {}), "id": account_id}, contacts, datetime.now(UTC))
    except (RejectedError, NotFoundError) as err:
        raise CrmRefused(f"the CRM ({crm.name}) refused the account: {err.message}") from err
    except ProviderError as err:
        raise _unavailable(crm, "writing", err) from err
    try:
        snapshot = crm.get_account(account_id)
    except NotFoundError:
        snapshot = AccountSnapshot(account={"id": account_id, "owner": None}, contacts=[], found=False)
    except ProviderError as err:
        raise _unavailable(crm, "reading", err) from err
    health: list[ScoreChange] = []
    with session(db_url) as s:
        runs = enrolled.run_ids(s, account_id, listening)
    if scorecards and event is not None and snapshot.found:
        health = _health_in_engine(db_url, snapshot.account, event, scorecards, fields_changed=bool(account))
    if writes := crm_writes(health):
        try:
            crm.write_health(writes, datetime.now(UTC))
        except ProviderError as err:
            log.warning("the CRM did not take the health scores", provider=crm.name, error=err.message,
                        accounts=[w.account_id for w in writes])
    return Before(snapshot, runs, health)


def _health_in_engine(
    db_url: str, account: dict[str, Any], event: Event, scorecards: Sequence[Scorecard], fields_changed: bool
) -> list[ScoreChange]:
    """update_for_event in a transaction of its own (a CRM other than the built-in one); run again once when a
    concurrent post of the same event, or another first score of the account, wins a unique key."""
    for attempt in (1, 2):
        try:
            with session(db_url) as s:
                return update_for_event(s, account, event, scorecards, datetime.now(UTC), fields_changed=fields_changed)
        except IntegrityError:
            if attempt == 2:
                raise
    return []


def _unavailable(crm: CrmProvider, doing: str, err: ProviderError) -> CrmUnavailable:
    return CrmUnavailable(f"the CRM ({crm.name}) failed {doing} the account: {err.message}", err.retry_after)


def _answer_of(s: Session, event_id: str) -> EventAnswer | None:
    """The answer the event got the first time, if its id was seen before."""
    answer = s.scalar(_ANSWER_OF, {"event_id": event_id})
    if answer is None:
        return None
    return EventAnswer(
        event_id=event_id,
        runs=[StartedRun(**r) for r in answer.get("runs", [])],
        delivered_to=list(answer.get("delivered_to", [])),
        duplicate=True,
    )


def remember(db_url: str, event: Event, answer: EventAnswer, ended: Sequence[str] = (),
             unused: Sequence[Event] = ()) -> None:
    """Records the runs the event started (so the next event reaches them by id), forgets those it found ended, and
    keeps the event's answer under its id (the first answer stays when two posts of it raced). ``unused``: events
    it caused that no playbook triggers on, waits for or exits on (health.score_changed when the library does not
    use it): taken by keeping their ids with an empty answer, in the same transaction as the event's."""
    now = datetime.now(UTC)
    started = [(r.run_id, event.account_id or "", r.playbook) for r in answer.runs if r.status == "started"]
    if started or ended:  # most events start nothing and find nothing ended: no transaction for them
        with session(db_url) as s:
            enrolled.register(s, started, now)
            enrolled.forget(s, ended)
    rows = [{"id": e.id, "type": e.type, "account_id": e.account_id or "", "received_at": now,
             "answer": EventAnswer(event_id=e.id or "").as_json()} for e in unused if e.id]
    if event.id:
        rows.append({"id": event.id, "type": event.type, "account_id": event.account_id or "", "received_at": now,
                     "answer": answer.as_json()})
    if not rows:
        return
    try:
        with session(db_url) as s:
            s.execute(_REMEMBER, rows)
        return
    except IntegrityError:
        if len(rows) == 1:
            return
    for row in rows:  # one of them was there already (a retry, a race): each on its own, the first answer stays
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
    crm: CrmProvider | None = None,
    scorecards: Sequence[Scorecard] = (),
) -> EventAnswer:
    """The whole of POST /events: idempotent by event id.

    ``crm`` is the CRM of record (None: the built-in one in ``db_url``). The database work (a few milliseconds of
    SQLite) and the CRM's calls run in a thread, so the event loop goes on serving other requests meanwhile. The
    account's live runs are looked up while the triggered playbooks start: an event that starts a run is its
    trigger, not something it waits for, so it is delivered to every live run but those.

    ``scorecards``: the health scorecards (none: health scores off). The health.score_changed events of the scores
    the event changed are taken (this same function) after its runs are started and reached, before the event is
    remembered: if one fails, the event is not remembered either, and sending it again sends them (by id: once).
    """
    account_id = event.account_id or ""
    listening = listeners(library).get(event.type, frozenset())
    if crm is None or (isinstance(crm, BuiltinCrm) and crm.db_url == db_url):
        # the built-in CRM: dedupe, upsert, read back and the listening runs in one transaction
        before = await asyncio.to_thread(
            before_starts, db_url, event.id, account_id, account, contacts, listening, event, scorecards
        )
    else:
        before = await asyncio.to_thread(
            before_starts_in, crm, db_url, event.id, account_id, account, contacts, listening, event, scorecards
        )
    if isinstance(before, EventAnswer):
        return before
    account_data, contact_data = before.snapshot.account, before.snapshot.contacts
    answer = EventAnswer(event_id=event.id or "")
    answer.runs = await start_triggered(
        client, task_queue, library.values(), event, account_id, account_data, contact_data
    )
    # The event reaches the account's runs of the playbooks that wait for (wait_for) or exit on (exit_when) its
    # type, by workflow id; not the run it has just started, whose trigger it is.
    triggered = {r.run_id for r in answer.runs if r.status == "started"}
    reach = [w for w in before.listening_runs if w not in triggered]
    answer.delivered_to, ended = await signal_runs(client, reach, event)
    unused: list[Event] = []
    for change in before.health:
        if not change.notable:
            continue
        if not uses(library, SCORE_CHANGED):
            unused.append(change.event())  # it would start nothing and reach no run: only its id is kept
            continue
        await take_event(client, task_queue, db_url, library, change.event(), crm=crm, scorecards=scorecards)
    if event.id or triggered or ended or unused:
        await asyncio.to_thread(remember, db_url, event, answer, ended, unused)
    return answer


def uses(library: dict[str, Playbook], event_type: str) -> bool:
    """Whether a playbook of the library triggers on, waits for or exits on events of this type."""
    return event_type in listeners(library) or any(
        p.trigger.type == "event" and p.trigger.event == event_type for p in library.values()
    )


def listeners(library: dict[str, Playbook]) -> dict[str, frozenset[str]]:
    """Event type -> the ids of the playbooks that wait for (wait_for) or exit on (exit_when) it."""
    key = tuple(sorted((p.id, p.version) for p in library.values()))
    cached = _listeners.get(key)
    if cached is None:
        found: dict[str, set[str]] = {}
        for p in library.values():
            types = {rule.event for rule in p.exit_when} | {s.event for s in p.walk() if isinstance(s, WaitForStep)}
            for type_ in types:
                found.setdefault(type_, set()).add(p.id)
        cached = _listeners[key] = {k: frozenset(v) for k, v in found.items()}
    return cached


_listeners: dict[tuple[tuple[str, str], ...], dict[str, frozenset[str]]] = {}
