"""Events at random moments of a run's life, on the real Temporal dev server (issue 9, item 1).

Hundreds of runs of two playbooks, each started by its trigger through ``take_event`` (what POST /events runs),
then sent its exit or its awaited event at a random moment after the trigger's ``take_event`` returned: at once,
a few ms later, while an email activity runs, when it has just finished, during a wait, at a timer's edge, when
the run has just continued as new or is about to, and after the run has ended. Seeded: EVENT_TIMING_SEED=<n>
reproduces a failure (the seed is printed).

What must hold, read from the real Temporal histories (every run of each continue-as-new chain) and from the
engine's outbox:

* exit runs: every exit event reached its run (``delivered_to`` names it) unless the run had completed before the
  post (its close time is before the post returned); a run that got its exit ended as ``exited``; no effect
  activity was scheduled after the WorkflowExecutionSignaled event that carried the exit (an activity scheduled
  before may still finish: counted and printed); the outbox holds only emails scheduled before the exit.
* wait_for runs: the matching event was seen (``timed_out`` false, the follow-up email ``thanks``) exactly when the
  history says it arrived after the step before the wait_for started (docs: only events from then on count) and
  no later than the workflow task in which the timeout fired; this includes events that came during the email
  activity before the wait started and events that came across continue-as-new; else ``timed_out`` true and the
  ``nudge`` email. Non-matching events of the awaited type (sent to make the history long) never count.
* continue-as-new happens (the server suggests it at 40 history events here), and events around it are not lost.

How a moment is judged from a history: an event recorded in history is delivered to the workflow in the workflow
task that completes next (its activation); within one activation signals are handled before everything else
(sdk-core's job order), so a signal is handled before a step whose first command was produced in the same or a
later activation.

Aiming: the worker (tests/event_timing_worker.py, a child process: the production ``build_worker`` and activities) sends
email through a slow outbox (0.3 s a send) that reports when each send started and ended, so a post can aim at an
activity; a post at a timer's edge follows the run's history (a long poll) to its TimerStarted and aims at the moment
the timer is due. The dev server's and the engine's SQLite files live in /dev/shm (on this VM's disk each history
write waits for an fsync and workflow tasks waited ~1 s, median, under this load).

Knobs (environment): EVENT_TIMING_SEED, EVENT_TIMING_SCALE (0.1: a tenth of the runs), EVENT_TIMING_MODES
(zero,ms,activity,activity_end,wait,timer_edge,timeout_edge,can_after,can_race,late,never), EVENT_TIMING_CONCURRENCY,
EVENT_TIMING_VERBOSE=1 (one line per run: where its event landed). ``pytest -s`` prints the summary.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from activities.crm import seed
from engine.interpreter.messages import Event
from engine.language.model import Playbook
from engine.language.validator import validate_playbook_text
from engine.runtime.devstack import DevServer
from engine.runtime.intake import take_event
from engine.storage import models as t
from engine.storage.db import migrate, session
from tests.event_timing_worker import run_worker

pytestmark = pytest.mark.timeout(300)

SEED = int(os.environ.get("EVENT_TIMING_SEED", "20240901"))
WAIT_SECONDS = 2.0  # the exit playbook's waits
ANSWER_TIMEOUT = 10.0  # the wait_for playbook's timeout
SUGGEST_CONTINUE_AS_NEW = 40  # history events: the server suggests continue-as-new from here (default 4,096)
CONCURRENCY = int(os.environ.get("EVENT_TIMING_CONCURRENCY", "32"))  # runs being driven at once
ONLY = [m for m in os.environ.get("EVENT_TIMING_MODES", "").split(",") if m]  # only these moments (debugging)
VERBOSE = bool(os.environ.get("EVENT_TIMING_VERBOSE"))  # one line per run: where its event landed
SCALE = float(os.environ.get("EVENT_TIMING_SCALE", "1"))  # fewer runs per moment while debugging (e.g. 0.1)

EXIT_PLAYBOOK = f"""\
id: timing-exit
title: Renewal emails that a cancellation ends
trigger:
  event: account.renewal_due
exit_when:
  - event: account.cancelled
  - event: health.score_changed
    match: event.data.score >= 80
    goal: true
steps:
  - id: first
    email:
      to: "{{{{ contact.email }}}}"
      subject: first
      body: "Hi {{{{ contact.first_name }}}}, your renewal is due."
  - wait: {int(WAIT_SECONDS)}s
  - id: second
    email:
      to: "{{{{ contact.email }}}}"
      subject: second
      body: "A reminder."
  - wait: {int(WAIT_SECONDS)}s
  - id: third
    email:
      to: "{{{{ contact.email }}}}"
      subject: third
      body: "The last reminder."
"""

WAIT_FOR_PLAYBOOK = f"""\
id: timing-wait-for
title: A survey and its answer
trigger:
  event: survey.sent
