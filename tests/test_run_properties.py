"""The validator promises only what runs: every valid playbook runs to an end, and no workflow task fails.

Valid playbooks are generated over every step kind and field (tests/playbook_strategies.py: nested steps,
every duration form, templated durations whose vars hold good and bad values, when, retry, timeout,
on_error, quiet hours, timezones, exit_when, goals) and run on Temporal's time-skipping test server with a
real worker (engine/runtime/workers.build_worker): the interpreter, the real activities over the built-in
CRM and the outbox, a SQLite database, the library's run_playbook targets, and the scenario driver of
`playbook test` (engine/testing/driver.py) answering approvals and call tasks and posting events. One
server and one worker serve every example (a fresh server only after the test server was left unusable).

For every run:

- no workflow task ever fails or stays open (WORKFLOW_TASK_FAILED / _TIMED_OUT in the history of the run
  or of its children): such a run is retried for ever and stuck with nothing in its record;
- the run ends (completed, exited, goal or failed) within the simulated time its steps can take, and a
  run waiting for nothing that will come is stuck;
- a run that fails names the step and a reason, and only a step with a content error (a template giving a
  bad duration, date or day count) fails, or a step whose own timeout ran out (no earlier than it says),
  or a container because a step in it failed;
- durations mean what the language reference says, in every field: a wait ends when its duration (``2h``,
  ``3bd``, ``P1DT2H``, ``{{ vars.t }}``...) says, a task is due when ``due`` says, an approval when its
  timeout says, a timed-out wait_for or call_task waited at least its timeout, an activity is scheduled
  with the step's timeout and retry; no email goes out in quiet hours.

The test_known_failure cases are the failures known when this file was written (issue 9, item 4).

Cost: about 0.3 s of real time per example. PLAYBOOK_PROPERTY_EXAMPLES=N runs N examples (default 100);
PLAYBOOK_PROPERTY_SHRINK=1 shrinks a failure to a small playbook (each attempt is a run, minutes in all).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.testservice.v1 import LockTimeSkippingRequest, UnlockTimeSkippingRequest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider
from activities.library import LibraryActivities
from activities.playbook_activities import PlaybookActivities
from engine.interpreter.messages import WORKFLOW_NAME, RunInput, RunResult
from engine.runtime.connect import quiet_runtime
from engine.runtime.workers import build_worker
from engine.storage import models as t
from engine.storage.db import migrate, session
from engine.testing import scenarios
from engine.testing.driver import ASKED_SIGNAL, DRIVER_NAME, Asked, DriverActivities, DriverInput, ScenarioDriver
from tests.playbook_strategies import (
    ACCOUNT_FIELDS,
    CHILD_PLAYBOOKS,
    CONTACTS,
    DAY,
    STARTS,
    TEAM,
    Case,
    Dur,
    StepMeta,
    fixed_case,
    generated_cases,
)

WALL_LIMIT = 30.0  # seconds of real time one run may take before it counts as stuck (a run takes well under 2 s)
STALL = 2.0  # seconds of real time with nothing happening in a run's history, nothing under way: stuck
TASK_LIMIT = 6.0  # seconds of real time a workflow task may stay open (the SDK's deadlock detector fires at 2 s)
OPEN_TASK = (EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
ENDINGS = ("completed", "exited", "goal", "failed")
TASK_QUEUE = "run-properties"


# ------------------------------------------------------------------ one server and one worker for every run


@dataclass
class Scheduled:
    """An activity as the run scheduled it: the options its step's timeout and retry became."""

    name: str
    path: str | None  # the step's path, from the activity's idempotency key
    schedule_to_close: float
    initial_interval: float
    maximum_interval: float
    backoff: float
    maximum_attempts: int


