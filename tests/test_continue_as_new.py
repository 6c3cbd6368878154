"""Runs that continue as new behave as runs that do not, on the REAL Temporal dev server.

The dev server is started with `limit.historyCount.suggestContinueAsNew` at SUGGEST events (Temporal's default
is 4,096), so a run is told to continue as new after a few dozen events: a burst of events (signals, each one
`WorkflowExecutionSignaled` + a workflow task) makes a waiting run roll over in a second. The worker is the
in-process, unversioned one `playbook test` builds (engine.runtime.workers.build_worker) with the real
activities over a temporary SQLite database and the outbox provider. Events and answers go to the workflow id
without a run id, as the intake and the API send them, so they reach the live run of the chain.

Each test asserts that continue-as-new really happened (the chain of runs, followed through each history's
WORKFLOW_EXECUTION_CONTINUED_AS_NEW event), then that the run did what a run without it does: deadlines kept,
vars and step results intact, events counted once and not lost, answers used once, effects done once, the
timeline whole, the `state` query answering.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHandle

from activities.crm import BuiltinCrm, seed
from activities.email import OutboxProvider, OutgoingEmail
from activities.playbook_activities import PlaybookActivities
from engine.interpreter.messages import (
    DECIDE_UPDATE,
    EVENT_SIGNAL,
    OUTCOME_UPDATE,
    STATE_QUERY,
    WORKFLOW_NAME,
    Carried,
    Decision,
    DecisionResult,
    Event,
    Outcome,
    RunInput,
    RunResult,
    RunState,
    TimelineEntry,
)
from engine.language.groups import held_out, split_index
from engine.language.model import Playbook
from engine.language.validator import validate_playbook_text
from engine.runtime.connect import quiet_runtime
from engine.runtime.devstack import DevServer
from engine.runtime.workers import build_worker
from engine.storage import models as t
from engine.storage.db import migrate, session

pytestmark = pytest.mark.timeout(120)

# Temporal suggests continue-as-new from this many history events on (its default: 4,096).
SUGGEST = 40
ACCOUNT = {"id": "acc-can", "name": "Chain GmbH", "language": "en", "timezone": "UTC", "plan": "pro", "owner": "csm-1"}
CONTACTS = [{"email": "ada@chain.example", "first_name": "Ada"}]
TEAM = [{"id": "csm-1", "name": "Mia", "email": "mia@success.example", "languages": ["en"]}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    home = tmp_path_factory.mktemp("can-temporal")
    dev = DevServer(
        home, port=0, ui_port=0,
        dynamic_config={"limit.historyCount.suggestContinueAsNew": str(SUGGEST)},
    )
    try:
        asyncio.run(dev.start())
        yield dev
    finally:
        dev.stop(kill=True)


# ------------------------------------------------------------------------------------------ the lab


class GatedOutbox(OutboxProvider):
    """The outbox provider, counting what it is asked to send; an email whose subject starts with a gated
    prefix is held (the activity is in flight) until the test opens the gate."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()  # message id -> times the provider was asked
        self.gates: dict[str, tuple[threading.Event, threading.Event]] = {}  # prefix -> (entered, open)

    def gate(self, prefix: str) -> tuple[threading.Event, threading.Event]:
        self.gates[prefix] = (threading.Event(), threading.Event())
        return self.gates[prefix]

    def send(self, email: OutgoingEmail) -> str:
        for prefix, (entered, opened) in self.gates.items():
            if email.subject.startswith(prefix):
                entered.set()
                opened.wait(25)
        self.sent[email.message_id] += 1
        return super().send(email)