steps:
  - id: ask
    email:
      to: "{{{{ contact.email }}}}"
      subject: ask
      body: "How are we doing?"
  - id: answer
    wait_for:
      event: survey.answered
      match: event.data.final == true
      timeout: {int(ANSWER_TIMEOUT)}s
  - id: thanks
    when: not steps.answer.timed_out
    email:
      to: "{{{{ contact.email }}}}"
      subject: thanks
      body: "Thanks for your {{{{ steps.answer.event.data.score }}}}."
  - id: nudge
    when: steps.answer.timed_out
    email:
      to: "{{{{ contact.email }}}}"
      subject: nudge
      body: "Still there?"
"""

EFFECTS = {"send_email", "create_call_task", "update_crm", "assign_owner", "create_approval"}
EXIT_EMAILS = ("first", "second", "third")

# How many runs try each moment (hundreds in all).
EXIT_MODES = {
    "zero": 20,  # the exit at once after the trigger returned
    "ms": 20,  # 1-30 ms later
    "activity": 25,  # while email 1, 2 or 3 is being sent
    "activity_end": 15,  # as soon as email 1 or 2 has been sent
    "wait": 20,  # during wait 1 or 2
    "timer_edge": 30,  # when wait 1 or 2 is due (-50..+100 ms), aimed from the TimerStarted event
    "can_after": 20,  # non-matching listened events until the run continued as new, then the exit
    "can_race": 10,  # a few non-matching listened events, the exit right after the last
    "late": 10,  # 0-1.5 s after the third email was sent: around the run's end, often after it
}
WAIT_FOR_MODES = {
    "zero": 10,  # the answer at once (before the email started: by design not counted)
    "ms": 10,
    "activity": 15,  # while the survey email is being sent (before the wait_for started)
    "activity_end": 15,  # as soon as the email has been sent (the wait_for has not started yet)
    "wait": 15,  # during the wait_for
    "timeout_edge": 20,  # when the timeout is due (-50..+100 ms)
    "can_after": 12,  # non-matching answers until the run continued as new, then the answer
    "can_race": 8,  # non-matching answers, the answer right after the last
    "never": 5,  # non-matching answers only
}


def _playbook(text: str) -> Playbook:
    result = validate_playbook_text(text, "<test>")
    assert result.ok and result.playbook is not None, [p.header() for p in result.problems]
    return result.playbook


class TimingDevServer(DevServer):
    """The dev server with continue-as-new suggested early, for this test's server only."""

    def command(self) -> list[str]:
        value = f"limit.historyCount.suggestContinueAsNew={SUGGEST_CONTINUE_AS_NEW}"
        return [*super().command(), "--dynamic-config-value", value]


