"""`playbook diff --live`: every live run of a playbook, replayed on the old and the new version.

Each live (Running) run of the playbook is read from its Temporal history (through the client's data converter,
so encrypted histories read as the workers read them): the input it started with (trigger event, input, account
id), the account as its first activity loaded it, the events it received and the answers people gave it, each with
its offset from the run's start. Every run is then replayed twice in one time-skipping Temporal server, with the
real interpreter and activities over the embedded providers on SQLite (one database per side): on its own version
(the OLD model when the run is pinned to it; else the model it started with, a "third" version) and on the NEW
version. Both replays start at the run's own start moment (``RunInput.clock_offset`` shifts the workflow clock)
with the account as it was loaded; events arrive at their offsets and answers the same time after their ask as in
the live run (the scenario driver plays them), up to the run's age now. What each replay did by then is compared:
the path (step statuses, switch/split/approval/wait_for choices), the emails and call tasks (recipients counted,
subjects, templates and bodies compared, no address or body shown), and where it stands (status, current steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.testing import WorkflowEnvironment

from activities import types as act
from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.library import LibraryActivities
from activities.playbook_activities import PlaybookActivities
from engine.interpreter.messages import (
    DECIDE_UPDATE,
    EVENT_SIGNAL,
    OUTCOME_UPDATE,
    STATE_QUERY,
    WORKFLOW_NAME,
    Decision,
    Event,
    Outcome,
    RunInput,
    RunResult,
    RunState,
    TimelineEntry,
)
from engine.language.diff import step_names
from engine.language.model import Playbook
from engine.runtime.connect import quiet_runtime
from engine.runtime.runs import ACCOUNT_ID, PLAYBOOK_VERSION
from engine.runtime.workers import build_worker
from engine.storage import models as t
from engine.storage.db import migrate, session

from .driver import ASKED_SIGNAL, DRIVER_NAME, Asked, DriverActivities, DriverInput, ScenarioDriver
from .scenarios import SAME_MOMENT, failed_result, offset_text, test_server_path

DEFAULT_LIMIT = 500
READ_CONCURRENCY = 8  # histories read at once from the live cluster
START_CONCURRENCY = 16  # replays started at once on the test server
READ_TIMEOUT = 60.0  # seconds a replay has to say where it stands (a worker flooded, a query stuck)
BATCH = 25  # runs replayed together (each twice): started, then read at their ages, before the next batch starts
IN_PROGRESS = frozenset({"started", "waiting"})
FINISHED = frozenset({"done", "skipped", "failed", "not_run"})
KINDS = ("path", "emails", "now")  # what may differ for a run, in report order
KIND_TEXT = {
    "path": "would take another path",
    "emails": "would send other emails or tasks",
    "now": "would stand elsewhere now",
}


# ------------------------------------------------------------------ what a live run's history holds


@dataclass
class Given:
    """Something the run received: an event at an offset, or a person's answer some time after its ask."""

    kind: str  # event | decision | outcome
    at: float  # seconds after the run's start
    payload: dict[str, Any]
    ask: str | None = None  # decision/outcome: the ask's key below the run (e.g. "steps.2/approval")
    after: float = 0.0  # decision/outcome: seconds after the ask was made


@dataclass
class LiveRun:
    workflow_id: str
    run_id: str | None = None
    version: str = ""
    account_id: str = ""
    started_at: datetime | None = None  # on the run's own clock
    age: float = 0.0  # seconds from its start to now
    playbook: Playbook | None = None  # the model it started with (its input)
    event: Event | None = None
    input: dict[str, Any] = field(default_factory=dict)
    snapshot: act.AccountSnapshot | None = None
    given: list[Given] = field(default_factory=list)
    effects: Counter[str] = field(default_factory=Counter)  # what the live run did: "email <step>" -> count
    problem: str | None = None  # why it cannot be replayed


class LiveError(Exception):
    """The live runs cannot be listed (one line; the command exits 2)."""


class HistoryProblem(Exception):
    """A history this module cannot replay from (one line)."""


def _time(e: HistoryEvent) -> datetime:
    return e.event_time.ToDatetime(tzinfo=UTC)


def _tail(key: str, workflow_id: str) -> str:
    """An effect's key without the run's own part: "<workflow id>/<first run id>/<step path>..." -> "<step path>..."."""
    rest = key[len(workflow_id) + 1 :] if key.startswith(workflow_id + "/") else key
    return rest.split("/", 1)[1] if "/" in rest else rest


_PATH = re.compile(r"[^\[/]+")