@dataclass
class Lab:
    client: Client
    queue: str
    db_url: str
    outbox: GatedOutbox
    first_runs: dict[str, str] = field(default_factory=dict)  # workflow id -> first run id

    async def start(self, text: str, run_input: RunInput | None = None, **start: Any) -> str:
        workflow_id = f"can/{uuid.uuid4().hex[:10]}"
        handle = await self.client.start_workflow(
            WORKFLOW_NAME, run_input or RunInput(playbook=playbook(text), account_id=ACCOUNT["id"]),
            id=workflow_id, task_queue=self.queue, result_type=RunResult, **start,
        )
        assert handle.first_execution_run_id is not None
        self.first_runs[workflow_id] = handle.first_execution_run_id
        return workflow_id

    def run(self, workflow_id: str) -> WorkflowHandle[Any, RunResult]:
        """The run by workflow id only, as the intake and the API reach it: the live run of its chain."""
        return self.client.get_workflow_handle(workflow_id, result_type=RunResult)

    async def event(self, workflow_id: str, kind: str, n: int = 0, type: str = "usage.reported") -> None:
        await self.run(workflow_id).signal(
            EVENT_SIGNAL, Event(type=type, data={"kind": kind, "n": n}, id=f"evt-{uuid.uuid4().hex[:8]}",
                                account_id=ACCOUNT["id"]),
        )

    async def result(self, workflow_id: str, timeout: float = 60) -> RunResult:
        return await asyncio.wait_for(self.run(workflow_id).result(), timeout)

    async def state(self, workflow_id: str) -> RunState:
        return await self.run(workflow_id).query(STATE_QUERY, result_type=RunState)

    async def chain(self, workflow_id: str) -> list[History]:
        """The histories of the runs of the chain, first to last (followed through CONTINUED_AS_NEW events)."""
        histories = []
        run_id: str | None = self.first_runs[workflow_id]
        while run_id:
            history = await self.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
            histories.append(history)
            last = history.events[-1]
            run_id = (
                last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW else None
            )
        return histories

    async def runs(self, workflow_id: str) -> int:
        return len(await self.chain(workflow_id))

    async def latest_run_id(self, workflow_id: str) -> str:
        return (await self.run(workflow_id).describe()).run_id

    async def feed_until_continued(
        self, workflow_id: str, times: int = 1, kind: str = "noise", timeout: float = 20
    ) -> int:
        """Sends non-matching events until the chain has continued as new ``times`` more times; how many it sent."""
        seen = {await self.latest_run_id(workflow_id)}
        target = len(seen) + times
        deadline = time.monotonic() + timeout
        sent = 0
        while len(seen) < target:
            assert time.monotonic() < deadline, f"no continue-as-new after {sent} events"
            await self.event(workflow_id, kind, n=sent)
            sent += 1
            await asyncio.sleep(0.03)
            seen.add(await self.latest_run_id(workflow_id))
        return sent

    async def pending(self, workflow_id: str, kind: str, run_id: str | None = None, timeout: float = 15) -> str:
        """The id of the approval or task the live run waits on (optionally: once a given run waits on it)."""
        deadline = time.monotonic() + timeout
        while True:
            state = await self.state(workflow_id)
            asks = [p.id for p in state.pending if p.kind == kind]
            if asks and (run_id is None or await self.latest_run_id(workflow_id) == run_id):
                return asks[0]
            assert time.monotonic() < deadline, f"nothing {kind} pending in {workflow_id}: {state}"
            await asyncio.sleep(0.1)

    def rows(self, model: Any, workflow_id: str) -> list[Any]:
        with session(self.db_url) as s:
            return list(s.scalars(select(model).where(model.workflow_id == workflow_id).order_by(model.id)).all())


@asynccontextmanager
async def lab(server: DevServer, tmp_path: Path) -> AsyncIterator[Lab]:
    client = await Client.connect(server.address, runtime=quiet_runtime())
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    seed(db_url, dict(ACCOUNT), [dict(c) for c in CONTACTS], [dict(m) for m in TEAM])
    outbox = GatedOutbox()
    activities = PlaybookActivities(db_url, BuiltinCrm(db_url), outbox)
    queue = f"can-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, queue, activities.all()):
        yield Lab(client, queue, db_url, outbox)


def playbook(text: str) -> Playbook:
    checked = validate_playbook_text(text, "<test>")
    assert checked.ok and checked.playbook is not None, [p.header() for p in checked.problems]
    return checked.playbook


def entries(timeline: list[TimelineEntry], step: str, status: str | None = None) -> list[TimelineEntry]:
    return [e for e in timeline if (e.step_id or e.path) == step and (status is None or e.status == status)]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def naive_utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def continued(histories: list[History]) -> list[int]:
    """Per run, the number of history events (each but the last ends in CONTINUED_AS_NEW)."""
    return [len(h.events) for h in histories]


def run_started(subject: str) -> str:
    return subject.split(" (run started ")[1].rstrip(")")


CONTINUED = "continues as a new run"


def timeline_shape(timeline: list[TimelineEntry]) -> list[tuple[str, str]]:
    """The timeline as ops read it, less the notes that say the run went on as a new run."""
    return [(e.step_id or e.path, e.status) for e in timeline if not e.detail.startswith(CONTINUED)]


