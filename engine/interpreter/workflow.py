"""The interpreter: one Temporal workflow that runs any validated playbook.

The playbook model is the workflow's input, so a run is pinned to the exact version it started
with. Everything here is deterministic: time is ``workflow.now()``, ids come from the run and the
step's position, and every effect is an activity whose key makes it happen once.

People reach a run through Temporal primitives: events arrive as signals (``wait_for``,
``exit_when``), decisions and call outcomes as updates whose validators refuse an unknown,
duplicate or unauthorised answer before it is written to history, and ``state`` is a query.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.exceptions import CancelledError as TemporalCancelledError

with workflow.unsafe.imports_passed_through():
    # Passed through: imported once per worker, not once per run (jinja2 and the model are large).
    from activities import types as act
    from engine.interpreter import calendar
    from engine.interpreter.messages import (
        DECIDE_UPDATE,
        EVENT_SIGNAL,
        FOR_EACH_WORKFLOW_NAME,
        OUTCOME_UPDATE,
        STATE_QUERY,
        WORKFLOW_NAME,
        Decision,
        DecisionResult,
        Event,
        ForEachChunkInput,
        ForEachChunkResult,
        Outcome,
        Pending,
        RunInput,
        RunResult,
        RunState,
        TimelineEntry,
        event_context,
    )
    from engine.language import expressions as ex
    from engine.language import model as m
    from engine.language.durations import DurationError, parse_duration

# Providers time out after 10 s; a worker that dies mid-activity is noticed after this long, then retried.
ACTIVITY_TIMEOUT = timedelta(seconds=30)
DEFAULT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=10), maximum_attempts=10
)
INLINE_FOR_EACH_LIMIT = 100  # more items than this run in child workflows, CHUNK items each
FOR_EACH_CHUNK = 100


def _cancelled(err: BaseException) -> bool:
    """An activity or child that ended because this run is being cancelled (an exit event, a cancel)."""
    return isinstance(getattr(err, "cause", None), TemporalCancelledError)


class StepFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StopRun(Exception):
    def __init__(self, outcome: str, reason: str | None) -> None:
        super().__init__(reason or outcome)
        self.outcome = outcome
        self.reason = reason


@dataclass
class Scope:
    """What one path of execution sees: results so far, vars, and for_each item names."""

    steps: dict[str, dict[str, Any]]
    vars: dict[str, Any]
    locals: dict[str, Any] = field(default_factory=dict)
    key_suffix: str = ""  # "[3]" inside the 4th for_each item

    def child(self, name: str, item: Any, index: int) -> "Scope":
        return Scope(dict(self.steps), dict(self.vars), {**self.locals, name: item}, f"{self.key_suffix}[{index}]")


@dataclass
class _PendingAsk:
    info: Pending
    answer: Any = None  # Decision or Outcome once given


def _seconds(text: str) -> timedelta:
    return timedelta(seconds=parse_duration(text).seconds)


class Interpreter:
    """Step execution shared by the run workflow and the for_each chunk workflow."""

    def init_interpreter(self, playbook: m.Playbook, account_id: str, clock_offset: float = 0.0) -> None:
        self.playbook = playbook
        self.clock_offset = timedelta(seconds=clock_offset)
        self.account_id = account_id
        self.account: dict[str, Any] = {"id": account_id, "owner": None}
        self.contacts: list[dict[str, Any]] = []
        self.event: dict[str, Any] | None = None
        self.tz = calendar.zone("UTC")
        self.timeline: list[TimelineEntry] = []
        self.current: list[str] = []
        self.statuses: dict[str, dict[str, Any]] = {}  # step id -> {status, result}
        self.pending: dict[str, _PendingAsk] = {}
        self.events: list[Event] = []
        self.children: list[Any] = []  # running for_each chunk workflows
        self.open_asks: dict[str, str] = {}  # task/approval id -> kind, until answered, timed out or closed

    # ----------------------------------------------------------------- context and helpers

    def now(self) -> datetime:
        return workflow.now() + self.clock_offset

    def key(self, step: m.Step, scope: Scope, suffix: str = "") -> str:
        info = workflow.info()
        return f"{info.workflow_id}/{info.first_execution_run_id}/{step.path}{scope.key_suffix}{suffix}"

    def ref(self, step: m.Step) -> act.RunRef:
        return act.RunRef(workflow.info().workflow_id, self.playbook.id, self.account_id, step.id, self.playbook.version)

    def run_info(self) -> dict[str, Any]:
        info = workflow.info()
        return {
            "id": info.workflow_id,
            "playbook": self.playbook.id,
            "version": self.playbook.version,
            "started_at": (info.start_time + self.clock_offset).isoformat() if info.start_time else None,
        }

    def context(self, scope: Scope, **extra: Any) -> dict[str, Any]:
        return {
            "account": self.account,
            "contact": self.contacts[0] if self.contacts else {},
            "contacts": self.contacts,
            "event": self.event,
            "vars": scope.vars,
            "steps": scope.steps,
            "run": self.run_info(),
            "today": self.now().astimezone(self.tz).date().isoformat(),
            **scope.locals,
            **extra,
        }

    def render(self, value: Any, scope: Scope, **extra: Any) -> Any:
        """Renders playbook text; values from data are never rendered again."""
        if isinstance(value, str):
            return ex.render(value, self.context(scope, **extra)) if ex.is_template(value) else value
        if isinstance(value, dict):
            return {k: self.render(v, scope, **extra) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.render(v, scope, **extra) for v in value]
        return value

    def evaluate(self, expression: Any, scope: Scope, **extra: Any) -> Any:
        return ex.evaluate(expression, self.context(scope, **extra))

    def note(self, step: m.Step, status: str, detail: str = "") -> None:
        self.timeline.append(
            TimelineEntry(self.now().isoformat(), step.path, step.id, step.kind, status, detail[:500])
        )

    def record(self, step: m.Step, scope: Scope, status: str, result: dict[str, Any] | None = None) -> None:
        result = result or {}
        if step.id:
            scope.steps[step.id] = {**result, "status": result.get("status", status)}
            if not scope.key_suffix:  # per-item results stay inside their item
                self.statuses[step.id] = {"status": status, "result": result}

    def options(self, step: m.Step) -> dict[str, Any]:
        retry = DEFAULT_RETRY
        if step.retry:
            retry = RetryPolicy(
                initial_interval=_seconds(step.retry.initial_interval),
                backoff_coefficient=step.retry.backoff,
                maximum_attempts=step.retry.max_attempts,
                maximum_interval=_seconds(step.retry.maximum_interval) if step.retry.maximum_interval else None,
            )
        opts: dict[str, Any] = {"start_to_close_timeout": ACTIVITY_TIMEOUT, "retry_policy": retry}
        if step.timeout and step.kind not in ("wait", "wait_for", "approval", "call_task"):
            opts["schedule_to_close_timeout"] = _seconds(step.timeout)
        return opts

    async def call(self, step: m.Step, name: str, arg: Any, result_type: type) -> Any:
        try:
            return await workflow.execute_activity(name, arg, result_type=result_type, **self.options(step))
        except ActivityError as err:
            if _cancelled(err):
                raise asyncio.CancelledError() from None
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            raise StepFailed(f"{name} failed: {message}") from None

    def duration_until(self, step: m.Step, text: str, scope: Scope) -> datetime:
        rendered = str(self.render(text, scope)).strip()
        try:
            return calendar.deadline(self.now(), rendered, self.tz)
        except DurationError as err:
            raise StepFailed(f"'{rendered}' is not a duration: {err}") from None

    async def sleep_until(self, moment: datetime) -> None:
        delay = (moment - self.now()).total_seconds()
        if delay > 0:
            await workflow.sleep(delay)

    def set_snapshot(self, snapshot: act.AccountSnapshot | None) -> None:
        if snapshot is not None:
            self.account = snapshot.account
            self.contacts = list(snapshot.contacts)

    # ----------------------------------------------------------------- the step loop

    async def run_steps(self, steps: tuple[m.Step, ...], scope: Scope) -> None:
        for step in steps:
            await self.run_step(step, scope)

    async def run_step(self, step: m.Step, scope: Scope) -> None:
        try:
            if step.when is not None and not self.evaluate(step.when, scope):
                self.record(step, scope, "skipped")
                self.note(step, "skipped", f"when: {step.when}")
                return
        except ex.ExpressionError as err:
            return self.fail(step, scope, f"when: {err}")
        self.current.append(step.id or step.path)
        self.note(step, "started")
        try:
            runner = getattr(self, f"step_{step.kind}")
            if step.timeout and step.kind in ("switch", "parallel", "for_each", "run_playbook"):
                result = await asyncio.wait_for(runner(step, scope), _seconds(step.timeout).total_seconds())
            else:
                result = await runner(step, scope)
        except asyncio.TimeoutError:
            return self.fail(step, scope, f"timed out after {step.timeout}")
        except (StepFailed, ex.ExpressionError) as err:
            return self.fail(step, scope, getattr(err, "message", str(err)))
        finally:
            if (step.id or step.path) in self.current:
                self.current.remove(step.id or step.path)
        self.record(step, scope, "done", result)
        self.note(step, "done", _summary(result))

    def fail(self, step: m.Step, scope: Scope, message: str) -> None:
        self.record(step, scope, "failed", {"error": message})
        self.note(step, "failed", message)
        if step.on_error != "continue":
            raise StepFailed(f"step {step.id or step.path} failed: {message}")

    def mark_not_run(self, steps: tuple[m.Step, ...] | None, scope: Scope) -> None:
        for s in m.iter_steps(steps or ()):
            if s.id and s.id not in scope.steps:
                self.record(s, scope, "not_run")

    # ----------------------------------------------------------------- step kinds

    async def step_email(self, step: m.EmailStep, scope: Scope) -> dict[str, Any]:
        to = [str(a) for a in self.render(list(step.to), scope)]
        subject = str(self.render(step.subject or "", scope))
        body = str(self.render(step.body or "", scope))
        result: dict[str, Any] = {}
        if step.approval is not None:
            draft = {"to": to, "subject": subject, "body": body}
            decision = await self.ask_approval(step, step.approval, scope, draft)
            result = {"decision": decision["decision"], "by": decision["by"], "comment": decision["comment"]}
            if decision["decision"] != "approved":
                return {**result, "message_id": None, "status": "not_sent"}
            edits = decision.get("edits") or {}
            subject = str(edits.get("subject", subject))
            body = str(edits.get("body", body))
        resume = calendar.quiet_until(self.now(), self.playbook.settings.quiet_hours, self.tz)
        if resume is not None:
            self.note(step, "waiting", f"quiet hours until {resume.isoformat()}")
            await self.sleep_until(resume)
        request = act.EmailRequest(
            key=self.key(step, scope),
            ref=self.ref(step),
            to=to,
            at=self.now().isoformat(),
            subject=subject,
            body=body,
            cc=[str(a) for a in self.render(list(step.cc), scope)],
            bcc=[str(a) for a in self.render(list(step.bcc), scope)],
            sender=self.render(step.sender, scope) if step.sender else (self.account.get("owner") or {}).get("email"),
            reply_to=self.render(step.reply_to, scope) if step.reply_to else None,
            template_id=step.template_id,
            data=self.render(dict(step.data), scope),
        )
        sent: act.EmailResult = await self.call(step, "send_email", request, act.EmailResult)
        return {**result, "message_id": sent.message_id, "status": sent.status, "subject": subject, "body": body}

    async def step_call_task(self, step: m.CallTaskStep, scope: Scope) -> dict[str, Any]:
        due_at = self.duration_until(step, step.due, scope).isoformat() if step.due else None
        request = act.CallTaskRequest(
            key=self.key(step, scope),
            ref=self.ref(step),
            assignee=str(self.render(step.assignee, scope)),
            title=str(self.render(step.title, scope)),
            at=self.now().isoformat(),
            notes=str(self.render(step.notes or "", scope)),
            due_at=due_at,
            outcomes=list(step.outcomes),
            wait=step.wait,
        )
        created: act.CallTaskResult = await self.call(step, "create_call_task", request, act.CallTaskResult)
        result: dict[str, Any] = {"task_id": created.task_id, "assignee": created.assignee, "outcome": None}
        if not step.wait:
            return result
        ask = _PendingAsk(Pending("call_task", created.task_id, step.id, [created.assignee], list(step.outcomes)))
        self.pending[created.task_id] = ask
        self.open_asks[created.task_id] = "call_task"
        timeout = step.wait_timeout or step.timeout
        self.note(step, "waiting", f"for the outcome of task {created.task_id}")
        try:
            await workflow.wait_condition(
                lambda: ask.answer is not None,
                timeout=(self.duration_until(step, timeout, scope) - self.now()) if timeout else None,
            )
            answer: Outcome = ask.answer
            outcome, by, status = answer.outcome, answer.by, "done"
        except asyncio.TimeoutError:
            outcome, by, status = "timed_out", None, "timed_out"
        finally:
            self.pending.pop(created.task_id, None)
        await self.call(
            step,
            "close_call_task",
            act.CloseTaskRequest(created.task_id, status, self.now().isoformat(), outcome, by),
            act.Done,
        )
        self.open_asks.pop(created.task_id, None)
        return {**result, "outcome": outcome}

    async def step_crm(self, step: m.CrmStep, scope: Scope) -> dict[str, Any]:
        fields = self.render(step.value, scope) if step.action == "update" else {}
        text = str(self.render(step.value, scope)) if step.action in ("note", "tag") else None
        request = act.CrmRequest(
            key=self.key(step, scope), ref=self.ref(step), action=step.action, at=self.now().isoformat(), fields=fields or {}, text=text
        )
        snapshot = await self.call(step, "update_crm" if step.action != "lookup" else "load_account",
                                   request if step.action != "lookup" else act.AccountRequest(self.account_id),
                                   act.AccountSnapshot)
        self.set_snapshot(snapshot)
        return {"account": self.account}

    async def step_assign(self, step: m.AssignStep, scope: Scope) -> dict[str, Any]:
        request = act.AssignRequest(
            key=self.key(step, scope),
            ref=self.ref(step),
            by=step.by,
            at=self.now().isoformat(),
            team=self.render(step.team, scope) if step.team else None,
            fallback=self.render(step.fallback, scope) if step.fallback else None,
        )
        result: act.AssignResult = await self.call(step, "assign_owner", request, act.AssignResult)
        self.set_snapshot(result.account)
        if result.owner is None:
            raise StepFailed(f"no CSM fits (by {step.by}) and no fallback is set")
        return {"owner": result.owner}

    async def step_wait(self, step: m.WaitStep, scope: Scope) -> dict[str, Any]:
        if step.duration is not None:
            moment = self.duration_until(step, step.duration, scope)
        elif step.business_days is not None:
            days = self.render(step.business_days, scope)
            try:
                moment = calendar.add_business_days(self.now(), int(days), self.tz)
            except (TypeError, ValueError):
                raise StepFailed(f"business_days must be a whole number, got {days!r}") from None
        else:
            until = str(self.render(step.until, scope))
            try:
                moment = calendar.parse_moment(until, self.tz)
            except ValueError:
                raise StepFailed(f"until: '{until}' is not a date or datetime") from None
            if step.offset:
                moment = calendar.after(moment, parse_duration(step.offset, allow_negative=True), self.tz)
        self.note(step, "waiting", f"until {moment.isoformat()}")
        await self.sleep_until(moment)
        return {}

    async def step_wait_for(self, step: m.WaitForStep, scope: Scope) -> dict[str, Any]:
        start = len(self.events)
        found: list[Event] = []

        judged: set[int] = set()

        def matched() -> bool:
            # Runs inside the workflow's condition check: it must never raise (that would fail the activation
            # forever). An event the match cannot judge (a missing field) does not count, as for exit_when.
            for index in range(start, len(self.events)):
                e = self.events[index]
                if e.type != step.event or index in judged:
                    continue
                judged.add(index)
                try:
                    ok = step.match is None or bool(self.evaluate(step.match, scope, event=event_context(e)))
                except ex.ExpressionError as err:
                    self.note(step, "info", f"event {e.type} ignored: match could not be evaluated ({err})")
                    ok = False
                if ok:
                    found.append(e)
                    return True
            return False

        timeout = step.wait_timeout or step.timeout
        self.note(step, "waiting", f"for event {step.event}")
        try:
            await workflow.wait_condition(
                matched, timeout=(self.duration_until(step, timeout, scope) - self.now()) if timeout else None
            )
            return {"event": event_context(found[0]), "timed_out": False}
        except asyncio.TimeoutError:
            return {"event": None, "timed_out": True}

    async def step_approval(self, step: m.ApprovalStep, scope: Scope) -> dict[str, Any]:
        return await self.ask_approval(step, step.approval, scope, None)

    async def ask_approval(
        self, step: m.Step, settings: m.ApprovalSettings, scope: Scope, draft: dict[str, Any] | None
    ) -> dict[str, Any]:
        approvers = list(settings.approvers)
        on_timeout = settings.on_timeout
        round_ = 0
        while True:
            request = act.ApprovalRequest(
                key=self.key(step, scope, f"/approval{round_ or ''}"),
                ref=self.ref(step),
                approvers=approvers,
                at=self.now().isoformat(),
                message=str(self.render(settings.message or "", scope)),
                draft=draft,
                due_at=self.duration_until(step, settings.timeout, scope).isoformat() if settings.timeout else None,
            )
            created: act.ApprovalCreated = await self.call(step, "create_approval", request, act.ApprovalCreated)
            ask = _PendingAsk(Pending("approval", created.approval_id, step.id, list(created.deciders)))
            self.pending[created.approval_id] = ask
            self.open_asks[created.approval_id] = "approval"
            self.note(step, "waiting", f"for approval {created.approval_id} by {', '.join(created.deciders) or 'ops'}")
            try:
                await workflow.wait_condition(
                    lambda: ask.answer is not None,
                    timeout=(datetime.fromisoformat(request.due_at) - self.now()) if request.due_at else None,
                )
                answer: Decision = ask.answer
                decision = "approved" if answer.decision == "approve" else "rejected"
                result = {"decision": decision, "by": answer.by, "comment": answer.comment, "edits": answer.edits}
                status = decision
            except asyncio.TimeoutError:
                answer = None
                status = "timed_out"
            finally:
                self.pending.pop(created.approval_id, None)
            escalate = answer is None and on_timeout.startswith("escalate:") and round_ == 0
            await self.call(
                step,
                "close_approval",
                act.CloseApprovalRequest(
                    created.approval_id,
                    "escalated" if escalate else status,
                    self.now().isoformat(),
                    answer.by if answer else None,
                    answer.comment if answer else None,
                    answer.edits if answer else None,
                ),
                act.Done,
            )
            self.open_asks.pop(created.approval_id, None)
            if answer is not None:
                return result
            if escalate:
                approvers = [on_timeout.split(":", 1)[1]]
                on_timeout = "reject"
                round_ += 1
                self.note(step, "info", f"no decision in time: escalated to {approvers[0]}")
                continue
            if on_timeout == "approve":
                return {"decision": "approved", "by": None, "comment": "approved on timeout", "edits": None}
            return {"decision": "timed_out", "by": None, "comment": None, "edits": None}

    async def step_switch(self, step: m.SwitchStep, scope: Scope) -> dict[str, Any]:
        chosen: int | str | None = None
        for i, case in enumerate(step.cases):
            if self.evaluate(case.when, scope):
                chosen = i
                break
        if chosen is None and step.otherwise is not None:
            chosen = "else"
        for i, case in enumerate(step.cases):
            if i != chosen:
                self.mark_not_run(case.steps, scope)
        if chosen != "else":
            self.mark_not_run(step.otherwise, scope)
        if chosen is None:
            return {"case": None}
        await self.run_steps(step.otherwise if chosen == "else" else step.cases[chosen].steps, scope)
        return {"case": chosen}

    async def step_parallel(self, step: m.ParallelStep, scope: Scope) -> dict[str, Any]:
        # "The step ends when all do": a failing branch does not cut the others short.
        outcomes = await asyncio.gather(*(self.run_steps(b.steps, scope) for b in step.branches), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, (StopRun, asyncio.CancelledError)):
                raise outcome
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise failures[0]
        return {}

    async def step_for_each(self, step: m.ForEachStep, scope: Scope) -> dict[str, Any]:
        items = self.evaluate(step.items, scope)
        if isinstance(items, dict):
            items = list(items.values())
        if not isinstance(items, (list, tuple)):
            raise StepFailed(f"items gave {type(items).__name__}, not a list")
        items = list(items)
        if len(items) > INLINE_FOR_EACH_LIMIT:
            return await self.for_each_in_children(step, scope, items)
        failed = await self.for_each_inline(step, scope, items, 0)
        return {"count": len(items), "failed": failed}

    async def for_each_inline(self, step: m.ForEachStep, scope: Scope, items: list[Any], start: int) -> int:
        gate = asyncio.Semaphore(step.concurrency)
        failures = 0

        async def one(index: int, item: Any) -> None:
            nonlocal failures
            async with gate:
                try:
                    await self.run_steps(step.steps, scope.child(step.item_name, item, index))
                except StepFailed:
                    failures += 1

        await asyncio.gather(*(one(start + i, item) for i, item in enumerate(items)))
        return failures

    async def for_each_in_children(self, step: m.ForEachStep, scope: Scope, items: list[Any]) -> dict[str, Any]:
        failed = 0
        info = workflow.info()
        snapshot = {k: v for k, v in self.context(scope).items() if k in ("vars", "steps")}
        for start in range(0, len(items), FOR_EACH_CHUNK):
            chunk = ForEachChunkInput(
                playbook=self.playbook,
                account_id=self.account_id,
                step_path=step.path,
                start_index=start,
                items=items[start : start + FOR_EACH_CHUNK],
                context={
                    "account": self.account,
                    "contacts": self.contacts,
                    "event": self.event,
                    "vars": snapshot["vars"],
                    "steps": {**snapshot["steps"], **scope.steps},
                    "locals": scope.locals,
                    "key_suffix": scope.key_suffix,
                },
                timezone=str(self.tz),
                parent_workflow_id=info.workflow_id,
                key_prefix=f"{info.workflow_id}/{info.first_execution_run_id}",
                clock_offset=self.clock_offset.total_seconds(),
            )
            handle = await workflow.start_child_workflow(
                FOR_EACH_WORKFLOW_NAME,
                chunk,
                id=f"{info.workflow_id}/{step.path}{scope.key_suffix}/{start}",
                result_type=ForEachChunkResult,
            )
            self.children.append(handle)  # events reach the items waiting in it
            try:
                result: ForEachChunkResult = await handle
            except ChildWorkflowError as err:
                if _cancelled(err):
                    raise asyncio.CancelledError() from None
                raise StepFailed(f"items {start}..{start + len(chunk.items) - 1} failed: {err.cause or err}") from None
            finally:
                self.children.remove(handle)
            failed += result.failed
            if result.stopped:
                raise StopRun(result.stopped, result.reason)
        return {"count": len(items), "failed": failed}

    async def step_set(self, step: m.SetStep, scope: Scope) -> dict[str, Any]:
        for name, value in step.values.items():
            scope.vars[name] = self.render(value, scope)
        return {}

    async def step_run_playbook(self, step: m.RunPlaybookStep, scope: Scope) -> dict[str, Any]:
        target: m.Playbook = await self.call(step, "load_playbook", act.PlaybookRequest(step.playbook_id), m.Playbook)
        info = workflow.info()
        child_id = f"{step.playbook_id}/{self.account_id}/from/{info.workflow_id}/{step.path}{scope.key_suffix}"
        child_input = RunInput(
            playbook=target,
            account_id=self.account_id,
            event=Event(**self.event) if self.event else None,
            input=self.render(dict(step.input), scope),
            clock_offset=self.clock_offset.total_seconds(),
        )
        if not step.wait:
            await workflow.start_child_workflow(
                WORKFLOW_NAME,
                child_input,
                id=child_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )
            return {"run_id": child_id, "outcome": None}
        try:
            result: RunResult = await workflow.execute_child_workflow(
                WORKFLOW_NAME, child_input, id=child_id, result_type=RunResult
            )
            return {"run_id": child_id, "outcome": result.outcome}
        except ChildWorkflowError as err:
            if _cancelled(err):
                raise asyncio.CancelledError() from None  # this run is exiting: its child was cancelled with it
            return {"run_id": child_id, "outcome": "failed", "error": str(err.cause or err)}

    async def step_stop(self, step: m.StopStep, scope: Scope) -> dict[str, Any]:
        reason = self.render(step.reason, scope) if step.reason else None
        self.record(step, scope, "done", {})
        self.note(step, "done", f"stop: {step.outcome}" + (f" ({reason})" if reason else ""))
        raise StopRun(step.outcome, reason)

    # ----------------------------------------------------------------- people answering

    def check_decision(self, d: Decision) -> _PendingAsk:
        if d.decision not in ("approve", "reject"):
            raise ValueError(f"decision must be approve or reject, not {d.decision!r}")
        asks = [a for a in self.pending.values() if a.info.kind == "approval"]
        if d.approval_id:
            ask = self.pending.get(d.approval_id)
            if ask is None or ask.info.kind != "approval":
                raise ValueError(f"approval {d.approval_id} is not pending in this run (decided already, or unknown)")
        else:
            matching = [a for a in asks if a.info.step_id == d.step_id]
            if not matching:
                raise ValueError(f"no approval is pending for step {d.step_id!r}")
            if len(matching) > 1:
                raise ValueError(f"{len(matching)} approvals are pending for step {d.step_id!r}: name the approval_id")
            ask = matching[0]
        if ask.answer is not None:
            raise ValueError(f"approval {ask.info.id} is decided already")
        if not d.admin and d.by not in ask.info.deciders:
            raise ValueError(f"{d.by!r} may not decide approval {ask.info.id}; it is for {', '.join(ask.info.deciders) or 'ops'}")
        if d.edits:
            unknown = set(d.edits) - {"subject", "body"}
            if unknown:
                raise ValueError(f"only subject and body can be edited, not {', '.join(sorted(unknown))}")
        return ask

    def check_outcome(self, o: Outcome) -> _PendingAsk:
        if o.task_id:
            ask = self.pending.get(o.task_id)
            if ask is None or ask.info.kind != "call_task":
                raise ValueError(f"task {o.task_id} is not waiting for an outcome in this run")
        else:
            matching = [a for a in self.pending.values() if a.info.kind == "call_task" and a.info.step_id == o.step_id]
            if len(matching) != 1:
                raise ValueError(f"{len(matching) or 'no'} tasks are waiting for step {o.step_id!r}")
            ask = matching[0]
        if ask.answer is not None:
            raise ValueError(f"task {ask.info.id} has an outcome already")
        if o.outcome not in ask.info.outcomes:
            raise ValueError(f"outcome must be one of {', '.join(ask.info.outcomes)}, not {o.outcome!r}")
        if not o.admin and o.by not in ask.info.deciders:
            raise ValueError(f"{o.by!r} may not record the outcome of task {ask.info.id}; it is {ask.info.deciders[0]}'s")
        return ask

    async def forward(self, event: Event) -> None:
        """Passes an event on to the for_each chunks running now (their items may wait for it)."""
        for child in list(self.children):
            try:
                await child.signal(EVENT_SIGNAL, event)
            except Exception:  # noqa: BLE001 - the chunk ended meanwhile: nothing waits there any more
                continue

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


def _summary(result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    parts = []
    for k, v in result.items():
        if k in ("account", "body", "event"):
            continue
        parts.append(f"{k}={v}")
    return ", ".join(parts)[:300]


@workflow.defn(name=WORKFLOW_NAME)
class PlaybookRun(Interpreter):
    @workflow.init
    def __init__(self, run: RunInput) -> None:
        self.init_interpreter(run.playbook, run.account_id, run.clock_offset)
        self.status = "running"
        self.exit: tuple[str, Event] | None = None
        self.vars: dict[str, Any] = {}
        self.main: asyncio.Task[None] | None = None

    @workflow.run
    async def run(self, run: RunInput) -> RunResult:
        playbook = run.playbook
        self.event = event_context(run.event) if run.event else None
        scope = Scope(steps={}, vars={})
        self.vars = scope.vars  # exit_when rules see the run's vars
        try:
            snapshot: act.AccountSnapshot = await workflow.execute_activity(
                "load_account", act.AccountRequest(run.account_id), result_type=act.AccountSnapshot,
                start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=DEFAULT_RETRY,
            )
            self.set_snapshot(snapshot)
            tz_name = str(self.render(playbook.settings.timezone, scope) if playbook.settings.timezone else "UTC")
            self.tz = calendar.zone(tz_name)
            if str(self.tz) != tz_name:
                self.timeline.append(
                    TimelineEntry(self.now().isoformat(), "settings.timezone", None, "run", "info",
                                  f"unknown timezone {tz_name!r}: using UTC")
                )
            for name, value in playbook.vars.items():
                scope.vars[name] = self.render(value, scope)
            scope.vars.update(run.input)
        except (ex.ExpressionError, ActivityError) as err:
            return self.finish("failed", f"could not start: {err}")
        self.main = asyncio.create_task(self.run_steps(playbook.steps, scope))
        try:
            await self.main
        except asyncio.CancelledError:
            if self.exit is None:
                raise  # the run itself was cancelled
            outcome, event = self.exit
            await self.close_open_asks()
            return self.finish(outcome, f"exit on event {event.type}")
        except StopRun as stop:
            await self.close_open_asks()
            return self.finish(stop.outcome, stop.reason)
        except StepFailed as err:
            # Failed in Temporal's eyes too (the Web UI shows it), with the run's record as the error's details.
            result = self.finish("failed", err.message)
            raise ApplicationError(err.message, result, type="StepFailed", non_retryable=True) from None
        if self.exit is not None:  # an exit event came in during the last step
            outcome, event = self.exit
            return self.finish(outcome, f"exit on event {event.type}")
        return self.finish("completed", None)

    async def close_open_asks(self) -> None:
        """Tasks and approvals the run no longer waits for leave the inbox as cancelled."""
        for ask_id, kind in list(self.open_asks.items()):
            request: Any
            if kind == "call_task":
                name, request = "close_call_task", act.CloseTaskRequest(ask_id, "cancelled", self.now().isoformat())
            else:
                name, request = "close_approval", act.CloseApprovalRequest(ask_id, "cancelled", self.now().isoformat())
            await workflow.execute_activity(name, request, result_type=act.Done,
                                            start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=DEFAULT_RETRY)
        self.open_asks.clear()

    def finish(self, outcome: str, reason: str | None) -> RunResult:
        self.status = outcome
        self.timeline.append(
            TimelineEntry(self.now().isoformat(), "", None, "run", outcome, reason or "")
        )
        return RunResult(outcome=outcome, reason=reason, steps=dict(self.statuses), timeline=list(self.timeline))

    @workflow.signal(name=EVENT_SIGNAL)
    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        if self.exit is None and self.status == "running" and self.exits_on(event):
            return
        await self.forward(event)

    def exits_on(self, event: Event) -> bool:
        """Whether an exit_when rule matches; if so the run's steps are cancelled and the run ends."""
        for rule in self.playbook.exit_when:
            if rule.event != event.type:
                continue
            try:
                if rule.match is not None and not self.evaluate(rule.match, Scope({}, self.vars), event=event_context(event)):
                    continue
            except ex.ExpressionError:
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
            current=list(self.current),
            timeline=list(self.timeline),
            pending=[a.info for a in self.pending.values()],
            steps=dict(self.statuses),
        )