def _step_path(tail: str) -> str:
    found = _PATH.match(tail)
    return found.group(0) if found else tail


async def _decode(client: Client, payloads: Sequence[Payload], hint: type) -> Any:
    if not payloads:
        raise HistoryProblem(f"no {hint.__name__} payload")
    return (await client.data_converter.decode(list(payloads), [hint]))[0]


async def _histories(client: Client, workflow_id: str, run_id: str | None) -> list[list[HistoryEvent]]:
    """The histories of the run's chain, first run first (a run that continued as new is a chain of runs)."""
    chain: list[list[HistoryEvent]] = []
    current = run_id
    for _ in range(200):
        try:
            history = await client.get_workflow_handle(workflow_id, run_id=current).fetch_history()
        except Exception:  # noqa: BLE001 - the live run's own history is reported by read_run
            if not chain:
                raise
            raise HistoryProblem(
                "an earlier run of its chain (continued as new) is no longer kept (retention): no start to replay from"
            ) from None
        events = list(history.events)
        if not events or not events[0].HasField("workflow_execution_started_event_attributes"):
            raise HistoryProblem("its history has no start event")
        chain.insert(0, events)
        previous = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            return chain
        current = previous
    raise HistoryProblem("its chain of continued runs is longer than 200")


async def read_run(
    client: Client, workflow_id: str, run_id: str | None, now: datetime, listed: LiveRun | None = None
) -> LiveRun:
    """What the run started with and received, from its history; a run that cannot be read says why (with what the
    listing said of it: ``listed``)."""
    run = listed or LiveRun(workflow_id, run_id)
    try:
        try:
            chain = await _histories(client, workflow_id, run_id)
        except HistoryProblem:
            raise
        except Exception as err:  # noqa: BLE001 - a history gone (retention) or not readable
            raise HistoryProblem(f"its history cannot be read ({type(err).__name__}: {err})") from None
        await _read_chain(client, run, chain, now)
    except HistoryProblem as problem:
        run.problem = str(problem)
    except Exception as err:  # noqa: BLE001 - a payload the converter cannot decode (a key missing, another shape)
        run.problem = f"its history cannot be decoded ({type(err).__name__}: {err})"
    return run


