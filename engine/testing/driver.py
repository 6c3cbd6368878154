"""The world around a scenario run, as a Temporal workflow on the same time-skipping server.

People and the product act on the simulated clock: the driver sleeps on server timers, so the
time-skipping server stops exactly when someone answers a task (``after`` its asking) or the product
posts an event (``at`` its offset), and answers go through the run's real updates and signals.

Events go through the scenario's intake first (the library's scorecards: a score change becomes a
health.score_changed event of its own). A scenario started by ``start.events`` has no run at first: the driver
posts those events in order, the intake starts the run on the first one its trigger accepts, and the gate
workflow (ScenarioGate) tells the runner, which waits on it, whether a run started.

The nightly health recompute (docs/playbook-language.md, "Health in scenarios"): when the runner turns it on
(``DriverInput.nightly``), the driver sleeps until the next night at which the runner's side says a score can
change and asks the intake to recompute then (kind ``nightly``); every answer about an event or a night says
which night is next (``AnswerResult.next_night``), so an event that adds a window to leave moves the plan.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.service import RPCError, RPCStatusCode

with workflow.unsafe.imports_passed_through():
    from engine.interpreter.messages import DECIDE_UPDATE, EVENT_SIGNAL, OUTCOME_UPDATE, Decision, Event, Outcome
    from engine.language.durations import parse_duration

DRIVER_NAME = "ScenarioDriver"
ASKED_SIGNAL = "asked"
GATE_NAME = "ScenarioGate"
GATE_SIGNAL = "gate"


@dataclass
class Asked:
    kind: str  # call_task | approval
    id: str
    workflow_id: str
    step_id: str | None
    deciders: list[str] = field(default_factory=list)


@dataclass
class DriverInput:
    run_workflow_id: str
    script: list[dict[str, Any]]
    start_events: list[dict[str, Any]] = field(default_factory=list)  # start.events: {at, event}, in order
    # the first night to recompute health at (seconds from the scenario's start); None: no nightly recompute
    nightly: float | None = None
    # the server's time at the scenario's start (ISO): nights are kept to the scenario's clock, not the driver's start
    origin: str | None = None


@dataclass
class Answer:
    workflow_id: str
    kind: str  # outcome | decision | event | start_event | start_done | recipient | nightly
    payload: dict[str, Any]
    at: str | None = None  # the server's clock when it was sent (the scenario's clock is it plus the start's offset)
    offset: float | None = None  # an event's offset from the scenario's start, as the script says


@dataclass
class AnswerResult:
    ok: bool
    error: str | None = None
    started: bool = False  # a start event (or a night's score change) started the run
    next_night: float | None = None  # after an event or a night: the next night to recompute at (offset), if any


def _delay(text: str | None) -> float:
    return float(parse_duration(text).seconds) if text else 0.0


@workflow.defn(name=DRIVER_NAME)
class ScenarioDriver:
    # the input in __init__ (workflow.init): the run's on_asked signal may come in the driver's first activation,
    # before run() begins, and reads the script
    @workflow.init
    def __init__(self, params: DriverInput) -> None:
        self.params = params
        self.asked: list[Asked] = []
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False  # a start event or a night started the run (start.events)
        self.starting = bool(params.start_events)  # start events are still being posted: a night may start the run
        self.next_night = params.nightly
        self.plans = 0  # how often the plan changed: the nightly loop sleeps until the night or a new plan
        self.last_night = -1.0  # the last night recomputed (offset): an answer planned before it cannot bring it back

    @workflow.run
    async def run(self, params: DriverInput) -> list[str]:
        self.began = workflow.now()
        if params.start_events:
            self.tasks.append(asyncio.create_task(self.post_start_events(params.start_events)))
        if params.nightly is not None:
            self.tasks.append(asyncio.create_task(self.nightly()))
        for item in params.script:
            if "event" in item:
                self.tasks.append(asyncio.create_task(self.post_event(item)))
            elif "unsubscribe" in item or "bounce" in item:
                self.tasks.append(asyncio.create_task(self.recipient_acts(item)))
        await workflow.wait_condition(lambda: False)  # runs until the scenario runner cancels it
        return self.errors  # pragma: no cover

    async def sleep_until(self, offset: float) -> None:
        left = (self.began + timedelta(seconds=offset) - workflow.now()).total_seconds()
        if left > 0:
            await workflow.sleep(left)

    async def post_start_events(self, items: list[dict[str, Any]]) -> None:
        """start.events one after another: the first its trigger accepts (or a score change it causes) starts the
        run; then the gate hears whether one did."""
        for item in sorted(items, key=lambda i: _delay(i.get("at"))):
            await self.sleep_until(_delay(item.get("at")))
            kind = "event" if self.started else "start_event"
            offset = _delay(item.get("at"))
            result = await self.send(Answer(self.params.run_workflow_id, kind, dict(item["event"]), _now(), offset))
            self.started = self.started or bool(result and result.started)
        self.starting = False
        if not self.started:
            await self.send(Answer(self.params.run_workflow_id, "start_done", {}, _now()))

    async def nightly(self) -> None:
        """The nightly recompute at the nights the plan names: asleep on a timer until the next one, or until an
        answer changes the plan."""
        while True:
            if self.next_night is None:
                await workflow.wait_condition(lambda: self.next_night is not None)
                continue
            night, plan = self.next_night, self.plans
            origin = datetime.fromisoformat(self.params.origin) if self.params.origin else self.began
            left = (origin + timedelta(seconds=night) - workflow.now()).total_seconds()
            if left > 0 and await self.replanned_within(plan, left):
                continue  # a new plan: sleep again until its night
            payload = {"may_start": self.starting and not self.started}
            result = await self.send(Answer(self.params.run_workflow_id, "nightly", payload, _now(), night))
            self.last_night = night
            if result is not None and result.started:
                self.started = True
            if self.next_night == night:  # (an event's answer may have planned already)
                self.replan(result.next_night if result is not None else None)

    async def post_event(self, item: dict[str, Any]) -> None:
        await workflow.sleep(_delay(item.get("at")))
        event = dict(item["event"])
        await self.send(Answer(self.params.run_workflow_id, "event", event, _now(), _delay(item.get("at"))))

    async def recipient_acts(self, item: dict[str, Any]) -> None:
        """A recipient unsubscribes (one-click, from a category or from all that allow it) or their address
        bounces (SendGrid's webhook would suppress it), at that offset."""
        await workflow.sleep(_delay(item.get("at")))
        if "unsubscribe" in item:
            payload = {"unsubscribe": item["unsubscribe"], "category": item.get("category")}
        else:
            payload = {"bounce": item["bounce"]}
        await self.send(Answer(self.params.run_workflow_id, "recipient", payload))

    async def answer(self, asked: Asked, item: dict[str, Any]) -> None:
        await workflow.sleep(_delay(item.get("after")))
        if asked.kind == "call_task":
            by = asked.deciders[0] if asked.deciders else "ops"
            payload = {"task_id": asked.id, "outcome": item["outcome"], "by": by, "admin": not asked.deciders}
            await self.send(Answer(asked.workflow_id, "outcome", payload))
        else:
            by = item.get("by") or (asked.deciders[0] if asked.deciders else "ops")
            payload = {
                "approval_id": asked.id,
                "decision": item["decide"],
                "by": by,
                "comment": item.get("comment"),
                "edits": item.get("edit"),
                "admin": not asked.deciders,
            }
            await self.send(Answer(asked.workflow_id, "decision", payload))

    async def replanned_within(self, plan: int, seconds: float) -> bool:
        """Sleeps ``seconds`` (a server timer) unless the plan changes first; whether it did."""
        try:
            await workflow.wait_condition(lambda: self.plans != plan, timeout=seconds)
        except TimeoutError:
            return False
        return True

    def replan(self, night: float | None) -> None:
        if night is not None and night <= self.last_night:
            return  # planned by an event's answer from before that night, which has run since
        if night != self.next_night:
            self.next_night = night
            self.plans += 1

    async def send(self, answer: Answer) -> AnswerResult | None:
        try:
            result: AnswerResult = await workflow.execute_activity(
                "scenario_answer",
                answer,
                result_type=AnswerResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as err:
            self.errors.append(f"{answer.kind} to {answer.workflow_id}: {err.cause or err}")
            return None
        if not result.ok:
            self.errors.append(f"{answer.kind} {answer.payload}: {result.error}")
        elif answer.kind in ("event", "start_event") and self.params.nightly is not None:
            self.replan(result.next_night)  # the event may have brought a window to leave, or started the run
        return result

    @workflow.signal(name=ASKED_SIGNAL)
    def on_asked(self, asked: Asked) -> None:
        self.asked.append(asked)
        for item in self.params.script:
            if asked.kind == "call_task" and item.get("call_task") == asked.step_id:
                self.tasks.append(asyncio.create_task(self.answer(asked, item)))
            elif asked.kind == "approval" and item.get("approval") == asked.step_id:
                if item.get("by") and asked.deciders and item["by"] not in asked.deciders:
                    continue  # e.g. the lead's answer is for the escalated ask, not the owner's
                self.tasks.append(asyncio.create_task(self.answer(asked, item)))

    @workflow.query
    def problems(self) -> list[str]:
        return list(self.errors)


def _now() -> str:
    return workflow.now().isoformat()


@workflow.defn(name=GATE_NAME)
class ScenarioGate:
    """What the runner waits on while a scenario started by start.events has no run yet (waiting on a workflow's
    result is what lets the time-skipping server skip): it ends when the intake says whether a run started."""

    def __init__(self) -> None:
        self.started: bool | None = None

    @workflow.run
    async def run(self) -> bool:
        await workflow.wait_condition(lambda: self.started is not None)
        return bool(self.started)

    @workflow.signal(name=GATE_SIGNAL)
    def opened(self, started: bool) -> None:
        if self.started is None:
            self.started = started


class Intake(Protocol):
    """The scenario's intake (engine.testing.scenarios): events through the scorecards and, for start.events, the
    trigger."""

    async def take(
        self, event: dict[str, Any], server_now: datetime, offset: float | None, may_start: bool
    ) -> tuple[bool, list[Event]]:
        """Records the event (at the scenario's start plus ``offset``, if given); returns whether it (or a score
        change it caused) started the run, and the events to deliver to the run (the event and the
        health.score_changed events its score changes emit)."""
        ...

    async def no_start(self) -> None:
        """Every start event was posted and none started the run."""
        ...

    async def nightly(self, offset: float, may_start: bool) -> tuple[bool, list[Event], float | None]:
        """The nightly recompute at the scenario's start plus ``offset`` (while the run lives): whether a score change
        started the run (``may_start``: start.events are still being posted), the health.score_changed events to
        deliver, and the next night to recompute at."""
        ...

    async def next_night(self, after: float | None) -> float | None:
        """The next night (offset from the start) after ``after`` at which a score can change; None: none, or no
        nightly recompute in this scenario."""
        ...


class DriverActivities:
    """Carries the driver's answers to the run through its real signal and updates."""

    def __init__(
        self,
        client: Client,
        db_url: str | None = None,
        opt_out_categories: tuple[str, ...] = (),
        intake: Intake | None = None,
    ) -> None:
        self.client = client
        self.intake = intake
        self.db_url = db_url  # where a recipient's unsubscribe or bounce is recorded
        self.opt_out_categories = opt_out_categories  # an unsubscribe without a category: from all of these
        # Refused answers are kept here, on the runner's side: once the run has ended the driver workflow may
        # be closed (the time-skipping server runs on past the run's end), but what it saw before must count.
        self.refused: list[str] = []

    @activity.defn(name="scenario_answer")
    async def scenario_answer(self, answer: Answer) -> AnswerResult:
        if answer.kind == "recipient":
            return self.recipient(answer.payload)
        server_now = datetime.fromisoformat(answer.at) if answer.at else datetime.now(UTC)
        if answer.kind == "start_done":
            if self.intake is not None:
                await self.intake.no_start()
            return AnswerResult(True)
        started, next_night = False, None
        events: list[Event] = []
        if answer.kind == "nightly":
            if self.intake is None:
                return AnswerResult(True)
            started, events, next_night = await self.intake.nightly(
                answer.offset or 0.0, bool(answer.payload.get("may_start"))
            )
        elif answer.kind in ("event", "start_event"):
            if self.intake is not None:
                started, events = await self.intake.take(
                    answer.payload, server_now, answer.offset, answer.kind == "start_event"
                )
                next_night = await self.intake.next_night(answer.offset)
            else:
                events = [Event(**answer.payload)]
        if answer.kind in ("nightly", "event", "start_event"):
            for event in events:
                result = await self.deliver(answer, event)
                if not result.ok:
                    return result
            return AnswerResult(True, started=started, next_night=next_night)
        handle = self.client.get_workflow_handle(answer.workflow_id)
        try:
            if answer.kind == "outcome":
                await handle.execute_update(OUTCOME_UPDATE, Outcome(**answer.payload), result_type=str)
            else:
                await handle.execute_update(DECIDE_UPDATE, Decision(**answer.payload))
        except WorkflowUpdateFailedError as err:
            self.refused.append(f"{answer.kind} {answer.payload}: {err.cause or err}")
            return AnswerResult(False, str(err.cause or err))
        except RPCError as err:
            self.refused.append(f"{answer.kind} {answer.payload}: {err}")
            return AnswerResult(False, str(err))
        return AnswerResult(True)

    async def deliver(self, answer: Answer, event: Event) -> AnswerResult:
        """An event to the run, through its signal; a run that has ended (or not started) takes none."""
        try:
            await self.client.get_workflow_handle(answer.workflow_id).signal(EVENT_SIGNAL, event)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return AnswerResult(True)  # events only reach live runs
            self.refused.append(f"{answer.kind} {answer.payload}: {err}")
            return AnswerResult(False, str(err))
        return AnswerResult(True)

    def recipient(self, payload: dict[str, Any]) -> AnswerResult:
        """Records what the recipient did, as the unsubscribe page or the SendGrid webhook would."""
        # imported here: this module's workflow runs in the sandbox, which has no use for the database layer
        from engine.storage import governance
        from engine.storage.db import session

        if self.db_url is None:
            return AnswerResult(False, "no database to record the recipient's choice in")
        now = datetime.now(UTC)  # when the record was written; what counts is the send-time check against it
        with session(self.db_url) as s:
            if "bounce" in payload:
                governance.suppress(s, payload["bounce"], "bounced", "scenario", now)
            else:
                categories = [payload["category"]] if payload.get("category") else list(self.opt_out_categories)
                for category in categories:
                    governance.set_consent(s, payload["unsubscribe"], category, False, "scenario", now)
        return AnswerResult(True)