class Marks:
    """When each email (recipient, subject) started and was sent, as the worker's slow outbox reports it (a thread
    reads the worker process's queue); the driver can wait for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: dict[tuple[str, str, str], float] = {}
        self.waiters: dict[tuple[str, str, str], asyncio.Future[float]] = {}

    def listen(self, queue: Any) -> threading.Thread:
        def read() -> None:
            while (mark := queue.get()) is not None:
                self.loop.call_soon_threadsafe(self._set, *mark)

        thread = threading.Thread(target=read, name="email-marks", daemon=True)
        thread.start()
        return thread

    def _set(self, key: tuple[str, str, str], at: float) -> None:
        self.times.setdefault(key, at)
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self.times[key])

    async def wait(self, key: tuple[str, str, str], timeout: float = 40.0) -> float | None:
        """When the email started or was sent; None if it was not after ``timeout`` seconds."""
        if key in self.times:
            return self.times[key]
        waiter = self.waiters.setdefault(key, self.loop.create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return None


@dataclass
class Post:
    kind: str  # exit | noise | answer
    event_id: str
    offset_ms: float  # after the trigger's take_event returned
    returned_at: float  # wall clock (time.time()) when take_event returned
    delivered: bool


@dataclass
class Plan:
    index: int
    group: str  # exit | wait_for
    mode: str
    params: dict[str, Any]
    account: str = ""
    address: str = ""
    workflow_id: str = ""
    t0: float = 0.0
    posts: list[Post] = field(default_factory=list)
    count: int = 0

    def post_of(self, kind: str) -> Post | None:
        return next((p for p in self.posts if p.kind == kind), None)


def make_plans(rng: random.Random) -> list[Plan]:
    plans: list[Plan] = []
    for group, modes in (("exit", EXIT_MODES), ("wait_for", WAIT_FOR_MODES)):
        for mode, n in modes.items():
            if ONLY and mode not in ONLY:
                continue
            for _ in range(max(1, round(n * SCALE))):
                plans.append(Plan(0, group, mode, draw(rng, group, mode)))
    rng.shuffle(plans)
    for i, plan in enumerate(plans):
        plan.index = i
        plan.account = f"acc-{i:03d}-{plan.group}-{plan.mode}"
        plan.address = f"buyer{i:03d}@customer{i:03d}.example"
    return plans


def draw(rng: random.Random, group: str, mode: str) -> dict[str, Any]:
    """Every random choice of a run, drawn up front: the same seed gives the same plans whatever the scheduling."""
    email = "ask"
    if group == "exit":
        email = rng.choice({"activity": EXIT_EMAILS, "late": ("third",)}.get(mode, EXIT_EMAILS[:2]))
    timer = WAIT_SECONDS if group == "exit" else ANSWER_TIMEOUT
    return {
        "email": email,
        "delay": {
            "zero": 0.0,
            "ms": rng.uniform(0.001, 0.030),
            "activity": rng.uniform(0.0, 0.2),
            "activity_end": 0.0,
            "wait": rng.uniform(0.2, timer - 0.2),
            "timer_edge": rng.uniform(-0.05, 0.1),  # from the moment the timer is due
            "timeout_edge": rng.uniform(-0.05, 0.1),
            "can_after": rng.choice([0.0, 0.0, rng.uniform(0.0, 0.3)]),
            "late": rng.uniform(0.0, 1.5),
        }.get(mode, 0.0),
        "noise": rng.randint(2, 6) if mode in ("can_race", "never") else 40,  # can_after: until the run continued
        "gaps": [rng.uniform(0.02, 0.1) if mode == "can_race" else rng.uniform(0.03, 0.15) for _ in range(40)],
    }


@dataclass
class World:
    client: Client
    queue: str
    db_url: str
    library: dict[str, Playbook]
    marks: Marks


TRIGGERS = {"exit": ("account.renewal_due", "timing-exit"), "wait_for": ("survey.sent", "timing-wait-for")}
EXIT_EVENT: tuple[str, dict[str, Any]] = ("account.cancelled", {"reason": "moved to a competitor"})
EXIT_NOISE = "health.score_changed"  # listened (an exit rule with a match), never matching here
ANSWER_EVENT = "survey.answered"


async def post(world: World, plan: Plan, kind: str, type_: str, data: dict[str, Any]) -> Post:
    plan.count += 1
    event = Event(type=type_, data=data, id=f"{plan.account}/{kind}-{plan.count}", account_id=plan.account)
    offset = (time.monotonic() - plan.t0) * 1000
    answer = await take_event(world.client, world.queue, world.db_url, world.library, event)
    assert answer.runs == [], (plan.account, answer)
    record = Post(kind, event.id or "", offset, time.time(), plan.workflow_id in answer.delivered_to)
    plan.posts.append(record)
    return record


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def current_run(world: World, plan: Plan) -> str:
    """The run id of the workflow id's live (or last) run. (Not compared with describe's first_run_id: this dev
    server gives a first_run_id other than the run id to a run that never continued as new.)"""
    return (await world.client.get_workflow_handle(plan.workflow_id).describe()).run_id or ""


async def stuck(world: World, plan: Plan) -> str:
    """What Temporal says of a run that does not get on."""
    d = (await world.client.get_workflow_handle(plan.workflow_id).describe()).raw_description
    info = d.workflow_execution_info
    pending = [(a.activity_type.name, a.state, a.attempt, a.last_failure.message[:200]) for a in d.pending_activities]
    task = d.pending_workflow_task
    waited = time.time() - task.scheduled_time.ToMicroseconds() / 1e6 if task.HasField("scheduled_time") else None
    queue = await world.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=world.client.namespace, task_queue=TaskQueue(name=world.queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, report_stats=True))
    pollers = [(p.identity, round(time.time() - p.last_access_time.ToMicroseconds() / 1e6, 1)) for p in queue.pollers]
    return (f"status {info.status}, {info.history_length} events, pending activities {pending}, workflow task "
            f"{task.state} attempt {task.attempt} waiting {waited}s; queue pollers (identity, seconds since) "
            f"{pollers}, "
            f"backlog {queue.stats}")


async def timer_started(world: World, plan: Plan, nth: int, timeout: float = 40.0) -> float | None:
    """When (wall clock, the server's) the run's nth timer started, from its history as it grows (a long poll)."""

    async def follow() -> float | None:
        seen = 0
        async for event in world.client.get_workflow_handle(plan.workflow_id).fetch_history_events(wait_new_event=True):
            if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
                seen += 1
                if seen == nth:
                    return event.event_time.ToMicroseconds() / 1e6
        return None  # the run ended (or continued as new) first

    try:
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        return None


async def drive(world: World, plan: Plan) -> None:
    trigger, playbook_id = TRIGGERS[plan.group]
    started = await take_event(
        world.client, world.queue, world.db_url, world.library,
        Event(type=trigger, data={}, id=f"{plan.account}/trigger", account_id=plan.account),
        {"name": f"Account {plan.index}", "owner": "csm-1"},
        [{"email": plan.address, "first_name": f"Buyer{plan.index}"}],
    )
    assert [(r.playbook, r.status) for r in started.runs] == [(playbook_id, "started")], started
    plan.workflow_id = started.runs[0].run_id
    plan.t0 = time.monotonic()
    p = plan.params
    if plan.group == "exit":
        (type_, data), kind = EXIT_EVENT, "exit"
        noise: tuple[str, Any] = (EXIT_NOISE, lambda i: {"score": 10 + i})
    else:
        kind, type_, data = "answer", ANSWER_EVENT, {"final": True, "score": 9}
        noise = (ANSWER_EVENT, lambda i: {"final": False, "score": i})
    mode = plan.mode
    if mode in ("ms", "zero"):
        await sleep_until(plan.t0 + p["delay"])
    elif mode in ("timer_edge", "timeout_edge"):
        # the timer after email 1 or 2, or the wait_for's timeout: due `timer` seconds after its TimerStarted
        nth, length = (EXIT_EMAILS.index(p["email"]) + 1, WAIT_SECONDS) if plan.group == "exit" else (1, ANSWER_TIMEOUT)
        started_at = await timer_started(world, plan, nth)
        if started_at is None:
            raise AssertionError(f"timer {nth} not started after 40 s: {await stuck(world, plan)}")
        await sleep_until(time.monotonic() + (started_at + length + p["delay"] - time.time()))
    elif mode in ("activity", "activity_end", "wait", "late"):
        phase = "started" if mode == "activity" else "sent"
        moment = await world.marks.wait((plan.address, p["email"], phase))
        if moment is None:
            raise AssertionError(f"email {p['email']} not {phase} after 40 s: {await stuck(world, plan)}")
        await sleep_until(moment + p["delay"])
    elif mode in ("can_after", "can_race", "never"):
        first_run = await current_run(world, plan)  # milliseconds after the start: the chain's first run
        for i in range(p["noise"]):
            await post(world, plan, "noise", noise[0], noise[1](i))
            if mode == "can_after" and await current_run(world, plan) != first_run:
                await asyncio.sleep(p["delay"])
                break
            if i + 1 < p["noise"]:
                await asyncio.sleep(p["gaps"][i])
        if mode == "never":
            return
    await post(world, plan, kind, type_, data)


# ------------------------------------------------------------------------------------------ histories


@dataclass
class Run:
    """One run of a chain: its events, and for each event id the activation (the id of the WorkflowTaskCompleted)
    that delivered it to the workflow, or that produced it (for commands)."""

    index: int
    events: list[HistoryEvent]

    def __post_init__(self) -> None:
        completed = [e.event_id for e in self.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
        self.completed = completed

    def delivered_in(self, event_id: int) -> float:
        """The activation in which the workflow saw this event (inf: never, the run ended first)."""
        return next((c for c in self.completed if c > event_id), float("inf"))

    def produced_in(self, event_id: int) -> int:
        """The activation whose commands recorded this event."""
        return max(c for c in self.completed if c < event_id)

    def of_type(self, kind: int) -> list[HistoryEvent]:
        return [e for e in self.events if e.event_type == kind]


def payload_json(payloads: Any) -> Any:
    return json.loads(payloads.payloads[0].data) if payloads.payloads else None


@dataclass
class Chain:
    workflow_id: str
    runs: list[Run]

    @property
    def last(self) -> Run:
        return self.runs[-1]

    def result(self) -> dict[str, Any]:
        close = self.last.events[-1]
        assert close.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, (
            self.workflow_id, EventType.Name(close.event_type), str(close)[:2000])
        return payload_json(close.workflow_execution_completed_event_attributes.result)

    def close_time(self) -> float:
        return self.last.events[-1].event_time.ToMicroseconds() / 1e6

    def signal(self, event_id: str) -> tuple[Run, HistoryEvent] | None:
        for run in self.runs:
            for e in run.of_type(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED):
                if (payload_json(e.workflow_execution_signaled_event_attributes.input) or {}).get("id") == event_id:
                    return run, e
        return None

    def scheduled(self) -> list[tuple[Run, HistoryEvent, str, str]]:
        """Activities scheduled: (run, event, activity name, step id)."""
        found = []
        for run in self.runs:
            for e in run.of_type(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED):
                attrs = e.activity_task_scheduled_event_attributes
                arg = payload_json(attrs.input) or {}
                step = (arg.get("ref") or {}).get("step_id") or ""
                found.append((run, e, attrs.activity_type.name, step))
        return found


def compact(chain: Chain) -> str:
    """A chain's history, one short line per event: what a failure report needs."""
    lines = []
    base = chain.runs[0].events[0].event_time.ToMilliseconds()
    for run in chain.runs:
        for e in run.events:
            name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
            detail = ""
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                detail = (payload_json(e.workflow_execution_signaled_event_attributes.input) or {}).get("id", "")
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = e.activity_task_scheduled_event_attributes
                ref = (payload_json(attrs.input) or {}).get("ref") or {}
                detail = f"{attrs.activity_type.name} {ref.get('step_id')}"
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                continue
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                failed = e.workflow_task_failed_event_attributes
                detail = f"{failed.cause} {failed.failure.message[:300]!r}"
            lines.append(f"    run {run.index} #{e.event_id} +{e.event_time.ToMilliseconds() - base}ms {name} {detail}")
    return "\n".join(lines)


ACTIVITY_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def activity_closed(run: Run, scheduled_id: int) -> HistoryEvent | None:
    for e in run.events:
        name = ACTIVITY_CLOSED.get(e.event_type)
        if name and getattr(e, name).scheduled_event_id == scheduled_id:
            return e
    return None


async def fetch_chain(client: Client, workflow_id: str) -> Chain:
    """Every run of the workflow id's continue-as-new chain, first to last."""
    runs = [list((await client.get_workflow_handle(workflow_id).fetch_history()).events)]
    while True:
        previous = runs[0][0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        runs.insert(0, list((await client.get_workflow_handle(workflow_id, run_id=previous).fetch_history()).events))
    return Chain(workflow_id, [Run(i, events) for i, events in enumerate(runs)])


# ------------------------------------------------------------------------------------------ the checks


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    histories: list[str] = field(default_factory=list)
    failing: dict[str, str] = field(default_factory=dict)  # account -> its moment (group/mode)
    landed: dict[str, str] = field(default_factory=dict)  # account -> where its exit or answer landed

    def problem(self, plan: Plan, text: str) -> None:
        self.failing[plan.account] = f"{plan.group}/{plan.mode}"
        self.problems.append(f"{plan.account} ({plan.group}/{plan.mode}, params {_short(plan.params)}): {text}")

    def history(self, plan: Plan, chain: Chain) -> None:
        if len(self.histories) < 5:
            posts = ", ".join(f"{p.event_id} +{p.offset_ms:.0f}ms {'delivered' if p.delivered else 'NOT delivered'}"
                              for p in plan.posts)
            self.histories.append(f"  {plan.workflow_id}: posts {posts}\n{compact(chain)}")


def _short(params: dict[str, Any]) -> str:
    return f"email={params['email']} delay={params['delay'] * 1000:.0f}ms"


def check_exit(plan: Plan, chain: Chain, rows: list[t.OutboxEmail], tally: Tally) -> None:
    result = chain.result()
    exit_post = plan.post_of("exit")
    assert exit_post is not None
    scheduled = chain.scheduled()
    sent = {r.step_id for r in rows if r.status == "sent"}
    for noise in (p for p in plan.posts if p.kind == "noise"):
        if not noise.delivered and chain.close_time() > noise.returned_at:
            tally.problem(plan, f"non-matching event {noise.event_id} reached no run, yet the run was still open")
    if not exit_post.delivered:
        # Only a run that had ended may miss it: then it completed, before the post returned.
        tally.counts["exit after the run completed (not delivered)"] += 1
        tally.landed[plan.account] = "after the run completed"
        if chain.signal(exit_post.event_id) is not None:
            tally.problem(plan, "the exit is in the history but take_event did not name the run in delivered_to")
        if result["outcome"] != "completed" or chain.close_time() > exit_post.returned_at + 0.001:
            late = chain.close_time() - exit_post.returned_at
            tally.problem(plan, f"the exit posted at +{exit_post.offset_ms:.0f} ms reached no run, but the run was "
                                f"open then (outcome {result['outcome']}, closed {late:+.3f} s after the post "
                                "returned)")
        if sent != set(EXIT_EMAILS):
            tally.problem(plan, f"completed run sent {sorted(s or '' for s in sent)}")
        return
    found = chain.signal(exit_post.event_id)
    if found is None:
        tally.problem(plan, "delivered_to names the run but no run of its chain has the exit signal")
        return
    run, signal = found
    at = run.delivered_in(signal.event_id)
    if result["outcome"] != "exited":
        tally.problem(plan, f"got the exit (run {run.index}, event {signal.event_id}) but ended {result['outcome']}: "
                            f"{result.get('reason')}")
    # No effect after the exit: nothing scheduled in a later activation of this run, or in a later run.
    before: list[tuple[Run, HistoryEvent, str, str]] = []
    for r, e, name, step in scheduled:
        later = r.index > run.index or (r.index == run.index and r.produced_in(e.event_id) >= at)
        if later and name in EFFECTS:
            tally.problem(plan, f"{name} ({step}) scheduled at event {e.event_id} of run {r.index}, after the exit "
                                f"signal (event {signal.event_id} of run {run.index}, posted at "
                                f"+{exit_post.offset_ms:.0f} ms)")
        elif not later and name in EFFECTS:
            before.append((r, e, name, step))
    # Where the exit landed.
    kinds = []
    if not before:
        kinds.append("before the first step")
    in_flight: list[str] = []  # the steps whose effect was under way when the exit came
    together = False  # one of them finished in the workflow task that brought the exit
    for r, e, _, step in before:
        closed = activity_closed(r, e.event_id)
        if r.index == run.index and (closed is None or r.delivered_in(closed.event_id) >= at):
            in_flight.append(step)
            together = together or (closed is not None and r.delivered_in(closed.event_id) == at)
    if in_flight:
        kinds.append("during an activity" + (" (it finished in the same workflow task)" if together else ""))
    fired = run.of_type(EventType.EVENT_TYPE_TIMER_FIRED)
    started = run.of_type(EventType.EVENT_TYPE_TIMER_STARTED)
    edge_ms = [abs(signal.event_time.ToMilliseconds() - f.event_time.ToMilliseconds()) for f in fired]
    if any(run.delivered_in(f.event_id) == at for f in fired):
        kinds.append("at a timer edge (same workflow task as the timer firing)")
    elif any(ms <= 50 for ms in edge_ms):
        kinds.append("at a timer edge (within 50 ms of the timer firing)")
    else:
        fired_before = {
            f.timer_fired_event_attributes.started_event_id for f in fired if run.delivered_in(f.event_id) < at
        }
        if any(s.event_id not in fired_before and run.produced_in(s.event_id) < at for s in started):
            kinds.append("during a wait")
    if not kinds:
        ran_here = any(r.index == run.index for r, _, _, _ in before)
        kinds.append("between steps" if ran_here or run.index == 0 else "before the continued run's first step")
    if run.index > 0:
        kinds.append("after continue-as-new")
    for k in kinds:
        tally.counts[f"exit {k}"] += 1
    tally.landed[plan.account] = f"run {run.index} event {signal.event_id}: " + ", ".join(kinds)
    for step in in_flight:
        row = next((r for r in rows if r.step_id == step), None)
        if row is not None and row.status == "sent":
            tally.counts["in-flight activities that finished after the exit"] += 1
        else:
            tally.counts["in-flight activities cancelled before they ran"] += 1
    # The outbox: only emails scheduled before the exit, each once.
    allowed = {step for _, _, name, step in before if name == "send_email"}
    if not {r.step_id for r in rows} <= allowed:
        tally.problem(plan, f"outbox has {sorted(r.step_id or '' for r in rows)} but only {sorted(allowed)} were "
                            f"scheduled before the exit")
    completed_before = {step for _, _, name, step in before if name == "send_email" and step not in in_flight}
    if not completed_before <= sent:
        tally.problem(plan, f"emails {sorted(completed_before - sent)} completed in history but not sent in the outbox")


def timeout_activation(chain: Chain, timers: list[tuple[Run, HistoryEvent]]) -> tuple[int, float]:
    """Where the wait_for's timeout came, as (run, activation): its timer fired; or a run of the chain that started
    the step again (continue-as-new) began after the step's deadline (pinned when the first timer was set: the
    workflow time of that activation, i.e. its WorkflowTaskStarted, plus the timer's length)."""
    never = (len(chain.runs), float("inf"))
    if not timers:
        return never
    first, timer = timers[0]
    produced = first.produced_in(timer.event_id)
    task = [e for e in first.of_type(EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED) if e.event_id < produced][-1]
    task_started = task.event_time.ToMicroseconds() / 1e6
    deadline = task_started + timer.timer_started_event_attributes.start_to_fire_timeout.ToMicroseconds() / 1e6
    fired = EventType.EVENT_TYPE_TIMER_FIRED
    moments = [(r.index, r.delivered_in(f.event_id)) for r in chain.runs for f in r.of_type(fired)]
    for r in chain.runs[first.index + 1:]:
        starts = r.of_type(EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
        if starts and r.completed and starts[0].event_time.ToMicroseconds() / 1e6 >= deadline:
            moments.append((r.index, r.completed[0]))
    return min(moments, default=never)


def check_wait_for(plan: Plan, chain: Chain, rows: list[t.OutboxEmail], tally: Tally) -> None:
    result = chain.result()
    if result["outcome"] != "completed":
        tally.problem(plan, f"ended {result['outcome']}: {result.get('reason')}")
        return
    for p in plan.posts:
        if not p.delivered and chain.close_time() > p.returned_at:
            tally.problem(plan, f"{p.kind} event {p.event_id} posted at +{p.offset_ms:.0f} ms reached no run, yet the "
                                "run was still open")
    answer = result["steps"]["answer"]["result"]
    seen = not answer["timed_out"]
    # The email's first command, and the wait_for's first timer (in a later run if the chain continued as new
    # between the two steps): where they are in the chain, as (run, activation).
    # Without a timer (the event was there when the step started) the step started when the email's result came.
    ask = next(((r, e) for r, e, name, step in chain.scheduled() if name == "send_email" and step == "ask"), None)
    if ask is None:
        tally.problem(plan, "no send_email for the survey in the history")
        return
    timers = [(r, e) for r in chain.runs for e in r.of_type(EventType.EVENT_TYPE_TIMER_STARTED)]
    email_started: tuple[int, float] = (ask[0].index, ask[0].produced_in(ask[1].event_id))
    wait_started: tuple[int, float]
    if timers:
        wait_started = (timers[0][0].index, timers[0][0].produced_in(timers[0][1].event_id))
    else:
        closed = activity_closed(ask[0], ask[1].event_id)
        wait_started = (ask[0].index, ask[0].delivered_in(closed.event_id) if closed else float("inf"))
    timed_out_in = timeout_activation(chain, timers)
    answer_post = plan.post_of("answer")
    expected, where = False, "no matching event posted"
    if answer_post is not None:
        found = chain.signal(answer_post.event_id)
        if found is None:
            where = "matching event not in the history (posted after the run ended)"
            if answer_post.delivered:
                tally.problem(plan, "delivered_to names the run but no run of its chain has the answer signal")
        else:
            run, signal = found
            at = (run.index, run.delivered_in(signal.event_id))
            if at <= email_started:
                where = "before the email step started (by design not counted)"
            elif at > timed_out_in:
                where = "after the timeout fired"
            else:
                expected = True
                if at <= wait_started:
                    where = "during the email, before the wait_for started"
                elif run.index > 0:
                    where = "after continue-as-new"
                elif at == timed_out_in:
                    where = "in the same workflow task as the timeout"
                else:
                    where = "during the wait_for"
    tally.counts[f"answer {where}: {'seen' if seen else 'timed out'}"] += 1
    tally.landed[plan.account] = f"{where}: {'seen' if seen else 'timed out'}"
    if seen != expected:
        tally.problem(plan, f"answer {where} (posted at +{answer_post.offset_ms if answer_post else 0:.0f} ms): "
                            f"expected timed_out={not expected}, got timed_out={answer['timed_out']}")
    if seen and (answer["event"] or {}).get("id") != (answer_post.event_id if answer_post else None):
        tally.problem(plan, f"the wait_for took event {(answer['event'] or {}).get('id')}, not the matching one")
    steps = sorted(r.step_id or "" for r in rows if r.status == "sent")
    if steps != sorted(["ask", "thanks" if seen else "nudge"]):
        tally.problem(plan, f"outbox has {steps} (timed_out={answer['timed_out']})")


# ------------------------------------------------------------------------------------------ the test


def test_events_at_random_moments_neither_lost_nor_ignored(tmp_path: Path) -> None:
    # The dev server's and the engine's SQLite files in memory where the machine has /dev/shm: on this VM's disk
    # every history write waits for an fsync, and workflow tasks then wait ~1 s (median) for hundreds of runs.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="event-timing-", dir=shm if shm.is_dir() else tmp_path) as home:
        asyncio.run(scenario(Path(home)))


async def scenario(tmp_path: Path) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    plans = make_plans(rng)
    server = TimingDevServer(tmp_path / "temporal", port=0, ui_port=0)
    client = await server.start()
    try:
        await run_all(client, server.address, tmp_path, plans, began)
    finally:
        server.stop(kill=True)


async def run_all(client: Client, address: str, tmp_path: Path, plans: list[Plan], began: float) -> None:
    db_url = f"sqlite:///{tmp_path / 'playbook.db'}"
    migrate(db_url)
    team = [{"id": "csm-1", "name": "Casey", "email": "casey@cs.example"}]
    seed(db_url, {"id": "acc-seed", "name": "Seed"}, [], team)  # the owner the events name
    library = {p.id: p for p in (_playbook(EXIT_PLAYBOOK), _playbook(WAIT_FOR_PLAYBOOK))}
    marks = Marks(asyncio.get_running_loop())
    queue = f"timing-{uuid.uuid4().hex[:8]}"
    world = World(client, queue, db_url, library, marks)
    gate = asyncio.Semaphore(CONCURRENCY)
    errors: list[str] = []

    async def one(plan: Plan) -> None:
        async with gate:
            try:
                await drive(world, plan)
            except Exception as err:  # noqa: BLE001 - collected, asserted empty
                errors.append(f"{plan.account}: {type(err).__name__}: {err}")

    spawn = multiprocessing.get_context("spawn")
    mark_queue, ready, stop = spawn.Queue(), spawn.Event(), spawn.Event()
    reader = marks.listen(mark_queue)
    worker = spawn.Process(target=run_worker, args=(address, queue, db_url,
                                                    mark_queue, ready, stop), name="event-timing-worker")
    worker.start()
    try:
        assert await asyncio.to_thread(ready.wait, 60), "the worker process did not start"
        drive_began = time.monotonic()
        await asyncio.gather(*(one(p) for p in plans))
        driven = time.monotonic()
        assert errors == [], f"{len(errors)} runs could not be driven: {errors[:10]}"
        # Every chain ends by itself (exits, completions, timeouts): wait for the last run of each.
        ends = await asyncio.gather(
            *(asyncio.wait_for(client.get_workflow_handle(p.workflow_id).result(), 90) for p in plans),
            return_exceptions=True,
        )
        failed = [(p.account, repr(e)[:300]) for p, e in zip(plans, ends, strict=True) if isinstance(e, BaseException)]
        assert failed == [], failed[:10]
        # Activities cut off by an exit are still finishing in the worker's threads: wait until no row is 'sending'.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with session(db_url) as s:
                if not s.scalars(select(t.OutboxEmail.id).where(t.OutboxEmail.status == "sending")).first():
                    break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.to_thread(worker.join, 30)
        if worker.is_alive():
            worker.kill()
            worker.join(10)
        mark_queue.put(None)
        reader.join(5)
    ended = time.monotonic()

    fetch_gate = asyncio.Semaphore(16)

    async def fetch(plan: Plan) -> Chain:
        async with fetch_gate:
            return await fetch_chain(client, plan.workflow_id)

    chains = await asyncio.gather(*(fetch(p) for p in plans))
    with session(db_url) as s:
        all_rows = list(s.scalars(select(t.OutboxEmail).order_by(t.OutboxEmail.id)))
    by_workflow: dict[str, list[t.OutboxEmail]] = {}
    for row in all_rows:
        by_workflow.setdefault(row.workflow_id, []).append(row)
    assert [k for k, n in Counter(r.key for r in all_rows).items() if n > 1] == []

    tally = Tally()
    for plan, chain in zip(plans, chains, strict=True):
        rows = by_workflow.get(plan.workflow_id, [])
        if len(rows) != len({r.step_id for r in rows}):
            tally.problem(plan, f"an email step sent twice: {[r.step_id for r in rows]}")
        continued_as_new = len(chain.runs) - 1
        if continued_as_new:
            tally.counts[f"{plan.group} chains that continued as new"] += 1
            tally.counts["continue-as-new (runs after the first)"] += continued_as_new
        problems = len(tally.problems)
        if plan.group == "exit":
            check_exit(plan, chain, rows, tally)
        else:
            check_wait_for(plan, chain, rows, tally)
        if len(tally.problems) > problems or (VERBOSE and "between steps" in tally.landed.get(plan.account, "")):
            tally.history(plan, chain)

    offsets: dict[str, list[float]] = {}
    for plan in plans:
        main = plan.post_of("exit" if plan.group == "exit" else "answer")
        if main is not None:
            offsets.setdefault(f"{plan.group}/{plan.mode}", []).append(main.offset_ms)
    lines = [
        f"EVENT TIMING (seed {SEED}): {len(plans)} runs ({sum(p.group == 'exit' for p in plans)} exit, "
        f"{sum(p.group == 'wait_for' for p in plans)} wait_for), {sum(len(c.runs) for c in chains)} Temporal runs; "
        f"{sum(len(p.posts) for p in plans) + len(plans)} events posted",
        f"  time: setup {drive_began - began:.1f} s, driving {driven - drive_began:.1f} s, all ended "
        f"{ended - drive_began:.1f} s, checked {time.monotonic() - began:.1f} s after the start",
        "  offsets of the exit / answer after the trigger returned (ms): " + "; ".join(
            f"{k} n={len(v)} {min(v):.0f}..{max(v):.0f}" for k, v in sorted(offsets.items())),
    ]
    lines += [f"  {k}: {n}" for k, n in sorted(tally.counts.items())]
    if VERBOSE:
        for plan in sorted(plans, key=lambda p: (p.group, p.mode, p.index)):
            main = plan.post_of("exit" if plan.group == "exit" else "answer")
            at = f"+{main.offset_ms:.0f} ms" if main else "-"
            lines.append(f"    {plan.account} {_short(plan.params)} posted {at}: {tally.landed.get(plan.account, '?')}")
        lines += tally.histories
    print("\n" + "\n".join(lines))
    where = Counter(tally.landed.get(a, "?").split(": ", 1)[-1] for a in tally.failing)
    assert tally.problems == [], (
        "\n".join(tally.problems[:40]) + f"\n({len(tally.problems)} problems in {len(tally.failing)} runs; by moment "
        f"aimed at: {dict(Counter(tally.failing.values()))}; by where the event landed: {dict(where)})\n"
        + "\n".join(tally.histories))

    # The test keeps its teeth only if the moments it aims at were hit.
    c = tally.counts
    assert c["exit before the first step"] >= 10, c
    assert c["exit during an activity"] + c["exit during an activity (it finished in the same workflow task)"] >= 10, c
    assert c["exit during an activity (it finished in the same workflow task)"] >= 3, c
    assert c["exit during a wait"] >= 10, c
    assert c["exit at a timer edge (same workflow task as the timer firing)"] + c[
        "exit at a timer edge (within 50 ms of the timer firing)"] >= 3, c
    assert c["exit after continue-as-new"] >= 3, c
    assert c["exit after the run completed (not delivered)"] >= 1, c
    assert c["exit chains that continued as new"] >= 3 and c["wait_for chains that continued as new"] >= 5, c
    assert c["answer during the email, before the wait_for started: seen"] >= 10, c
    assert c["answer after continue-as-new: seen"] >= 3, c