async def _read_chain(client: Client, run: LiveRun, chain: list[list[HistoryEvent]], now: datetime) -> None:
    first = chain[0][0]
    started = first.workflow_execution_started_event_attributes
    run_input: RunInput = await _decode(client, started.input.payloads, RunInput)
    if run_input.carried is not None:
        raise HistoryProblem("the first run of its chain is no longer kept (retention): no start to replay from")
    real_start = _time(first)
    run.playbook, run.event, run.input = run_input.playbook, run_input.event, dict(run_input.input)
    run.account_id, run.version = run_input.account_id, run_input.playbook.version
    run.started_at = real_start + timedelta(seconds=run_input.clock_offset)
    run.age = max((now - real_start).total_seconds(), 0.0)
    wid = run.workflow_id

    asks: dict[str, tuple[str, str, str | None, datetime]] = {}  # ask id -> kind, key tail, step id, asked at
    scheduled: dict[int, tuple[str, Any]] = {}  # activity scheduled event id -> name, decoded request
    accepted: dict[int, Given] = {}
    failed_updates: set[int] = set()
    made: dict[str, str] = {}  # effect key -> "email <step path>": a step started again after continue-as-new is one
    load_failure: str | None = None
    for events in chain:
        for e in events:
            which = e.WhichOneof("attributes")
            if which == "marker_recorded_event_attributes":
                marker = e.marker_recorded_event_attributes
                if marker.marker_name != "core_local_activity" or run.snapshot is not None:
                    continue
                if _marker_activity(marker.details) != "load_account":
                    continue
                if "result" in marker.details and marker.details["result"].payloads:
                    run.snapshot = await _decode(client, marker.details["result"].payloads, act.AccountSnapshot)
                elif marker.HasField("failure"):
                    load_failure = marker.failure.message
            elif which == "activity_task_scheduled_event_attributes":
                attrs = e.activity_task_scheduled_event_attributes
                name = attrs.activity_type.name
                hint = _REQUESTS.get(name)
                if hint is not None:
                    scheduled[e.event_id] = (name, await _decode(client, attrs.input.payloads, hint))
                elif name == "load_account":
                    scheduled[e.event_id] = (name, None)
            elif which == "activity_task_completed_event_attributes":
                attrs_c = e.activity_task_completed_event_attributes
                name, request = scheduled.get(attrs_c.scheduled_event_id, ("", None))
                if name == "load_account" and run.snapshot is None:
                    run.snapshot = await _decode(client, attrs_c.result.payloads, act.AccountSnapshot)
                elif name == "create_approval":
                    created: act.ApprovalCreated = await _decode(client, attrs_c.result.payloads, act.ApprovalCreated)
                    asks[created.approval_id] = ("approval", _tail(request.key, wid), request.ref.step_id, _time(e))
                elif name == "create_call_task":
                    task: act.CallTaskResult = await _decode(client, attrs_c.result.payloads, act.CallTaskResult)
                    asks[task.task_id] = ("call_task", _tail(request.key, wid), request.ref.step_id, _time(e))
                    made.setdefault(request.key, f"call_task {_step_path(_tail(request.key, wid))}")
                elif name == "send_email":
                    made.setdefault(request.key, f"email {_step_path(_tail(request.key, wid))}")
                elif name == "send_emails":
                    for email in request.emails:
                        made.setdefault(email.key, f"email {_step_path(_tail(email.key, wid))}")
            elif which == "activity_task_failed_event_attributes":
                name, _ = scheduled.get(e.activity_task_failed_event_attributes.scheduled_event_id, ("", None))
                if name == "load_account":
                    load_failure = e.activity_task_failed_event_attributes.failure.message
            elif which == "workflow_execution_signaled_event_attributes":
                signal = e.workflow_execution_signaled_event_attributes
                if signal.signal_name == EVENT_SIGNAL:
                    got: Event = await _decode(client, signal.input.payloads, Event)
                    at = (_time(e) - real_start).total_seconds()
                    run.given.append(Given("event", at, _event_payload(got)))
            elif which == "workflow_execution_update_accepted_event_attributes":
                request_u = e.workflow_execution_update_accepted_event_attributes.accepted_request.input
                at = (_time(e) - real_start).total_seconds()
                if request_u.name == DECIDE_UPDATE:
                    decision: Decision = await _decode(client, request_u.args.payloads, Decision)
                    accepted[e.event_id] = Given("decision", at, _decision_payload(decision), decision.approval_id,
                                                 0.0)
                    accepted[e.event_id].payload["_step"] = decision.step_id
                elif request_u.name == OUTCOME_UPDATE:
                    outcome: Outcome = await _decode(client, request_u.args.payloads, Outcome)
                    accepted[e.event_id] = Given("outcome", at, {"outcome": outcome.outcome, "by": outcome.by},
                                                 outcome.task_id, 0.0)
                    accepted[e.event_id].payload["_step"] = outcome.step_id
            elif which == "workflow_execution_update_completed_event_attributes":
                done = e.workflow_execution_update_completed_event_attributes
                if done.outcome.HasField("failure"):
                    failed_updates.add(done.accepted_event_id)
    run.effects = Counter(made.values())
    if run.snapshot is None:
        why = f": {load_failure}" if load_failure else " yet"
        raise HistoryProblem(f"its account was not loaded{why}; nothing to replay it with")
    for event_id, given in sorted(accepted.items()):
        if event_id in failed_updates:
            continue
        step_id = given.payload.pop("_step", None)
        ask = _ask_of(asks, given, step_id, real_start)
        if ask is None:
            continue  # an answer to an ask of a for_each slice (a child workflow's): not replayed
        tail, asked_at = ask
        given.ask = tail
        given.after = max((real_start + timedelta(seconds=given.at) - asked_at).total_seconds(), 0.0)
        run.given.append(given)
    run.given.sort(key=lambda g: g.at)


def _ask_of(
    asks: dict[str, tuple[str, str, str | None, datetime]], given: Given, step_id: str | None, start: datetime
) -> tuple[str, datetime] | None:
    kind = "approval" if given.kind == "decision" else "call_task"
    if given.ask and given.ask in asks:
        _, tail, _, asked_at = asks[given.ask]
        return tail, asked_at
    moment = start + timedelta(seconds=given.at)
    candidates = [(at, tail) for k, tail, step, at in asks.values() if k == kind and step == step_id and at <= moment]
    if not candidates:
        return None
    at, tail = max(candidates)
    return tail, at


def _marker_activity(details: Any) -> str | None:
    data = details["data"].payloads if "data" in details else []
    if not data:
        return None
    try:
        return str(json.loads(data[0].data).get("activity_type"))
    except (ValueError, AttributeError):
        return None


_REQUESTS: dict[str, type] = {
    "create_approval": act.ApprovalRequest,
    "create_call_task": act.CallTaskRequest,
    "send_email": act.EmailRequest,
    "send_emails": act.EmailBatchRequest,
}