def scheduled_activities(history: Any) -> list[Scheduled]:
    found = []
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        path = None
        try:
            payload = json.loads(attrs.input.payloads[0].data)
            key = payload.get("key") if isinstance(payload, dict) else None
            step = re.search(r"/(steps(?:\.\w+)*)", key or "")
            path = step.group(1) if step else None
        except (IndexError, ValueError):
            pass
        retry = attrs.retry_policy
        found.append(
            Scheduled(
                attrs.activity_type.name,
                path,
                attrs.schedule_to_close_timeout.ToTimedelta().total_seconds(),
                retry.initial_interval.ToTimedelta().total_seconds(),
                retry.maximum_interval.ToTimedelta().total_seconds(),
                retry.backoff_coefficient,
                retry.maximum_attempts,
            )
        )
    return found


@dataclass
class RunReport:
    run_id: str
    outcome: str | None = None
    reason: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    timeline: list[Any] = field(default_factory=list)
    task_failures: list[str] = field(default_factory=list)  # "workflow id: cause: message"
    stuck: str | None = None
    tasks: list[t.CallTask] = field(default_factory=list)
    approvals: list[t.Approval] = field(default_factory=list)
    emails: list[t.OutboxEmail] = field(default_factory=list)
    activities: list[Scheduled] = field(default_factory=list)

    def explain(self) -> str:
        lines = [f"outcome: {self.outcome} ({self.reason})"]
        lines += [f"  {e.at} {e.path} {e.step_id or ''} {e.kind} {e.status} {e.detail}" for e in self.timeline]
        lines += [f"  workflow task failed: {f}" for f in self.task_failures]
        if self.stuck:
            lines.append(f"  stuck: {self.stuck}")
        return "\n".join(lines)


# Temporal's own protocol, not a failure of the run: the run tried to close while a signal (an event) had just
# arrived, so the server asks for a new workflow task that sees it.
BENIGN_TASK_FAILURES = (WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,)


