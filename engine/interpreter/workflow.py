"""The interpreter's workflows: one Temporal workflow that runs any validated playbook, and the for_each
chunk workflow that runs a slice of a large for_each.

The playbook model is the workflow's input, so a run is pinned to the exact version it started with.
The step kinds come from three families (``effects``, ``waiting``, ``flow``) over a common core; the
table ``RUNNERS`` maps each step model class to its runner.

People and the product reach a run through Temporal primitives: events arrive as signals (``wait_for``,
``exit_when``) at any moment of the run's life, decisions and call outcomes as updates whose validators
refuse a bad answer before it is written to history, and ``state`` is a query. A run whose history gets
long continues as new at a top-level step boundary, or while a top-level step waits (the step is then
started again in the new run with the same deadlines; its effects are idempotent by key).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities import types as act
    from engine.interpreter import calendar
    from engine.interpreter.messages import (
        DECIDE_UPDATE,
        EVENT_SIGNAL,
        FOR_EACH_WORKFLOW_NAME,
        OUTCOME_UPDATE,
        SLICE_STARTED_SIGNAL,
        STATE_QUERY,
        WORKFLOW_NAME,
        Carried,
        Decision,
        DecisionResult,
        Event,
        ForEachChunkInput,
        ForEachChunkResult,
        Outcome,
        Reported,
        RunInput,
        RunResult,
        RunState,
        TimelineEntry,
        event_context,
    )
    from engine.language import expressions as ex
    from engine.language import model as m
    from engine.language.groups import held_out

from engine.interpreter.core import (
    ACTIVITY_TIMEOUT,
    CANCEL_CLOSES_ASKS_PATCH,
    DEFAULT_RETRY,
    HEARTBEAT_TIMEOUT,
    PROGRESS_PATCH,
    Rollover,
    Runner,
    Scope,
    SeenEvent,
    StepFailed,
    StopRun,
    being_closed,
)
from engine.interpreter.effects import EffectSteps
from engine.interpreter.flow import FlowSteps

RUNNERS: dict[type, Runner] = {
    m.EmailStep: EffectSteps.step_email,
    m.CallTaskStep: EffectSteps.step_call_task,
    m.CrmStep: EffectSteps.step_crm,
    m.AssignStep: EffectSteps.step_assign,
    m.SetStep: EffectSteps.step_set,
    m.WaitStep: EffectSteps.step_wait,
    m.WaitForStep: EffectSteps.step_wait_for,
    m.ApprovalStep: EffectSteps.step_approval,
    m.SwitchStep: FlowSteps.step_switch,
    m.ParallelStep: FlowSteps.step_parallel,
    m.SplitStep: FlowSteps.step_split,
    m.ForEachStep: FlowSteps.step_for_each,
    m.RunPlaybookStep: FlowSteps.step_run_playbook,
    m.StopStep: FlowSteps.step_stop,
}


class Interpreter(EffectSteps, FlowSteps):
    """Every step kind, over the core."""

    runners = RUNNERS

    # The updates through which people answer: a validator refuses a bad answer before it enters history.
    @workflow.update(name=DECIDE_UPDATE)
    def decide(self, decision: Decision) -> DecisionResult:
        ask = self.check_decision(decision)
        ask.answer = decision
        return DecisionResult(approval_id=ask.info.id, decision=decision.decision)

    @decide.validator
    def validate_decide(self, decision: Decision) -> None:
        self.check_decision(decision)

    @workflow.update(name=OUTCOME_UPDATE)
    def record_outcome(self, outcome: Outcome) -> str:
        ask = self.check_outcome(outcome)
        ask.answer = outcome
        return ask.info.id

    @record_outcome.validator
    def validate_record_outcome(self, outcome: Outcome) -> None:
        self.check_outcome(outcome)

    @workflow.signal(name=SLICE_STARTED_SIGNAL)
    def slice_started(self, child_id: str) -> None:
        """A for_each slice has started every one of its items: the next may start."""
        self.starting_slices.discard(child_id)

    async def close_open_asks(self) -> None:
        """Tasks and approvals the run no longer waits for leave the inbox as cancelled, those still being created
        when the run stopped too."""
        await self.creations_finished()
        for ask_id, kind in list(self.open_asks.items()):
            request: Any
            if kind == "call_task":
                name, request = "close_call_task", act.CloseTaskRequest(ask_id, "cancelled", self.now().isoformat())
            else:
                name, request = "close_approval", act.CloseApprovalRequest(ask_id, "cancelled", self.now().isoformat())
            await workflow.execute_activity(
                name, request, result_type=act.Done, start_to_close_timeout=ACTIVITY_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=DEFAULT_RETRY,
            )
        self.open_asks.clear()


# A progress report that cannot be written (the database is down) is retried for this long, then given up with a
# warning in the worker's log: the run goes on, and ends, whatever becomes of its reports. A report given up while
# the run waits loses nothing: what it carried goes with the run's next report (the diff is taken against the last
# report written). The report of the run's end has no next one: given up, the row stays as the last report written
# left it (running) for good. So the bound is not short: it rides out an outage as long as the run's own effects
# would (DEFAULT_RETRY: ten attempts, about 40 minutes), and the run's end waits for it meanwhile. Retries after
# the first minute wait on workflow timers (a few events each): an outage of that length costs a few dozen events.
PROGRESS_GIVE_UP = timedelta(minutes=40)
PROGRESS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5)
)


class ContinueAt(Exception):
    """The run goes on in a new run of its chain from this top-level step."""

    def __init__(self, index: int, since: int, step_started: int | None = None) -> None:
        super().__init__(index)
        self.index = index
        self.since = since
        self.step_started = step_started  # set when the step is started again: when it first started


@workflow.defn(name=WORKFLOW_NAME)
class PlaybookRun(Interpreter):
    can_roll_over = True

    @workflow.init
    def __init__(self, run: RunInput) -> None:
        self.init_interpreter(run.playbook, run.account_id, run.clock_offset)
        self.status = "running"
        self.exit: tuple[str, Event] | None = None
        self.vars: dict[str, Any] = {}
        self.main: asyncio.Task[None] | None = None
        self.continued = 0
        self.scope = Scope(steps={}, vars={})
        self.vars = self.scope.vars  # exit_when rules see the run's vars
        # the funnel's projection (PROGRESS_PATCH, see use_progress)
        self.run_key = ""
        self.report_seq = 0  # the reports numbered so far in the chain
        self.reported: Reported | None = None  # what they wrote; None: nothing known (the next writes everything)
        self.reporter: asyncio.Task[None] | None = None  # reporting while the run waits
        if run.carried is not None:
            # here, not in run(): an event in this run's first workflow task is judged with the carried state
            self.restore(run.carried, self.scope)

    @workflow.run
    async def run(self, run: RunInput) -> RunResult:
        self.use_fanout()
        self.use_progress(run)
        try:
            return await self.play(run)
        except asyncio.CancelledError:
            # The run itself was cancelled (a cancel request): its tasks and approvals leave the inbox, its row says
            # so (activities still run after the cancel), and the run ends cancelled.
            if workflow.patched(CANCEL_CLOSES_ASKS_PATCH):
                await self.close_open_asks()
            await self.report_end("cancelled", None)
            raise

    async def play(self, run: RunInput) -> RunResult:
        scope = self.scope
        carried = run.carried
        if carried is None:
            failure = await self.prepare(run, scope)
            if failure is not None:
                return await self.end("failed", failure)
            self.join_groups(run)
        if self.exit is not None:  # an exit event came before the first step: nothing is done
            return await self.end(*self.exit_outcome())
        start, since, resumed = (carried.next_step, carried.since, carried.step_started) if carried else (0, 0, None)
        self.main = asyncio.create_task(self.run_top(scope, start, since, resumed))
        try:
            await self.main
        except asyncio.CancelledError:
            if self.exit is None:
                raise  # the run itself was cancelled
            await self.close_open_asks()
            return await self.end(*self.exit_outcome())
        except StopRun as stop:
            await self.close_open_asks()
            return await self.end(stop.outcome, stop.reason)
        except StepFailed as err:
            # Failed in Temporal's eyes too (the Web UI shows it), with the run's record as the error's details.
            result = await self.end("failed", err.message)
            raise ApplicationError(err.message, result, type="StepFailed", non_retryable=True) from None
        except ContinueAt as at:
            if self.exit is not None:
                return await self.end(*self.exit_outcome())
            await workflow.wait_condition(workflow.all_handlers_finished)
            await self.stop_reporting()  # what a report cut short carried goes with the next run's first
            info = workflow.info()
            detail = f"continues as a new run: history of {info.get_current_history_length()} events"
            self.add_entry(TimelineEntry(self.now().isoformat(), "", None, "run", "info", detail))
            workflow.continue_as_new(
                RunInput(
                    playbook=run.playbook,
                    account_id=run.account_id,
                    event=run.event,
                    input=run.input,
                    clock_offset=run.clock_offset,
                    carried=self.carry(at, scope),
                )
            )
        if self.exit is not None:  # an exit event came in during the last step
            return await self.end(*self.exit_outcome())
        return await self.end("completed", None)

    async def prepare(self, run: RunInput, scope: Scope) -> str | None:
        """The run's first moments: its event, account, timezone and vars. A reason when it cannot start."""
        playbook = run.playbook
        self.event = event_context(run.event) if run.event else None
        try:
            request = act.AccountRequest(
                run.account_id,
                act.RunRef(workflow.info().workflow_id, playbook.id, run.account_id, None, playbook.version),
                self.now().isoformat(),
                self.run_key or None,  # load_account registers the run's row: entered from its first moment
            )
            # Since FANOUT_PATCH a local activity: a read (and the run's own record) in the worker that runs the
            # workflow, with no trip through the server's task queue: a third fewer history events and server CPU
            # per run start (bench/profile_run.py). Its result is recorded in history as an activity's is.
            # (A local activity has no heartbeat: it lives and dies with the workflow task that runs it.)
            snapshot: act.AccountSnapshot = await (
                workflow.execute_local_activity(
                    "load_account", request, result_type=act.AccountSnapshot,
                    start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=DEFAULT_RETRY,
                )
                if self.fanout
                else workflow.execute_activity(
                    "load_account", request, result_type=act.AccountSnapshot,
                    start_to_close_timeout=ACTIVITY_TIMEOUT, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=DEFAULT_RETRY,
                )
            )
            self.set_snapshot(snapshot)
            tz_name = str(self.render(playbook.settings.timezone, scope) if playbook.settings.timezone else "UTC")
            self.tz = calendar.zone(tz_name)
            if str(self.tz) != tz_name:
                self.add_entry(
                    TimelineEntry(
                        self.now().isoformat(),
                        "settings.timezone",
                        None,
                        "run",
                        "info",
                        f"unknown timezone {tz_name!r}: using UTC",
                    )
                )
            for name, value in playbook.vars.items():
                scope.vars[name] = self.render(value, scope)
            scope.vars.update(run.input)
        except workflow.NondeterminismError:
            raise
        except Exception as err:  # noqa: BLE001 - the account cannot be loaded, or a template in vars fails
            return f"could not start: {err}"
        return None

    def join_groups(self, run: RunInput) -> None:
        """For playbooks with a control group or split steps: the run's enrollment key, and whether the run is
        held out. Nothing here for other playbooks: their runs (and their histories) are what they were."""
        playbook = run.playbook
        uses_split = any(isinstance(s, m.SplitStep) for s in playbook.walk())
        if playbook.settings.control <= 0 and not uses_split:
            return
        self.enrollment_key = self.key_of_enrollment(playbook)
        if held_out(playbook.id, self.enrollment_key, playbook.settings.control):
            self.control = True
            detail = f"control group ({playbook.settings.control:g}% held out): every effect is skipped"
            self.add_entry(TimelineEntry(self.now().isoformat(), "settings.control", None, "run", "info", detail))
            # Searchable in the Web UI and the run listing without a query (upsert_memo is a command: only the
            # held-out runs of playbooks that have a control group write it).
            workflow.upsert_memo({"control": True})

    def key_of_enrollment(self, playbook: m.Playbook) -> str:
        """The enrollment key as the intake renders it (account, contact, event); the account id if it cannot."""
        context = {"account": self.account, "event": self.event, "contact": self.contacts[0] if self.contacts else {}}
        try:
            key = str(ex.render(playbook.enrollment.key, context)).strip()
        except Exception:  # noqa: BLE001 - the intake could not have enrolled the run under a key it cannot render
            return self.account_id
        return key or self.account_id

    async def run_top(self, scope: Scope, start: int, since: int, resumed: int | None) -> None:
        """The top-level steps from ``start``; between two of them, or while one waits, a long history
        continues the run as new. ``resumed``: the step at ``start`` is started again; it first started when
        the event sequence stood there (the next step's wait_for counts events from then)."""
        steps = self.playbook.steps
        for index in range(start, len(steps)):
            if index > start and self.history_is_long():
                raise ContinueAt(index, since)
            self.forget_events_before(since)
            step = steps[index]
            self.top_step = step
            again = index == start and resumed is not None
            started = resumed if again and resumed is not None else self.seq
            self.resuming = step if again else None
            try:
                await self.run_step(step, Scope(scope.steps, scope.vars, since=since))
            except Rollover:
                raise ContinueAt(index, since, started) from None
            finally:
                self.resuming = None
            since = started

    def carry(self, at: ContinueAt, scope: Scope) -> Carried:
        return Carried(
            next_step=at.index,
            since=at.since,
            account=self.account,
            contacts=self.contacts,
            event=self.event,
            timezone=str(self.tz),
            vars=scope.vars,
            steps=scope.steps,
            statuses=self.statuses,
            timeline=self.timeline,
            timeline_dropped=self.timeline_dropped,
            deadlines=self.deadlines,
            seq=self.seq,
            events=[(e.seq, e.event) for e in self.events if e.seq > at.since],
            continued=self.continued + 1,
            step_started=at.step_started,
            started_at=self.run_info()["started_at"],
            control=self.control,
            enrollment_key=self.enrollment_key,
            paths=self.paths,
            run_key=self.run_key or None,
            report_seq=self.report_seq,
            reported=self.reported,
        )

    def restore(self, c: Carried, scope: Scope) -> None:
        """The state the previous run of the chain carried over (called before any event reaches this run)."""
        self.account, self.contacts, self.event = c.account, c.contacts, c.event
        self.tz = calendar.zone(c.timezone)
        scope.vars.update(c.vars)
        scope.steps.update(c.steps)
        self.statuses = dict(c.statuses)
        self.timeline, self.timeline_dropped = list(c.timeline), c.timeline_dropped
        self.set_deadlines(c.deadlines)
        self.events = [SeenEvent(seq, e) for seq, e in c.events]
        self.seq = c.seq
        self.continued = c.continued
        self.started_at = c.started_at
        self.control, self.enrollment_key = c.control, c.enrollment_key
        self.paths = dict(c.paths)

    def stopping(self) -> bool:
        return self.exit is not None

    def exit_outcome(self) -> tuple[str, str]:
        assert self.exit is not None
        outcome, event = self.exit
        return outcome, f"exit on event {event.type}"

    async def end(self, outcome: str, reason: str | None) -> RunResult:
        """The run's end: its result, once its row of the funnel's projection says how it ended."""
        result = self.finish(outcome, reason)
        await self.report_end(outcome, reason)
        return result

    def finish(self, outcome: str, reason: str | None) -> RunResult:
        self.status = outcome
        self.add_entry(TimelineEntry(self.now().isoformat(), "", None, "run", outcome, reason or ""))
        return RunResult(
            outcome=outcome,
            reason=reason,
            steps=dict(self.statuses),
            timeline=list(self.timeline),
            control=self.control,
        )

    # ----------------------------------------------------------------- the funnel's projection

    def use_progress(self, run: RunInput) -> None:
        """Whether this run keeps its row of the funnel's projection (PROGRESS_PATCH); decided once, when the
        workflow starts. The row's key is the run id of the chain's first run: continue-as-new keeps it."""
        self.reporting = workflow.patched(PROGRESS_PATCH)
        if not self.reporting:
            return
        carried = run.carried
        if carried is None:
            self.run_key = workflow.info().first_execution_run_id
            self.reported = Reported()  # the row as load_account registers it: running, nowhere yet
        else:
            self.run_key = carried.run_key or workflow.info().first_execution_run_id
            self.report_seq, self.reported = carried.report_seq, carried.reported

    def about_to_wait(self) -> None:
        """A step is about to block: the run reports, unless a report is in flight (it reports again once that one
        is written, if the run still waits and has moved meanwhile)."""
        if self.reporter is None or self.reporter.done():
            self.reporter = asyncio.create_task(self.report_while_waiting())

    async def report_while_waiting(self) -> None:
        while self.blocked:
            built = self.progress_report()
            if built is None or not await self.send_report(*built):
                return

    async def report_end(self, outcome: str, reason: str | None) -> None:
        """The run's last report: how it ended (a report in flight is cut short: this one carries what it did)."""
        if not self.reporting:
            return
        await self.stop_reporting()
        exit_event = self.exit[1].type if self.exit is not None and outcome in ("exited", "goal") else None
        built = self.progress_report((outcome, (reason or "") if outcome == "failed" else "", exit_event))
        if built is not None:
            await self.send_report(*built)

    async def stop_reporting(self) -> None:
        task, self.reporter = self.reporter, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def progress_report(
        self, end: tuple[str, str, str | None] | None = None
    ) -> tuple[act.ProgressReport, Reported] | None:
        """A report of the run's row and of the step statuses changed since the last report written, with what it
        writes; None when nothing changed (a report of the run's ``end``, status, reason and exit event, is always
        made)."""
        known = self.reported
        steps = {step_id: entry["status"] for step_id, entry in self.statuses.items()}
        current = [] if end is not None else sorted(self.current)
        now = Reported(steps, current, dict(self.paths), self.control)
        changed = steps if known is None else {k: v for k, v in steps.items() if known.steps.get(k) != v}
        if end is None and known is not None and not changed and (
            (current, now.paths, now.control) == (known.current, known.paths, known.control)
        ):
            return None
        status, reason, exit_event = end or ("running", "", None)
        self.report_seq += 1
        report = act.ProgressReport(
            run_key=self.run_key,
            workflow_id=self.ids()[0],
            playbook_id=self.playbook.id,
            version=self.playbook.version,
            account_id=self.account_id,
            at=self.now().isoformat(),
            seq=self.report_seq,
            status=status,
            control=self.control,
            paths=now.paths,
            reason=reason[:500],
            exit_event=exit_event,
            current=current,
            started_at=self.run_info()["started_at"],
            steps=changed,
        )
        return report, now

    async def send_report(self, report: act.ProgressReport, writes: Reported) -> bool:
        """Records a report (a local activity, retried for PROGRESS_GIVE_UP at most); whether it was written. A
        report that could not be written is logged and the run goes on: what it carried goes with the next."""
        try:
            await workflow.execute_local_activity(
                "record_progress", report, result_type=act.Done, start_to_close_timeout=ACTIVITY_TIMEOUT,
                schedule_to_close_timeout=PROGRESS_GIVE_UP, retry_policy=PROGRESS_RETRY,
            )
        except workflow.NondeterminismError:
            raise
        except Exception as err:  # noqa: BLE001 - a local activity's failure comes as ActivityError or as its cause
            cause = getattr(err, "cause", None) or err
            workflow.logger.warning("progress report %d of run %s not recorded: %s", report.seq, self.run_key, cause)
            return False
        self.reported = writes
        return True

    @workflow.signal(name=EVENT_SIGNAL)
    async def on_event(self, event: Event) -> None:
        """An event at any moment: before the first step, during an activity, at a timer's edge. An exit rule
        that matches ends the run before any further effect; otherwise wait_for steps (here or in children)
        see it."""
        self.take_event(event)
        if self.exit is None and self.status == "running" and self.exits_on(event):
            return
        await self.forward(event)

    def exits_on(self, event: Event) -> bool:
        """Whether an exit_when rule matches; if so the run's steps are cancelled and the run ends."""
        for rule in self.playbook.exit_when:
            if rule.event != event.type:
                continue
            try:
                if rule.match is not None and not self.evaluate(
                    rule.match, Scope({}, self.vars), event=event_context(event)
                ):
                    continue
            except Exception:  # noqa: BLE001 - a rule that cannot judge this event does not match it
                continue
            self.exit = ("goal" if rule.goal else "exited", event)
            if self.main is not None and not self.main.done():
                self.main.cancel()
            return True
        return False

    @workflow.query(name=STATE_QUERY)
    def state(self) -> RunState:
        return RunState(
            playbook_id=self.playbook.id,
            version=self.playbook.version,
            account_id=self.account_id,
            status=self.status,
            current=list(self.current.elements()),
            timeline=list(self.timeline),
            pending=[a.info for a in self.pending.values()],
            steps=dict(self.statuses),
            control=self.control,
        )