def _event_payload(e: Event) -> dict[str, Any]:
    return {"type": e.type, "data": e.data, "id": e.id, "occurred_at": e.occurred_at, "account_id": e.account_id}


def _decision_payload(d: Decision) -> dict[str, Any]:
    return {"decide": d.decision, "by": d.by, "comment": d.comment, "edit": d.edits}


def script_of(run: LiveRun) -> list[dict[str, Any]]:
    """The run's events and answers as the scenario driver plays them (whole seconds, never later than they came)."""
    script: list[dict[str, Any]] = []
    for g in run.given:
        if g.kind == "event":
            script.append({"event": g.payload, "at": f"{int(g.at)}s"})
        elif g.kind == "decision":
            script.append({"approval": g.ask, **g.payload, "after": f"{int(g.after)}s"})
        else:
            script.append({"call_task": g.ask, "outcome": g.payload["outcome"], "after": f"{int(g.after)}s"})
    return script


# ------------------------------------------------------------------ what a replay did by the run's age


@dataclass
class Standing:
    """What one replay of a run did up to the run's age."""

    status: str = "running"  # running | completed | exited | goal | failed
    reason: str | None = None
    current: list[str] = field(default_factory=list)
    steps: dict[str, str] = field(default_factory=dict)  # step name -> its last status
    choices: dict[str, str] = field(default_factory=dict)  # step name -> the case, path, decision, ... it chose
    emails: list[dict[str, Any]] = field(default_factory=list)  # step, recipients, subject, template, body, status, at
    tasks: list[dict[str, Any]] = field(default_factory=list)  # step, assignee, title, at
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status, "reason": self.reason, "current": self.current, "steps": self.steps,
            "choices": self.choices, "emails": [_timed(e) for e in self.emails],
            "tasks": [_timed(x) for x in self.tasks], "error": self.error,
        }

    def where(self) -> str:
        if self.error:
            return f"could not replay ({self.error})"
        if self.status == "running":
            return f"running at {', '.join(self.current) or 'no step'}"
        return self.status + (f" ({self.reason})" if self.reason else "")


def _timed(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "at": _at_text(item.get("at"))}


def _choice(result: dict[str, Any]) -> str | None:
    if "case" in result:
        return f"case {result['case']}" if result["case"] is not None else "no case"
    if "path" in result:
        return f"path {result['path']}"
    if "decision" in result:
        return str(result["decision"])
    if "timed_out" in result:
        return "timed out" if result["timed_out"] else "event came"
    if "outcome" in result and result.get("outcome") is not None:
        return f"outcome {result['outcome']}"
    return None