@workflow.defn(name=FOR_EACH_WORKFLOW_NAME)
class PlaybookForEachChunk(Interpreter):
    """Runs a slice of a large for_each's items; the parent keeps only one child per slice in its history."""

    @workflow.init
    def __init__(self, chunk: ForEachChunkInput) -> None:
        self.init_interpreter(chunk.playbook, chunk.account_id, chunk.clock_offset)
        self.key_prefix = chunk.key_prefix

    @workflow.run
    async def run(self, chunk: ForEachChunkInput) -> ForEachChunkResult:
        ctx = chunk.context
        self.account = ctx["account"]
        self.contacts = ctx["contacts"]
        self.event = ctx["event"]
        self.tz = calendar.zone(chunk.timezone)
        step = next((s for s in self.playbook.walk() if s.path == chunk.step_path), None)
        if not isinstance(step, m.ForEachStep):
            raise ApplicationError(f"no for_each step at {chunk.step_path}", non_retryable=True)
        scope = Scope(dict(ctx["steps"]), dict(ctx["vars"]), dict(ctx["locals"]), ctx["key_suffix"])
        try:
            failed = await self.for_each_inline(step, scope, chunk.items, chunk.start_index)
        except StopRun as stop:
            # A stop inside an item ends the whole run: the parent raises it on.
            return ForEachChunkResult(count=len(chunk.items), failed=0, stopped=stop.outcome, reason=stop.reason)
        return ForEachChunkResult(count=len(chunk.items), failed=failed)

    @workflow.signal(name=EVENT_SIGNAL)
    async def on_event(self, event: Event) -> None:
        self.events.append(event)
        await self.forward(event)

    def key(self, step: m.Step, scope: Scope, suffix: str = "") -> str:
        # The parent's key space: an item's effects are the same whichever workflow runs them.
        return f"{self.key_prefix}/{step.path}{scope.key_suffix}{suffix}"