@workflow.defn(name=FOR_EACH_WORKFLOW_NAME)
class PlaybookForEachChunk(Interpreter):
    """Runs a slice of a large for_each's items; the parent keeps only one child per slice in its history."""

    keeps_timeline = False

    @workflow.init
    def __init__(self, chunk: ForEachChunkInput) -> None:
        self.init_interpreter(chunk.playbook, chunk.account_id, chunk.clock_offset)
        self.key_prefix = chunk.key_prefix

    @workflow.run
    async def run(self, chunk: ForEachChunkInput) -> ForEachChunkResult:
        self.use_fanout()
        ctx = chunk.context
        self.account = ctx["account"]
        self.contacts = ctx["contacts"]
        self.event = ctx["event"]
        self.parent_run = ctx.get("run")
        self.control = bool(ctx.get("control", False))
        self.enrollment_key = ctx.get("enrollment_key")
        self.tz = calendar.zone(chunk.timezone)
        step = next((s for s in self.playbook.walk() if s.path == chunk.step_path), None)
        if not isinstance(step, m.ForEachStep):
            raise ApplicationError(f"no for_each step at {chunk.step_path}", non_retryable=True)
        scope = Scope(dict(ctx["steps"]), dict(ctx["vars"]), dict(ctx["locals"]), ctx["key_suffix"])
        self.ended = False
        self.telling: asyncio.Task[None] | None = None
        tell_parent = self.tell_parent(chunk) if chunk.report_started else None
        try:
            failed = await self.for_each_inline(
                step, scope, chunk.items, chunk.start_index, chunk.concurrency, tell_parent
            )
        except StopRun as stop:
            # A stop inside an item ends the whole run: the parent raises it on (and cancels the other slices).
            await self.close_open_asks()
            return ForEachChunkResult(count=len(chunk.items), failed=0, stopped=stop.outcome, reason=stop.reason)
        except asyncio.CancelledError:
            # The run is exiting, or another slice stopped it: this slice's approvals and tasks leave the inbox.
            await self.close_open_asks()
            raise
        finally:
            if not being_closed():  # garbage collected from a stopped worker's cache: nothing to await
                await self.told()
        return ForEachChunkResult(count=len(chunk.items), failed=failed)

    def tell_parent(self, chunk: ForEachChunkInput) -> Any:
        def all_started() -> None:
            self.telling = asyncio.create_task(self.tell(chunk.parent_workflow_id))

        return all_started

    async def tell(self, parent_id: str) -> None:
        """Tells the parent that every item has started, unless the slice ends in this same moment (its end says
        as much, and a signal still in flight when a workflow closes is one the test server never settles)."""
        await workflow.wait_condition(lambda: True)  # once everything this activation can do is done
        if self.ended:
            return
        parent = workflow.get_external_workflow_handle(parent_id)
        await parent.signal(SLICE_STARTED_SIGNAL, workflow.info().workflow_id)

    async def told(self) -> None:
        """The slice ends only once its signal to the parent, if it sent one, is delivered."""
        self.ended = True
        if self.telling is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.telling)

    @workflow.signal(name=EVENT_SIGNAL)
    async def on_event(self, event: Event) -> None:
        self.take_event(event)
        await self.forward(event)

    def key(self, step: m.Step, scope: Scope, suffix: str = "") -> str:
        # The parent's key space: an item's effects are the same whichever workflow runs them.
        return f"{self.key_prefix}/{step.path}{scope.key_suffix}{suffix}"