def _standing(
    playbook: Playbook, status: str, reason: str | None, current: list[str], timeline: list[TimelineEntry],
    steps: dict[str, dict[str, Any]],
) -> Standing:
    names = step_names(playbook)
    standing = Standing(status=status, reason=reason, current=[names.get(p, p) for p in current])
    for entry in timeline:
        if entry.kind == "run" or entry.status == "info" or not entry.path:
            continue
        standing.steps[names.get(entry.path, entry.step_id or entry.path)] = entry.status
    by_id = {s.id: names.get(s.path, s.id) for s in playbook.walk() if s.id}
    for step_id, record in steps.items():
        chosen = _choice(record.get("result") or {})
        if chosen is not None and record.get("status") == "done":
            standing.choices[by_id.get(step_id, step_id)] = chosen
    return standing


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _effects(db_url: str, workflow_id: str, playbook: Playbook, start: datetime) -> tuple[list[Any], list[Any]]:
    names = step_names(playbook)

    def name(step_id: str | None, key: str) -> str:
        path = _step_path(_tail(key, workflow_id))
        return names.get(path, step_id or path)

    def at(moment: datetime | None) -> float | None:
        if moment is None:
            return None
        return ((moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - start).total_seconds()

    mine = (t.OutboxEmail.workflow_id == workflow_id) | t.OutboxEmail.workflow_id.startswith(workflow_id + "/")
    with session(db_url) as s:
        rows = s.scalars(select(t.OutboxEmail).where(mine).order_by(t.OutboxEmail.id)).all()
        task_rows = s.scalars(
            select(t.CallTask)
            .where((t.CallTask.workflow_id == workflow_id) | t.CallTask.workflow_id.startswith(workflow_id + "/"))
            .order_by(t.CallTask.id)
        ).all()
        admitted = dict(
            s.execute(select(t.EmailDelivery.key, func.max(t.EmailDelivery.at)).group_by(t.EmailDelivery.key)).all()
        )
        emails = [
            {
                "step": name(e.step_id, e.key),
                "recipients": len(e.to) + len(e.cc) + len(e.bcc),
                "subject": e.subject,
                "template": e.template_id,
                "body": _digest(e.body),
                "status": e.status,
                "at": at(admitted.get(e.key, e.created_at)),
            }
            for e in rows
        ]
        tasks = [
            {"step": name(x.step_id, x.key), "assignee": x.assignee, "title": x.title, "at": at(x.created_at)}
            for x in task_rows
        ]
    return emails, tasks


# ------------------------------------------------------------------ comparing two replays of a run


@dataclass
class RunDiff:
    workflow_id: str
    account_id: str
    version: str
    started_at: datetime | None
    age: float
    third_version: bool = False  # pinned to neither OLD nor NEW: compared from its own version
    on_new: bool = False  # pinned to NEW already (not replayed)
    events: int = 0
    answers: int = 0
    problem: str | None = None  # not replayed: why
    kinds: list[str] = field(default_factory=list)  # path | emails | now
    details: dict[str, list[str]] = field(default_factory=dict)
    old: Standing | None = None
    new: Standing | None = None
    faithful: bool | None = None  # the replay of its own version did the effects the run did
    unfaithful: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.kinds)

    @property
    def verdict(self) -> str:
        if self.problem:
            return "not replayed"
        if self.on_new:
            return "on the new version already"
        return "; ".join(KIND_TEXT[k] for k in self.kinds) if self.kinds else "unchanged"

    def as_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "account_id": self.account_id,
            "version": self.version,
            "third_version": self.third_version,
            "on_new_version": self.on_new,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "age": offset_text(timedelta(seconds=self.age)),
            "events": self.events,
            "answers": self.answers,
            "verdict": self.verdict,
            "changed": self.changed,
            "kinds": self.kinds,
            "differences": self.details,
            "problem": self.problem,
            "faithful": self.faithful,
            "unfaithful": self.unfaithful,
            "old": self.old.as_json() if self.old else None,
            "new": self.new.as_json() if self.new else None,
        }


def compare(old: Standing, new: Standing, new_model: Playbook, old_model: Playbook) -> dict[str, list[str]]:
    """The differences between two replays of one run, by kind (only the kinds that differ)."""
    found: dict[str, list[str]] = {}
    if old.error or new.error:
        found["now"] = [f"{side} version: could not replay ({s.error})" for side, s in (("old", old), ("new", new))
                        if s.error]
        return found
    found["path"] = _path_lines(old, new, set(step_names(old_model).values()), set(step_names(new_model).values()))
    found["emails"] = [
        *_effect_lines("email", old.emails, new.emails, ("recipients", "subject", "template", "body", "status")),
        *_effect_lines("call_task", old.tasks, new.tasks, ("assignee", "title")),
    ]
    now = []
    if old.status != new.status or (old.status == "running" and old.current != new.current):
        now.append(f"now: {old.where()} → {new.where()}")
    found["now"] = now
    return {k: v for k, v in found.items() if v}


def _path_lines(old: Standing, new: Standing, old_steps: set[str], new_steps: set[str]) -> list[str]:
    lines = []
    for step in dict.fromkeys([*old.choices, *new.choices]):
        a, b = old.choices.get(step), new.choices.get(step)
        if a is not None and b is not None and a != b:
            lines.append(f"step {step}: {a} → {b}")
    for step in dict.fromkeys([*old.steps, *new.steps]):
        a, b = old.steps.get(step), new.steps.get(step)
        if a == b:
            continue
        if a in FINISHED and b in FINISHED:
            lines.append(f"step {step}: {a} → {b}")
        elif a is not None and b is None and (step not in new_steps or new.status != "running"):
            lines.append(f"step {step}: {a} → {'not in this version' if step not in new_steps else 'not reached'}")
        elif b is not None and a is None and (step not in old_steps or old.status != "running"):
            lines.append(f"step {step}: {'not in that version' if step not in old_steps else 'not reached'} → {b}")
    return lines


def _at_text(seconds: float | None) -> str:
    return "?" if seconds is None else offset_text(timedelta(seconds=int(seconds)))