# ------------------------------------------------------------------------------------------ a wait


WAIT = """\
id: can-wait
title: A wait that continues as new while events arrive
trigger: { manual: true }
exit_when:
  - event: usage.reported
    match: event.data.kind == "cancelled"
vars:
  greeting: Hello
steps:
  - id: first
    email:
      to: "{{ contact.email }}"
      subject: "{{ vars.greeting }}, {{ account.name }} (run started {{ run.started_at }})"
      body: "Hi {{ contact.first_name }}"
  - id: tag
    set:
      marker: "after-{{ steps.first.status }}"
  - id: pause
    wait: 15s
  - id: after
    email:
      to: "{{ contact.email }}"
      subject: >-
        {{ vars.greeting }} again: {{ vars.marker }} {{ steps.first.message_id }} (run started {{ run.started_at }})
      body: "Hi again"
  - id: late
    wait_for: { event: usage.reported, match: event.data.kind == "late", timeout: 1s }
"""


def test_wait_continues_as_new_and_ends_at_its_deadline(server: DevServer, tmp_path: Path) -> None:
    """A 15 s wait that gets many events of a listened type (wait_for and exit_when listen to usage.reported,
    none matches) continues as new during the wait and ends at its original deadline, not later; the email
    after it uses the vars and the results from before. A run of the same playbook without events, side by
    side, is the reference."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            quiet = await L.start(WAIT)
            busy = await L.start(WAIT)
            # wait until the busy run waits, then push it over the suggestion three times
            await _until(lambda: _waiting(L, busy, "pause"))
            sent = await L.feed_until_continued(busy, times=3)
            during = await L.state(busy)  # the query answers in a continued run, with the whole timeline
            assert during.status == "running" and "pause" in during.current
            assert entries(during.timeline, "first", "done"), "the timeline lost what came before continue-as-new"
            results = await asyncio.gather(L.result(quiet), L.result(busy))
            chains = {wid: await L.chain(wid) for wid in (quiet, busy)}
            return_values = dict(zip((quiet, busy), results, strict=True))
            check(L, quiet, busy, sent, return_values, chains)
            final = await L.state(busy)  # a query on the closed run (replayed by the worker)
            assert final.status == "completed" and final.timeline == return_values[busy].timeline

    def check(L: Lab, quiet: str, busy: str, sent: int, results: dict[str, RunResult],
              chains: dict[str, list[History]]) -> None:
        started_at: dict[str, tuple[str, str]] = {}
        assert len(chains[quiet]) == 1, f"the reference run continued as new: {continued(chains[quiet])}"
        assert len(chains[busy]) >= 4, f"{sent} events, runs {continued(chains[busy])}: expected 3 continue-as-new"
        for wid in (quiet, busy):
            result = results[wid]
            assert result.outcome == "completed", result
            waiting = entries(result.timeline, "pause", "waiting")
            deadline = moment(waiting[0].detail.removeprefix("until "))
            assert {e.detail for e in waiting} == {waiting[0].detail}, "a started-again wait must keep its deadline"
            done = moment(entries(result.timeline, "pause", "done")[0].at)
            assert timedelta(0) <= done - deadline <= timedelta(seconds=2), (wid, deadline, done)
            emails = {e.step_id: e for e in L.rows(t.OutboxEmail, wid)}
            assert set(emails) == {"first", "after"} and all(e.status == "sent" for e in emails.values())
            sent_at = naive_utc(emails["after"].created_at)
            assert timedelta(0) <= sent_at - deadline <= timedelta(seconds=2), (wid, deadline, sent_at)
            # vars and earlier results intact after continue-as-new
            first, after = emails["first"].subject, emails["after"].subject
            assert after.startswith(f"Hello again: after-sent {emails['first'].message_id} ("), after
            started_at[wid] = (run_started(first), run_started(after))
            assert result.steps["late"]["result"]["timed_out"] is True
            assert all(n == 1 for n in L.outbox.sent.values()), L.outbox.sent
        # the continue-as-new happened during the wait: the last run started before the deadline
        deadline = moment(entries(results[busy].timeline, "pause", "waiting")[0].detail.removeprefix("until "))
        last_start = chains[busy][-1].events[0].event_time.ToDatetime().replace(tzinfo=UTC)
        assert last_start < deadline
        # the record is whole: the continued run's timeline holds everything the reference's holds
        busy_shape = timeline_shape(results[busy].timeline)
        for item in timeline_shape(results[quiet].timeline):
            assert item in busy_shape, item
        # run.started_at is the run's start (the chain's), the same in the email before and after continue-as-new
        for wid in (quiet, busy):
            before, after = started_at[wid]
            assert after == before, f"run.started_at was {before} before continue-as-new, {after} after"

    asyncio.run(body())


def test_timeline_of_a_continued_run_reads_as_one_run(server: DevServer, tmp_path: Path) -> None:
    """The timeline a person reads (playbook runs show) is the same with or without continue-as-new: the
    step started again in the new run is not shown as started (and waiting) once per run of the chain."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            text = WAIT.replace("wait: 15s", "wait: 6s")
            quiet, busy = await L.start(text), await L.start(text)
            await _until(lambda: _waiting(L, busy, "pause"))
            await L.feed_until_continued(busy, times=2)
            quiet_result, busy_result = await asyncio.gather(L.result(quiet), L.result(busy))
            assert await L.runs(busy) >= 3 and await L.runs(quiet) == 1
            # one note per continuation, and otherwise the same timeline as the run that never continued
            notes = [e for e in busy_result.timeline if e.kind == "run" and e.detail.startswith(CONTINUED)]
            assert len(notes) == await L.runs(busy) - 1
            assert timeline_shape(busy_result.timeline) == timeline_shape(quiet_result.timeline), (
                "\n".join(f"{e.step_id or e.path:>8} {e.status:<8} {e.detail}" for e in busy_result.timeline)
            )

    asyncio.run(body())