async def task_failures(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The workflow task failures in a workflow's history: each one means the run made no progress there."""
    try:
        history = await handle.fetch_history()
    except RPCError as err:  # pragma: no cover - the server always has the history of a run it started
        return [f"{handle.id}: history not readable: {err}"]
    return failed_tasks(handle.id, history)


def failed_tasks(workflow_id: str, history: Any) -> list[str]:
    found = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            found.append(f"{workflow_id}: a workflow task timed out (the worker never completed it)")
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause in BENIGN_TASK_FAILURES:
                continue
            message = attrs.failure.message.strip().splitlines()[0] if attrs.failure.message else ""
            cause = WorkflowTaskFailedCause.Name(attrs.cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
            found.append(f"{workflow_id}: {cause}: {message}")
    return found


async def where(handle: WorkflowHandle[Any, Any]) -> str:
    """Where a run that does not end stands: its last history events and pending activities."""
    description = await handle.describe()
    history = await handle.fetch_history()
    last = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events[-4:]]
    timers = {
        e.timer_started_event_attributes.timer_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    }
    timers -= {
        e.timer_fired_event_attributes.timer_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED
    }
    timers -= {
        e.timer_canceled_event_attributes.timer_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED
    }
    pending = [
        f"{a.activity_type.name} (attempt {a.attempt}, {a.last_failure.message or 'no failure'})"
        for a in description.raw_description.pending_activities
    ]
    return f"last events: {', '.join(last)}; timers: {len(timers)}; pending activities: {', '.join(pending) or 'none'}"


async def child_ids(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]


class Harness:
    """A time-skipping server, a database and one worker (interpreter, activities, scenario driver).

    Its event loop runs in a thread of its own so the worker keeps working between hypothesis examples.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="run-properties", daemon=True)
        self.thread.start()
        self.numbers = itertools.count(1)
        self.drivers: dict[str, str] = {}  # run workflow id -> its driver's workflow id
        self.restarts = 0
        self.call(self._start(), timeout=120)

    def call(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        self.db_url = scenarios.sqlite_database(self.folder)
        migrate(self.db_url)
        self.library = self.folder / "library"
        self.library.mkdir()
        for name, text in CHILD_PLAYBOOKS.items():
            (self.library / f"{name}.yaml").write_text(text, encoding="utf-8")
        self.activities = PlaybookActivities(
            self.db_url, BuiltinCrm(self.db_url), OutboxProvider(), listeners=[self.on_ask]
        )
        await self._start_server()

    async def _start_server(self) -> None:
        self.env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=scenarios.test_server_path(), runtime=quiet_runtime()
        )
        self.client = self.env.client
        # Time skips only while wait() waits for a run (unlocked and locked by hand, never half-way).
        self._manual_time = self.env.auto_time_skipping_disabled()
        self._manual_time.__enter__()
        self.driver_activities = DriverActivities(self.client)
        self.worker = build_worker(
            self.client,
            TASK_QUEUE,
            [
                *self.activities.all(),
                LibraryActivities(self.library).load_playbook,
                self.driver_activities.scenario_answer,
            ],
            extra_workflows=[ScenarioDriver],
        )
        self.worker_task = asyncio.ensure_future(self.worker.run())

    async def _stop_server(self) -> None:
        await self.worker.shutdown()
        self._manual_time.__exit__(None, None, None)
        await self.env.shutdown()

    async def _restart_server(self) -> None:
        """A fresh server (the database stays), after the test server was left with time locked for good.

        It happens (temporal-test-server 1.x) when a workflow task failed, even once its run is terminated, and
        when a child run (run_playbook with wait: false, or one cancelled with its parent) ends after its
        parent: no later run's timers would ever fire."""
        self.restarts += 1
        await self._stop_server()
        await self._start_server()

    def close(self) -> None:
        try:
            self.call(self._stop_server(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def on_ask(self, kind: str, record: dict[str, Any]) -> None:
        """As in `playbook test`: the driver hears of a task or approval before the activity returns."""
        driver_id = self.drivers.get(record["workflow_id"])
        if driver_id is None:
            return  # a child run: nobody answers it (its steps time out)
        asked = Asked(
            kind,
            record["task_id"] if kind == "call_task" else record["approval_id"],
            record["workflow_id"],
            record["step_id"],
            [record["assignee"]] if kind == "call_task" else list(record["approvers"]),
        )
        future = asyncio.run_coroutine_threadsafe(
            self.client.get_workflow_handle(driver_id).signal(ASKED_SIGNAL, asked), self.loop
        )
        future.result(timeout=30)

    def run(self, case: Case) -> RunReport:
        report = self.call(self._run(case), timeout=WALL_LIMIT * 3 + 60)
        if report.stuck and not report.task_failures and "workflow task" not in report.stuck:
            # Rarely (about one run in a hundred), the test server stops skipping time with a timer due: a stuck
            # run counts only when it is stuck again on a fresh server (_run restarted it).
            report = self.call(self._run(case), timeout=WALL_LIMIT * 3 + 60)
        return report

    async def _run(self, case: Case) -> RunReport:
        checked = case.validate()
        assert checked.ok, [p.header() for p in checked.problems]
        assert checked.playbook is not None
        number = next(self.numbers)
        account_id = f"acc-{number}"
        seed(
            self.db_url,
            {"id": account_id, **ACCOUNT_FIELDS, "timezone": case.account_timezone, "owner": "csm-1"},
            CONTACTS,
            TEAM,
        )
        run_id = f"{checked.playbook.id}/{account_id}"
        driver_id = f"driver/{account_id}"
        self.drivers[run_id] = driver_id
        report = RunReport(run_id)
        offset = (case.start - await self.env.get_current_time()).total_seconds()
        driver = await self.client.start_workflow(
            DRIVER_NAME, DriverInput(run_id, case.script), id=driver_id, task_queue=TASK_QUEUE
        )
        handle = await self.client.start_workflow(
            WORKFLOW_NAME,
            RunInput(playbook=checked.playbook, account_id=account_id, clock_offset=offset),
            id=run_id,
            task_queue=TASK_QUEUE,
            # No execution timeout: the server would cap activity timeouts to it. The simulated time a run took is
            # checked against its bound afterwards (violations), a run that waits for nothing is stuck (WALL_LIMIT).
            result_type=RunResult,
        )
        outlived = False  # a child still running when its parent closed
        try:
            result = await self.wait(handle, report)
            if result is not None:
                report.outcome, report.reason = result.outcome, result.reason
                report.steps, report.timeline = result.steps, result.timeline
            # Child runs: those waited for ended before their parent; the others (wait: false) are not followed
            # further: only their workflow tasks are checked.
            closed = (await handle.describe()).close_time
            for child in await child_ids(handle):
                child_handle = self.client.get_workflow_handle(child)
                report.task_failures += await task_failures(child_handle)
                child_closed = (await child_handle.describe()).close_time
                outlived |= closed is None or child_closed is None or child_closed >= closed
        finally:
            for h in [handle, driver]:
                await self.terminate(h)
            for child in await child_ids(handle):
                await self.terminate(self.client.get_workflow_handle(child))
            self.drivers.pop(run_id, None)
        report.task_failures += await task_failures(handle)
        report.task_failures = list(dict.fromkeys(report.task_failures))
        report.activities = scheduled_activities(await handle.fetch_history())
        harness_problems = await task_failures(driver)
        if report.task_failures or report.stuck or harness_problems or outlived:
            await self._restart_server()
        assert not harness_problems, f"the scenario driver failed (a harness problem): {harness_problems}"
        with session(self.db_url) as s:
            report.tasks = list(s.scalars(select(t.CallTask).where(t.CallTask.workflow_id == run_id)))
            report.approvals = list(s.scalars(select(t.Approval).where(t.Approval.workflow_id == run_id)))
            report.emails = list(s.scalars(select(t.OutboxEmail).where(t.OutboxEmail.workflow_id == run_id)))
        return report

    async def wait(self, handle: WorkflowHandle[Any, Any], report: RunReport) -> RunResult | None:
        """The run's result; stops early, with the run still open, when a workflow task failed or it is stuck.

        Stuck: nothing happened in its history for STALL seconds while no activity or workflow task was under way
        (the time-skipping server jumps to the next timer at once, so a run that waits for a timer moves on), or
        no end after WALL_LIMIT seconds. Time skips only here, while this waits: unlocked once, locked again once,
        never cancelled half-way (the environment's own unlock-while-awaiting-a-result is off, see _start_server).
        """
        started = self.loop.time()
        pause = 0.02
        seen, quiet_since = -1, started
        await self.client.test_service.unlock_time_skipping(UnlockTimeSkippingRequest())
        try:
            while True:
                description = await handle.describe()
                if description.status != WorkflowExecutionStatus.RUNNING:
                    break
                history = await handle.fetch_history()
                failures = failed_tasks(handle.id, history)
                if failures:
                    report.task_failures += failures
                    return None
                now = self.loop.time()
                task_open = bool(history.events) and history.events[-1].event_type in OPEN_TASK
                if len(history.events) != seen or description.raw_description.pending_activities:
                    seen, quiet_since = len(history.events), now
                # A workflow task takes milliseconds; one still open after TASK_LIMIT s will not complete (the
                # worker could not report it). Without one open, STALL s of nothing means nothing will happen.
                limit = TASK_LIMIT if task_open else STALL
                if now - quiet_since > limit or now - started > WALL_LIMIT:
                    why = (
                        f"no end after {WALL_LIMIT:g} s"
                        if now - started > WALL_LIMIT
                        else f"a workflow task open for {TASK_LIMIT:g} s never completed"
                        if task_open
                        else f"nothing happened for {STALL:g} s"
                    )
                    report.stuck = f"{handle.id}: {why} (real time); {await where(handle)}"
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.25)
        finally:
            await self.client.test_service.lock_time_skipping(LockTimeSkippingRequest())
        report.task_failures += await task_failures(handle)
        if description.status == WorkflowExecutionStatus.TIMED_OUT:
            # With nothing left to happen, the test server skips to its default run timeout (ten years).
            report.stuck = f"{handle.id}: waits for something that never comes (timed out after ten simulated years)"
            return None
        try:
            return await handle.result()
        except WorkflowFailureError as err:
            if description.status == WorkflowExecutionStatus.TERMINATED:
                report.stuck = f"{handle.id}: terminated"
                return None
            return scenarios.failed_result(err)

    async def terminate(self, handle: WorkflowHandle[Any, Any]) -> None:
        with contextlib.suppress(RPCError):  # it ended already
            await handle.terminate("run-properties: example over")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    h = Harness(tmp_path_factory.mktemp("run-properties"))
    yield h
    h.close()


# ------------------------------------------------------------------ what a correct run does


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _utc(moment: datetime) -> datetime:
    """A time from the database (SQLite keeps UTC without an offset)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _entries(report: RunReport, path: str, status: str) -> list[Any]:
    return [e for e in report.timeline if e.path == path and e.status == status]


def _inside_quiet_hours(moment: datetime, window: str) -> bool:
    start_text, end_text = window.split("-")
    start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
    clock = moment.time().replace(tzinfo=None)
    if start == end:
        return False
    if start < end:
        return start <= clock < end
    return clock >= start or clock < end


def _late(actual: datetime, expected: datetime, slack: float = 1.0) -> bool:
    return (expected - actual).total_seconds() > slack


def violations(case: Case, report: RunReport) -> list[str]:
    """Everything this run did that a correct run does not."""
    found: list[str] = [f"workflow task failed: {f}" for f in report.task_failures]
    if report.stuck:
        found.append(f"stuck: {report.stuck}")
    if found:
        return found
    if report.timeline:
        took = _at(report.timeline[-1].at) - case.start
        if took.total_seconds() > case.bound + DAY:
            found.append(
                f"the run took {took} of simulated time; its steps can take at most {timedelta(seconds=case.bound)}"
            )
    if report.outcome not in ENDINGS:
        found.append(f"the run ended with outcome {report.outcome!r}, not one of {', '.join(ENDINGS)}")
    stops_exited = "outcome: exited" in case.text
    if report.outcome == "goal" and not case.exit_events:
        found.append("outcome goal, but no exit_when event was posted")
    if report.outcome == "exited" and not (case.exit_events or stops_exited):
        found.append("outcome exited, but no exit event was posted and no stop step exits")
    failed_entries = [e for e in report.timeline if e.status == "failed" and e.kind != "run"]
    if report.outcome == "failed":
        named = re.match(r"step (\S+) failed: (.+)", report.reason or "", re.S)
        if not named:
            found.append(f"the run failed without naming the step and a reason: {report.reason!r}")
        elif not any(named.group(1) in (e.step_id, e.path) for e in failed_entries):
            found.append(f"the run failed naming step {named.group(1)!r}, which has no failed entry in the timeline")
    for entry in failed_entries:
        problem = _wrong_failure(case, report, entry)
        if problem:
            found.append(problem)
    found += _timing(case, report)
    return found


def _wrong_failure(case: Case, report: RunReport, entry: Any) -> str | None:
    meta = case.meta.get(entry.path)
    if meta is None:
        return None  # a hand-written case: only its own checks apply
    if meta.content_error:
        return None
    detail = entry.detail or ""
    if detail.startswith("step ") and any(
        e.status == "failed" and e.path.startswith(entry.path + ".") for e in report.timeline
    ):
        return None  # a step inside it failed
    timed_out = re.match(r"timed out after (\S+)", detail)
    if timed_out and meta.timeout is not None and not meta.timeout.bad:
        started = _entries(report, entry.path, "started")
        if started:
            begin = _at(started[-1].at)
            due = meta.timeout.end(begin, case.tz)
            if not _late(_at(entry.at), due):
                return None
            return (
                f"step {meta.id or meta.path} ({meta.kind}) timed out too early: 'timeout: {meta.timeout.text}' from "
                f"{begin.isoformat()} ends {due.isoformat()}, the step failed at {entry.at}: {detail}"
            )
    return f"step {meta.id or meta.path} ({meta.kind}) failed, but it holds no content error: {detail}"


def _timing(case: Case, report: RunReport) -> list[str]:
    found: list[str] = []
    for meta in case.meta.values():
        if meta.in_for_each:
            continue  # per-item entries share one path
        started = _entries(report, meta.path, "started")
        done = _entries(report, meta.path, "done")
        if len(started) != 1 or len(done) != 1:
            continue
        begin, end = _at(started[0].at), _at(done[0].at)
        name = f"step {meta.id or meta.path} ({meta.kind})"
        if meta.kind == "wait" and meta.wait is not None and not meta.content_error:
            expected = max(meta.wait(begin, case.tz), begin)
            if abs((end - expected).total_seconds()) > 60:
                found.append(
                    f"{name} started {begin.isoformat()} and should end {expected.isoformat()}, ended {end.isoformat()}"
                )
        result = (report.steps.get(meta.id or "") or {}).get("result") or {}
        timed_out = result.get("outcome") == "timed_out" or result.get("timed_out") is True
        timeout: Dur | None = meta.wait_timeout
        if timed_out and timeout is not None and not timeout.bad:
            waiting = _entries(report, meta.path, "waiting")
            since = _at(waiting[0].at) if waiting else begin
            if _late(end, timeout.end(since, case.tz)):
                found.append(
                    f"{name} timed out at {end.isoformat()}, before its timeout {timeout.text} from {since.isoformat()}"
                )
    for task in report.tasks:
        owner = _meta_by_id(case, task.step_id)
        if owner is None or owner.in_for_each or owner.due is None or owner.due.bad:
            continue
        created, due_at = _utc(task.created_at), _utc(task.due_at) if task.due_at else None
        expected = owner.due.end(created, case.tz)
        if due_at is None or abs((due_at - expected).total_seconds()) > 1:
            found.append(
                f"call_task {task.step_id} created {created.isoformat()} with 'due: {owner.due.text}' is due "
                f"{due_at.isoformat() if due_at else None}, expected {expected.isoformat()}"
            )
    for approval in report.approvals:
        asker = _meta_by_id(case, approval.step_id)
        if asker is None or asker.in_for_each or asker.approval_timeout is None or asker.approval_timeout.bad:
            continue
        created, due_at = _utc(approval.created_at), _utc(approval.due_at) if approval.due_at else None
        expected = asker.approval_timeout.end(created, case.tz)
        if due_at is None or abs((due_at - expected).total_seconds()) > 1:
            found.append(
                f"approval of {approval.step_id} created {created.isoformat()} with 'timeout: "
                f"{asker.approval_timeout.text}' is due {due_at.isoformat() if due_at else None}, "
                f"expected {expected.isoformat()}"
            )
    found += _activity_options(case, report)
    if case.quiet_hours:
        for email in report.emails:
            sent = _utc(email.created_at).astimezone(case.tz)
            if email.status == "sent" and _inside_quiet_hours(sent, case.quiet_hours):
                found.append(
                    f"email {email.step_id} went out at {sent.isoformat()}, inside quiet hours {case.quiet_hours}"
                )
    return found


def _activity_options(case: Case, report: RunReport) -> list[str]:
    """A step's timeout and retry, as written, are what its activities were scheduled with."""
    found: list[str] = []

    def differs(declared: Dur, actual: float) -> bool:
        if declared.is_bd:  # business days: at least that many calendar days, at most that many plus weekends
            return not declared.bdays * DAY <= actual <= declared.upper
        return abs(actual - declared.seconds) > 1

    for act in report.activities:
        meta = case.meta.get(act.path or "")
        if meta is None or meta.content_error:
            continue
        name = f"step {meta.id or meta.path} ({meta.kind}), activity {act.name}"
        timeout = meta.timeout
        applies = meta.kind in ("email", "crm", "assign") and timeout is not None and timeout.lower() > 0
        if applies and timeout is not None and differs(timeout, act.schedule_to_close):
            found.append(
                f"{name}: 'timeout: {timeout.text}' was scheduled as schedule_to_close {act.schedule_to_close:g} s"
            )
        initial, maximum = meta.retry_initial, meta.retry_maximum
        # docs/playbook-language.md: a maximum_interval below initial_interval wins (attempts are at most that far
        # apart, the first retry included); a zero duration is one second
        in_order = maximum is not None and maximum.lower() >= max(initial.lower() if initial else 10, 1)
        if initial is not None and initial.lower() > 0 and (maximum is None or in_order):
            if differs(initial, act.initial_interval):
                found.append(f"{name}: 'initial_interval: {initial.text}' was scheduled as {act.initial_interval:g} s")
        elif maximum is not None and not in_order and act.initial_interval > max(maximum.upper, 1) + 1:
            found.append(
                f"{name}: 'maximum_interval: {maximum.text}' is below the initial interval, yet the first retry "
                f"was scheduled {act.initial_interval:g} s after"
            )
        if in_order and maximum is not None and differs(maximum, act.maximum_interval):
            found.append(f"{name}: 'maximum_interval: {maximum.text}' was scheduled as {act.maximum_interval:g} s")
        if meta.retry_attempts is not None and act.maximum_attempts != meta.retry_attempts:
            found.append(f"{name}: 'max_attempts: {meta.retry_attempts}' was scheduled as {act.maximum_attempts}")
        if meta.retry_backoff is not None and abs(act.backoff - meta.retry_backoff) > 1e-9:
            found.append(f"{name}: 'backoff: {meta.retry_backoff}' was scheduled as {act.backoff:g}")
    return list(dict.fromkeys(found))


def _meta_by_id(case: Case, step_id: str | None) -> StepMeta | None:
    return next((m for m in case.meta.values() if step_id and m.id == step_id), None)


def check(harness: Harness, case: Case) -> RunReport:
    report = harness.run(case)
    problems = violations(case, report)
    assert not problems, "\n".join(["", *problems, "", "playbook:", case.describe(), report.explain()])
    return report


# ------------------------------------------------------------------ the properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated_cases())
def test_generated_playbooks_are_valid(case: Case) -> None:
    """The generator is tested too: everything it makes passes the validator, so every run below is promised."""
    result = case.validate()
    assert result.ok, "\n".join([p.header() for p in result.problems] + [case.text])


# Shrinking a failure costs a run (and a fresh test server) per attempt, minutes for a stuck run: off unless asked
# for (PLAYBOOK_PROPERTY_SHRINK=1). A failure is printed whole, with its YAML; the examples below are minimal.
PHASES = tuple(p for p in Phase if p is not Phase.shrink or os.environ.get("PLAYBOOK_PROPERTY_SHRINK"))
RUN_SETTINGS = settings(
    max_examples=int(os.environ.get("PLAYBOOK_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@RUN_SETTINGS
@given(case=generated_cases())
def test_every_valid_playbook_runs_to_an_end(harness: Harness, case: Case) -> None:
    check(harness, case)


# ------------------------------------------------------------------ known failures, kept as examples

VARS_T = "vars:\n  t: {t}\n"


def _regression(label: str, text: str, meta: dict[str, StepMeta], **kwargs: Any) -> Any:
    return pytest.param(fixed_case(text, meta=meta, label=label, **kwargs), id=label)


def _meta(path: str, kind: str, step_id: str | None = None, **kwargs: Any) -> dict[str, StepMeta]:
    return {path: StepMeta(path=path, kind=kind, id=step_id, **kwargs)}


REGRESSIONS = [
    _regression(
        "parallel-timeout-2bd",
        """\
id: parallel-bd
steps:
  - id: both
    timeout: 2bd
    parallel:
      - steps:
          - wait: 1h
      - steps:
          - crm: { tag: parallel }
""",
        _meta("steps.0", "parallel", "both", timeout=Dur("2bd", bdays=2, is_bd=True)),
    ),
    _regression(
        "parallel-timeout-template-banana",
        """\
id: parallel-template-bad
vars:
  t: banana
steps:
  - id: both
    timeout: "{{ vars.t }}"
    parallel:
      - steps:
          - crm: { tag: parallel }
""",
        _meta("steps.0", "parallel", "both", content_error=True),
    ),
    _regression(
        "parallel-timeout-template-2h",
        """\
id: parallel-template-good
vars:
  t: 2h
steps:
  - id: both
    timeout: "{{ vars.t }}"
    parallel:
      - steps:
          - wait: 1h
      - steps:
          - crm: { tag: parallel }
""",
        _meta("steps.0", "parallel", "both", timeout=Dur("{{ vars.t }}", seconds=7200)),
    ),
    _regression(
        "wait-iso-P1DT2H",
        """\
id: wait-iso
steps:
  - id: pause
    wait: P1DT2H
""",
        _meta("steps.0", "wait", "pause", wait=lambda start, tz: start + timedelta(days=1, hours=2)),
    ),
    _regression(
        "call-task-due-2bd",
        """\
id: call-due-bd
steps:
  - id: call
    call_task:
      title: Call them
      due: 2bd
""",
        _meta("steps.0", "call_task", "call", due=Dur("2bd", bdays=2, is_bd=True)),
        start=STARTS[1],  # a Friday afternoon: due on Tuesday
    ),
    _regression(
        "approval-timeout-template-banana",
        """\
id: approval-template-bad
vars:
  t: banana
steps:
  - id: ok
    approval:
      approvers: owner
      timeout: "{{ vars.t }}"
""",
        _meta("steps.0", "approval", "ok", content_error=True),
    ),
    _regression(
        "approval-timeout-template-2h",
        """\
id: approval-template-good
vars:
  t: 2h
steps:
  - id: ok
    approval:
      approvers: owner
      timeout: "{{ vars.t }}"
""",
        _meta("steps.0", "approval", "ok", approval_timeout=Dur("{{ vars.t }}", seconds=7200)),
    ),
    _regression(
        "email-timeout-template-2h",
        """\
id: email-template-timeout
vars:
  t: 2h
steps:
  - id: hello
    timeout: "{{ vars.t }}"
    email: { to: "{{ contact.email }}", subject: Hi, body: Hello }
""",
        _meta("steps.0", "email", "hello", timeout=Dur("{{ vars.t }}", seconds=7200)),
    ),
    _regression(
        "email-timeout-and-retry-in-business-days",
        """\
id: email-bd-options
steps:
  - id: hello
    timeout: 2bd
    retry: { initial_interval: 1bd, maximum_interval: 3bd }
    email: { to: "{{ contact.email }}", subject: Hi, body: Hello }
""",
        _meta(
            "steps.0",
            "email",
            "hello",
            timeout=Dur("2bd", bdays=2, is_bd=True),
            retry_initial=Dur("1bd", bdays=1, is_bd=True),
            retry_maximum=Dur("3bd", bdays=3, is_bd=True),
        ),
    ),
    _regression(
        "retry-maximum-below-initial",
        """\
id: retry-order
steps:
  - id: note
    retry: { initial_interval: 1h, maximum_interval: 1m }
    crm: { note: hello }
""",
        _meta("steps.0", "crm", "note"),
    ),
    _regression(
        "retry-maximum-zero",
        """\
id: retry-zero
steps:
  - id: note
    retry: { initial_interval: 30s, maximum_interval: 0s }
    crm: { note: hello }
""",
        _meta("steps.0", "crm", "note"),
    ),
    _regression(
        "run-playbook-timeout-2bd",
        """\
id: child-bd
steps:
  - id: child
    timeout: 2bd
    run_playbook: { id: child-waits, wait: true }
""",
        _meta("steps.0", "run_playbook", "child", timeout=Dur("2bd", bdays=2, is_bd=True)),
    ),
    _regression(
        "retry-interval-template",
        """\
id: retry-template
vars:
  t: 30s
steps:
  - id: note
    retry: { initial_interval: "{{ vars.t }}" }
    crm: { note: hello }
""",
        _meta("steps.0", "crm", "note", retry_initial=Dur("{{ vars.t }}", seconds=30)),
    ),
]


@pytest.mark.parametrize("case", REGRESSIONS)
def test_known_failure(harness: Harness, case: Case) -> None:
    check(harness, case)