def _effect_lines(
    what: str, old: list[dict[str, Any]], new: list[dict[str, Any]], compared: tuple[str, ...]
) -> list[str]:
    """Matched by step, in the order they were made; compared field by field and on when (a minute's tolerance)."""
    lines = []
    remaining = list(new)
    for item in old:
        match = next((x for x in remaining if x["step"] == item["step"]), None)
        name = f"{what} {item['step']}"
        if match is None:
            lines.append(f"{name}: only on the old version ({_describe(item)})")
            continue
        remaining.remove(match)
        for key in compared:
            if item.get(key) != match.get(key):
                if key == "body":
                    lines.append(f"{name}: body differs")
                else:
                    lines.append(f"{name}: {key} {item.get(key)!r} → {match.get(key)!r}")
        a, b = item.get("at"), match.get("at")
        if a is not None and b is not None and abs(a - b) >= SAME_MOMENT.total_seconds():
            lines.append(f"{name}: at {_at_text(a)} → {_at_text(b)}")
    for item in remaining:
        lines.append(f"{what} {item['step']}: only on the new version ({_describe(item)})")
    return lines


def _describe(item: dict[str, Any]) -> str:
    if "subject" in item:
        sent = f"{item['status']} at {_at_text(item['at'])} to {item['recipients']} recipient(s)"
        return f"{sent}, subject {item['subject']!r}"
    return f"created at {_at_text(item['at'])} for {item['assignee']}, title {item['title']!r}"


def _faithfulness(run: LiveRun, own: Standing) -> list[str]:
    """Where the replay of the run's own version did other effects than the run did (by step, counted)."""
    assert run.playbook is not None
    names = step_names(run.playbook)
    live = Counter({f"{k.split(' ', 1)[0]} {names.get(k.split(' ', 1)[1], k.split(' ', 1)[1])}": n
                    for k, n in run.effects.items()})
    replayed = Counter([f"email {e['step']}" for e in own.emails] + [f"call_task {x['step']}" for x in own.tasks])
    lines = []
    for key in dict.fromkeys([*live, *replayed]):
        if live[key] != replayed[key]:
            lines.append(f"{key}: the run made {live[key]}, its replay {replayed[key]}")
    return lines


# ------------------------------------------------------------------ replaying


class RecordedAccounts:
    """load_account as the live run's first activity answered it, per replayed run (nothing read, nothing written)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, act.AccountSnapshot] = {}

    @activity.defn(name="load_account")
    async def load_account(self, req: act.AccountRequest) -> act.AccountSnapshot:
        workflow_id = req.ref.workflow_id if req.ref is not None else ""
        found = self.snapshots.get(workflow_id)
        if found is None:
            return act.AccountSnapshot(account={"id": req.account_id, "owner": None, "tags": []}, found=False)
        return found


def _seed(db_url: str, snapshot: act.AccountSnapshot) -> None:
    """The account as loaded, in the side's built-in CRM: for the activities that read it (owner, CRM steps)."""
    account = dict(snapshot.account)
    owner = account.pop("owner", None)
    tags = account.pop("tags", None) or []
    team = [owner] if isinstance(owner, dict) and owner.get("id") else []
    account["owner"] = team[0]["id"] if team else None
    with contextlib.suppress(Exception):  # an account the CRM's tables cannot hold still replays (loaded as recorded)
        seed(db_url, account, [c for c in snapshot.contacts if isinstance(c, dict)], team)
        crm = BuiltinCrm(db_url)
        for tag in tags:
            crm.add_tag(account["id"], str(tag))


@dataclass
class _Replay:
    run: LiveRun
    side: str  # old | new
    playbook: Playbook
    workflow_id: str
    db_url: str
    server_start: datetime | None = None
    standing: Standing | None = None


async def diff_live(
    client: Client,
    old: Playbook,
    new: Playbook,
    *,
    limit: int = DEFAULT_LIMIT,
    library: Path | None = None,
) -> LiveDiff:
    """Every live run of OLD's playbook, read from ``client``'s cluster and replayed on both versions."""
    query = f"WorkflowType = '{WORKFLOW_NAME}' AND PlaybookId = '{old.id}' AND ExecutionStatus = 'Running'"
    now = datetime.now(UTC)
    try:
        total = (await client.count_workflows(query)).count
        listed = [_listed(wf, now) async for wf in client.list_workflows(query, limit=limit)]
    except Exception as err:  # noqa: BLE001 - a cluster without the PlaybookId search attribute, no permission, ...
        raise LiveError(f"cannot list the live runs of {old.id}: {err}") from None
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(run: LiveRun) -> LiveRun:
        async with gate:
            return await read_run(client, run.workflow_id, run.run_id, now, run)

    runs = await asyncio.gather(*(read(r) for r in listed))
    diffs = await replay_runs(runs, old, new, library)
    return LiveDiff(old.id, total, len(listed), limit, diffs)