# ------------------------------------------------------------------------------------------ wait_for


WAIT_FOR = """\
id: can-wait-for
title: wait_for across continue-as-new
trigger: { manual: true }
steps:
  - id: ask
    email:
      to: "{{ contact.email }}"
      subject: "GATED: tell us"
      body: "The reply may come while this email is being sent."
  - id: early
    wait_for: { event: usage.reported, match: event.data.kind == "early", timeout: 60s }
  - id: ask_again
    email:
      to: "{{ contact.email }}"
      subject: "And once more"
      body: "..."
  - id: reply
    wait_for: { event: usage.reported, match: event.data.kind == "reply", timeout: 60s }
  - id: thanks
    email:
      to: "{{ contact.email }}"
      subject: "Thanks: {{ steps.early.event.data.n }} and {{ steps.reply.event.data.n }}"
      body: "..."
"""


def test_wait_for_counts_events_from_before_and_after_continue_as_new(server: DevServer, tmp_path: Path) -> None:
    """The event a wait_for waits for, sent while the email before it is being sent (with enough other events
    that the run continues as new before the wait_for starts), counts; a wait_for that continues as new while
    it waits finds the matching event sent after it, once (the second matching event is not used)."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            entered, opened = L.outbox.gate("GATED")
            wid = await L.start(WAIT_FOR)
            assert await asyncio.to_thread(entered.wait, 15), "the gated email was never sent"
            # the email is in flight: the answer beats the wait_for, among events that make the history long
            for n in range(6):
                await L.event(wid, "noise", n)
            await L.event(wid, "early", 1000)
            for n in range(6, 12):
                await L.event(wid, "noise", n)
            await asyncio.sleep(0.5)
            opened.set()
            await _until(lambda: _waiting(L, wid, "reply"))
            assert await L.runs(wid) >= 2, "the run did not continue as new between the email and the wait_for"
            # reply waits: non-matching events until it continues as new, then the answer twice
            before = await L.runs(wid)
            await L.feed_until_continued(wid, times=2)
            await L.event(wid, "reply", 2000)
            await L.event(wid, "reply", 2001)
            result = await L.result(wid)
            histories = await L.chain(wid)
            assert len(histories) >= before + 2, continued(histories)
            assert result.outcome == "completed", result
            steps = result.steps
            assert steps["early"]["result"]["timed_out"] is False
            assert steps["early"]["result"]["event"]["data"] == {"kind": "early", "n": 1000}
            assert steps["reply"]["result"]["timed_out"] is False
            assert steps["reply"]["result"]["event"]["data"] == {"kind": "reply", "n": 2000}
            assert len(entries(result.timeline, "reply", "done")) == 1
            assert len(entries(result.timeline, "early", "done")) == 1
            emails = L.rows(t.OutboxEmail, wid)
            assert [e.step_id for e in emails] == ["ask", "ask_again", "thanks"], [e.step_id for e in emails]
            assert emails[-1].subject == "Thanks: 1000 and 2000"
            assert all(n == 1 for n in L.outbox.sent.values()), L.outbox.sent

    asyncio.run(body())


WAIT_THEN_WAIT_FOR = """\
id: can-wait-then-wait-for
title: An event that comes during a wait counts for the wait_for right after it
trigger: { manual: true }
steps:
  - id: pause
    wait: 5s
  - id: answer
    wait_for: { event: usage.reported, match: event.data.kind == "answer", timeout: 3s }