def _listed(wf: WorkflowExecution, now: datetime) -> LiveRun:
    """A run as the search index lists it: what is shown of it should its history be unreadable."""
    attributes = wf.typed_search_attributes
    return LiveRun(
        wf.id, wf.run_id, version=attributes.get(PLAYBOOK_VERSION) or "", account_id=attributes.get(ACCOUNT_ID) or "",
        started_at=wf.start_time, age=max((now - wf.start_time).total_seconds(), 0.0),
    )


@dataclass
class LiveDiff:
    playbook_id: str
    total: int  # live runs of the playbook
    replayed: int  # the ones read (at most the limit)
    limit: int
    runs: list[RunDiff]

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.runs)

    @property
    def more(self) -> bool:
        return self.total > self.replayed

    def as_json(self) -> dict[str, Any]:
        counts = Counter(r.verdict for r in self.runs)
        return {
            "playbook": self.playbook_id,
            "live_runs": self.total,
            "replayed": self.replayed,
            "limit": self.limit,
            "more": self.more,
            "changed": sum(r.changed for r in self.runs),
            "not_replayed": sum(r.problem is not None for r in self.runs),
            "verdicts": dict(counts),
            "runs": [r.as_json() for r in self.runs],
        }


async def replay_runs(runs: list[LiveRun], old: Playbook, new: Playbook, library: Path | None) -> list[RunDiff]:
    diffs = []
    replays: list[tuple[_Replay, _Replay]] = []
    folder = Path(tempfile.mkdtemp(prefix="live-diff-"))
    dbs = {side: f"sqlite:///{folder / f'{side}.db'}" for side in ("old", "new")}
    try:
        for i, run in enumerate(runs):
            on_new = run.version == new.version != old.version
            third = run.version not in ("", old.version) and not on_new
            diff = RunDiff(run.workflow_id, run.account_id, run.version, run.started_at, run.age, third_version=third,
                           on_new=on_new, events=sum(g.kind == "event" for g in run.given),
                           answers=sum(g.kind != "event" for g in run.given), problem=run.problem)
            diffs.append(diff)
            if run.problem is not None or run.playbook is None or on_new:
                continue  # a run on NEW already does what NEW does: nothing to replay
            own = run.playbook if third else old
            replays.append((_Replay(run, "old", own, f"live-old/{i}", dbs["old"]),
                            _Replay(run, "new", new, f"live-new/{i}", dbs["new"])))
        if replays:
            await _replay(replays, dbs, library)
        by_run = {id(pair[0].run): pair for pair in replays}
        for diff, run in zip(diffs, runs, strict=True):
            pair = by_run.get(id(run))
            if pair is None:
                continue
            before, after = pair
            assert before.standing is not None and after.standing is not None
            diff.old, diff.new = before.standing, after.standing
            details = compare(before.standing, after.standing, new, before.playbook)
            diff.kinds = [k for k in KINDS if k in details]
            diff.details = {k: details[k] for k in diff.kinds}
            if not before.standing.error:
                diff.unfaithful = _faithfulness(run, before.standing)
                diff.faithful = not diff.unfaithful
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return diffs


async def _replay(replays: list[tuple[_Replay, _Replay]], dbs: dict[str, str], library: Path | None) -> None:
    for db_url in dbs.values():
        migrate(db_url)
    accounts = RecordedAccounts()
    for pair in replays:
        for r in pair:
            assert r.run.snapshot is not None
            accounts.snapshots[r.workflow_id] = r.run.snapshot
            _seed(r.db_url, r.run.snapshot)
    loop = asyncio.get_running_loop()
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), runtime=quiet_runtime()
    ) as env:
        client = env.client
        answered = {r.workflow_id for pair in replays for r in pair if any(g.kind != "event" for g in r.run.given)}

        def on_ask(kind: str, record: dict[str, Any]) -> None:
            # in the activity's thread, before it returns: the driver hears of the ask before the run moves on
            run_id = str(record["workflow_id"])
            if run_id not in answered:
                return  # nobody answers this run's asks: no driver to tell
            ask_id = record["task_id"] if kind == "call_task" else record["approval_id"]
            asked = Asked(kind, ask_id, run_id, _tail(str(record["key"]), run_id), [])
            future = asyncio.run_coroutine_threadsafe(
                client.get_workflow_handle(f"{run_id}/driver").signal(ASKED_SIGNAL, asked), loop
            )
            with contextlib.suppress(Exception):  # a replay already observed and ended
                future.result(timeout=30)

        workers = []
        for side, db_url in dbs.items():
            acts = PlaybookActivities(db_url, BuiltinCrm(db_url), OutboxProvider(), listeners=[on_ask])
            roots = [library] if library is not None else []
            activities = [a for a in acts.all() if getattr(a, "__name__", "") != "load_account"]
            activities += [accounts.load_account, DriverActivities(client, db_url).scenario_answer]
            if roots:
                activities.append(LibraryActivities(*roots).load_playbook)
            workers.append(build_worker(client, f"live-{side}", activities, extra_workflows=[ScenarioDriver]))
        async with contextlib.AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(worker)
            gate = asyncio.Semaphore(START_CONCURRENCY)

            async def start(pair: tuple[_Replay, _Replay]) -> None:
                async with gate:
                    for r in pair:
                        await _start(env, client, r)

            # In batches: while replays start, the server's clock runs in real time, so a replay started early in a
            # long batch would be read late (older than its run); and a worker flooded with new workflows answers late.
            for first in range(0, len(replays), BATCH):
                batch = replays[first : first + BATCH]
                await asyncio.gather(*(start(p) for p in batch))
                await _observe(env, client, [r for pair in batch for r in pair])


async def _start(env: WorkflowEnvironment, client: Client, r: _Replay) -> None:
    run = r.run
    assert run.started_at is not None
    now = await env.get_current_time()
    r.server_start = now
    queue = f"live-{r.side}"
    try:
        if run.given:  # a driver only for runs that received something: half the workflows for the others
            # the driver has its script from its first activation (workflow.init): the run may ask at once
            await client.start_workflow(
                DRIVER_NAME, DriverInput(r.workflow_id, script_of(run)), id=f"{r.workflow_id}/driver", task_queue=queue
            )
        await client.start_workflow(
            WORKFLOW_NAME,
            RunInput(playbook=r.playbook, account_id=run.account_id, event=run.event, input=run.input,
                     clock_offset=(run.started_at - now).total_seconds()),
            id=r.workflow_id,
            task_queue=queue,
            execution_timeout=timedelta(seconds=run.age) + timedelta(days=30),
        )
    except Exception as err:  # noqa: BLE001 - one run that cannot start is reported, the others replay
        r.standing = Standing(status="failed", error=f"{type(err).__name__}: {err}")


async def _observe(env: WorkflowEnvironment, client: Client, replays: list[_Replay]) -> None:
    """Moves the server's clock to each replay's age in turn; what a replay did is read at its moment, then it ends."""
    pending = sorted(
        (r for r in replays if r.standing is None and r.server_start is not None),
        key=lambda r: (r.server_start or datetime.min.replace(tzinfo=UTC)) + timedelta(seconds=r.run.age),
    )
    while pending:
        due = (pending[0].server_start or datetime.now(UTC)) + timedelta(seconds=pending[0].run.age)
        now = await env.get_current_time()
        if due > now:
            await env.sleep(due - now)
            now = await env.get_current_time()
        ready = [r for r in pending if (r.server_start or now) + timedelta(seconds=r.run.age) <= now]
        pending = [r for r in pending if r not in ready]
        await asyncio.gather(*(_read_and_end(client, r) for r in ready))


async def _read_and_end(client: Client, r: _Replay) -> None:
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(r.workflow_id)
    run = r.run
    assert run.started_at is not None
    try:
        description = await asyncio.wait_for(handle.describe(), READ_TIMEOUT)
        if description.status == WorkflowExecutionStatus.RUNNING:
            state: RunState = await asyncio.wait_for(handle.query(STATE_QUERY, result_type=RunState), READ_TIMEOUT)
            r.standing = _standing(r.playbook, "running", None, state.current, state.timeline, state.steps)
            with contextlib.suppress(Exception):
                await handle.terminate("replayed up to the live run's age")
        else:
            try:
                ended = client.get_workflow_handle(r.workflow_id, result_type=RunResult)
                result: RunResult = await asyncio.wait_for(ended.result(), READ_TIMEOUT)
            except WorkflowFailureError as err:
                result = failed_result(err)
            r.standing = _standing(r.playbook, result.outcome, result.reason, [], result.timeline, result.steps)
        r.standing.emails, r.standing.tasks = _effects(r.db_url, r.workflow_id, r.playbook, run.started_at)
    except Exception as err:  # noqa: BLE001 - one replay that cannot be read is reported, the others are
        r.standing = Standing(status="failed", error=f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
    if run.given:
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(f"{r.workflow_id}/driver").terminate("replay observed")