"""


def test_event_during_a_continued_wait_counts_for_the_next_wait_for(server: DevServer, tmp_path: Path) -> None:
    """wait_for counts events from the moment the step before it started: an answer that comes during the
    wait before it counts. The same when that wait continued as new after the answer came."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            quiet, busy = await L.start(WAIT_THEN_WAIT_FOR), await L.start(WAIT_THEN_WAIT_FOR)
            await _until(lambda: _waiting(L, quiet, "pause"))
            await _until(lambda: _waiting(L, busy, "pause"))
            await L.event(quiet, "answer", 7)
            await L.event(busy, "answer", 7)
            await L.feed_until_continued(busy, times=1)
            quiet_result, busy_result = await asyncio.gather(L.result(quiet), L.result(busy))
            assert await L.runs(quiet) == 1 and await L.runs(busy) >= 2
            assert quiet_result.steps["answer"]["result"]["timed_out"] is False  # the reference
            found = {wid: r.steps["answer"]["result"] for wid, r in ((quiet, quiet_result), (busy, busy_result))}
            assert found[busy]["timed_out"] is False and found[busy]["event"]["data"] == {"kind": "answer", "n": 7}, (
                f"the answer that came during the wait was lost after continue-as-new: {found[busy]} "
                f"(without continue-as-new: {found[quiet]})"
            )

    asyncio.run(body())


# ------------------------------------------------------------------------------------------ people answering


ASKS = """\
id: can-asks
title: An approval and a call task, each waiting through continue-as-new
trigger: { manual: true }
exit_when:
  - event: usage.reported
    match: event.data.kind == "cancelled"
steps:
  - id: offer
    email:
      to: "{{ contact.email }}"
      subject: "Offer for {{ account.name }}"
      body: "Draft"
      approval:
        approvers: owner
        timeout: 1h
  - id: call
    call_task:
      assignee: owner
      title: "Call {{ account.name }}"
      wait: true
      timeout: 1h
      outcomes: [reached, no_answer]
  - id: wrap_up
    email:
      to: "{{ contact.email }}"
      subject: "Offer {{ steps.offer.decision }} by {{ steps.offer.by }}; call {{ steps.call.outcome }}"
      body: "..."
"""


def test_answers_reach_the_continued_run_and_are_used_once(server: DevServer, tmp_path: Path) -> None:
    """An email with approval and a call task (wait: true) each wait while many events arrive, continue as new,
    and are then answered through the run's updates by workflow id: each answer is used once, the approval and
    task rows are found again by key (not created twice), each email goes out once."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            wid = await L.start(ASKS)
            approval_id = await L.pending(wid, "approval")
            first_run = await L.latest_run_id(wid)
            await L.feed_until_continued(wid, times=2)
            run_now = await L.latest_run_id(wid)
            assert run_now != first_run
            assert await L.pending(wid, "approval", run_id=run_now) == approval_id  # found again by key
            decided = await L.run(wid).execute_update(
                DECIDE_UPDATE, Decision(decision="approve", by="csm-1", approval_id=approval_id,
                                        edits={"subject": "Edited offer"}),
                result_type=DecisionResult,
            )
            assert decided.approval_id == approval_id
            task_id = await L.pending(wid, "call_task")
            await L.feed_until_continued(wid, times=2)
            assert await L.pending(wid, "call_task", run_id=await L.latest_run_id(wid)) == task_id
            await L.run(wid).execute_update(
                OUTCOME_UPDATE, Outcome(outcome="reached", by="csm-1", task_id=task_id), result_type=str,
            )
            result = await L.result(wid)
            histories = await L.chain(wid)
            assert len(histories) >= 5, continued(histories)
            assert result.outcome == "completed", result
            assert result.steps["offer"]["result"]["decision"] == "approved"
            assert result.steps["call"]["result"]["outcome"] == "reached"
            approvals = L.rows(t.Approval, wid)
            assert [(a.approval_id, a.status, a.decided_by) for a in approvals] == [(approval_id, "approved", "csm-1")]
            tasks = L.rows(t.CallTask, wid)
            assert [(x.task_id, x.status, x.outcome) for x in tasks] == [(task_id, "done", "reached")]
            emails = L.rows(t.OutboxEmail, wid)
            assert [(e.step_id, e.subject) for e in emails] == [
                ("offer", "Edited offer"), ("wrap_up", "Offer approved by csm-1; call reached"),
            ]
            assert sorted(L.outbox.sent.values()) == [1, 1]
            # each answer was used in exactly one run of the chain, once
            for update in (DECIDE_UPDATE, OUTCOME_UPDATE):
                accepted = [
                    i for i, h in enumerate(histories) for e in h.events
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
                    and e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name == update
                ]
                assert len(accepted) == 1, (update, accepted)
            assert len(entries(result.timeline, "offer", "done")) == 1
            assert len(entries(result.timeline, "call", "done")) == 1

    asyncio.run(body())


# ------------------------------------------------------------------------------------------ exit_when


EXIT = """\
id: can-exit
title: An exit event after continue-as-new
trigger: { manual: true }
exit_when:
  - event: usage.reported
    match: event.data.kind == vars.stop_kind
vars:
  stop_kind: cancelled
steps:
  - id: hello
    email:
      to: "{{ contact.email }}"
      subject: "Hello"
      body: "..."
  - id: hold
    wait: 60s
  - id: never
    email:
      to: "{{ contact.email }}"
      subject: "Never"
      body: "..."
"""


def test_exit_when_after_continue_as_new_ends_the_run(server: DevServer, tmp_path: Path) -> None:
    """An exit_when event (its rule uses the run's vars) sent as soon as the chain's newest run exists ends the
    run as exited. Sent that early it often reaches the new run in its very first workflow task; the next test
    puts it there every time."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            wid = await L.start(EXIT)
            await _until(lambda: _waiting(L, wid, "hold"))
            await L.feed_until_continued(wid, times=2)
            await L.event(wid, "cancelled", 99)
            try:
                result = await L.result(wid, timeout=20)
            except TimeoutError:
                pytest.fail(f"the exit event did not end the run: {await _where_the_event_went(L, wid, 'cancelled')}")
            assert await L.runs(wid) >= 3
            assert (result.outcome, result.reason) == ("exited", "exit on event usage.reported")
            assert entries(result.timeline, "hello", "done"), "the timeline lost what came before continue-as-new"
            assert [e.step_id for e in L.rows(t.OutboxEmail, wid)] == ["hello"]
            state = await L.state(wid)
            assert state.status == "exited"

    asyncio.run(body())


@pytest.mark.parametrize("match", ['event.data.kind == "cancelled"', "event.data.kind == vars.stop_kind"])
def test_exit_event_in_the_first_moment_of_a_continued_run(server: DevServer, tmp_path: Path, match: str) -> None:
    """An event that reaches the new run of a chain in its very first workflow task (one sent while the old run
    was continuing as new) is judged as the old run would judge it, with the carried vars and account. The new
    run is started here as continue-as-new starts it (a RunInput with `carried`), with the event delivered with
    the start (signal-with-start: the same first activation). The rule without vars is the control."""

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            text = EXIT.replace("match: event.data.kind == vars.stop_kind", f"match: {match}")
            pb = playbook(text)
            now = datetime.now(UTC)
            carried = Carried(
                next_step=1, since=0, account={"id": ACCOUNT["id"], "name": ACCOUNT["name"], "owner": None},
                contacts=[dict(c) for c in CONTACTS], event=None, timezone="UTC", vars={"stop_kind": "cancelled"},
                steps={"hello": {"status": "done"}}, statuses={"hello": {"status": "done", "result": {}}},
                timeline=[TimelineEntry(now.isoformat(), "steps[0]", "hello", "email", "done", "")], timeline_dropped=0,
                deadlines={}, seq=5, events=[], continued=1,
            )
            wid = await L.start(
                text, RunInput(playbook=pb, account_id=ACCOUNT["id"], carried=carried),
                start_signal=EVENT_SIGNAL,
                start_signal_args=[Event(type="usage.reported", data={"kind": "cancelled"}, account_id=ACCOUNT["id"])],
            )
            try:
                result = await L.result(wid, timeout=5)
            except TimeoutError:
                state = await L.state(wid)
                pytest.fail(f"the exit event was not judged with the carried vars: the run goes on ({state.status}, "
                            f"at {state.current})")
            assert result.outcome == "exited", result

    asyncio.run(body())


# ------------------------------------------------------------------------------------------ helpers


async def _where_the_event_went(L: Lab, workflow_id: str, kind: str) -> str:
    """Which run of the chain got the event, and whether in that run's first workflow task (before the run's
    code had restored what it carried)."""
    for index, history in enumerate(await L.chain(workflow_id)):
        first_task_done = next(
            (e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED), None
        )
        for e in history.events:
            if e.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                continue
            if f'"kind":"{kind}"'.encode() in e.workflow_execution_signaled_event_attributes.input.payloads[0].data:
                moment = "in its first workflow task" if first_task_done is None or e.event_id < first_task_done \
                    else "after its first workflow task"
                return (f"run {index + 1} of the chain got it as history event {e.event_id}, {moment} "
                        f"(first WorkflowTaskCompleted: {first_task_done})")
    return "no run of the chain got it"


async def _waiting(L: Lab, workflow_id: str, step: str) -> bool:
    state = await L.state(workflow_id)
    return step in state.current and any(e.status == "waiting" for e in entries(state.timeline, step))


async def _until(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------- groups (settings.control, split)


GROUPS = """\
id: {id}
title: A control group and a split across continue-as-new
trigger: {{ manual: true }}
settings:
  control: 50%
steps:
  - id: hello
    email:
      to: "{{{{ contact.email }}}}"
      subject: "Hello"
      body: "..."
  - id: hold
    wait: 8s
  - id: offer
    split:
      paths:
        - name: a
          weight: 1
          steps:
            - id: offer_a
              email: {{ to: "{{{{ contact.email }}}}", subject: "Offer A", body: "..." }}
        - name: b
          weight: 1
          steps:
            - id: offer_b
              email: {{ to: "{{{{ contact.email }}}}", subject: "Offer B", body: "..." }}
"""


def test_the_control_group_and_the_split_hold_across_continue_as_new(server: DevServer, tmp_path: Path) -> None:
    """acc-can is held out of `can-held-out` and treated by `can-treated` (50% each, drawn by the account id as the
    enrollment key), and draws path a of the first's split and b of the second's. Both runs continue as new
    twice while they wait, before the split: the held-out run still sends nothing and the treated one sends its
    path's offer once: the group and the key are carried, not drawn again."""
    assert held_out("can-held-out", ACCOUNT["id"], 50) and not held_out("can-treated", ACCOUNT["id"], 50)
    paths = {pid: "ab"[split_index(pid, "offer", ACCOUNT["id"], [1, 1])] for pid in ("can-held-out", "can-treated")}
    assert paths == {"can-held-out": "a", "can-treated": "b"}

    async def body() -> None:
        async with lab(server, tmp_path) as L:
            held = await L.start(GROUPS.format(id="can-held-out"))
            treated = await L.start(GROUPS.format(id="can-treated"))
            for wid in (held, treated):
                await _until(lambda wid=wid: _waiting(L, wid, "hold"))
                await L.feed_until_continued(wid, times=2)
            results = dict(zip((held, treated), await asyncio.gather(L.result(held), L.result(treated)), strict=True))
            for wid in (held, treated):
                assert await L.runs(wid) >= 3
            held_result, treated_result = results[held], results[treated]
            assert held_result.control is True and treated_result.control is False
            assert held_result.steps["offer"]["result"]["path"] == "a"
            assert treated_result.steps["offer"]["result"]["path"] == "b"
            assert held_result.steps["offer_a"]["status"] == "skipped"
            assert held_result.steps["offer_a"]["result"]["reason"] == "control"
            assert held_result.steps["offer_b"]["status"] == "not_run"
            assert L.rows(t.OutboxEmail, held) == []
            assert [(e.step_id, e.subject) for e in L.rows(t.OutboxEmail, treated)] == [
                ("hello", "Hello"), ("offer_b", "Offer B")
            ]
            assert all(n == 1 for n in L.outbox.sent.values()), L.outbox.sent

    asyncio.run(body())
