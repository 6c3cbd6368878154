"""Steps that wait: for time (`wait`), for an event (`wait_for`), for a person (`approval`, and the
answers of call tasks and email approvals).

People answer through the workflow's updates; ``check_decision`` and ``check_outcome`` are their
validators, so an unknown, duplicate or unauthorised answer is refused before it enters history, and an
answer accepted is always used, even when it lands in the same activation as the timeout.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities import types as act
    from engine.interpreter import calendar
    from engine.interpreter.messages import Decision, Event, Outcome, Pending, event_context
    from engine.language import model as m
    from engine.language.durations import parse_duration

from engine.interpreter.core import InterpreterCore, PendingAsk, Scope, StepFailed


class WaitingSteps(InterpreterCore):
    async def step_wait(self, step: m.WaitStep, scope: Scope) -> dict[str, Any]:
        if step.duration is not None:
            moment = self.moment_after(step, step.duration, scope, "duration")
        elif step.business_days is not None:
            moment = self.pinned(step, scope, "business_days", lambda: self.business_days_from_now(step, scope))
        else:
            moment = self.pinned(step, scope, "until", lambda: self.until_moment(step, scope))
        self.note(step, "waiting", f"until {moment.isoformat()}")
        await self.sleep_until(step, moment)
        return {}

    def business_days_from_now(self, step: m.WaitStep, scope: Scope) -> datetime:
        days = self.render(step.business_days, scope)
        try:
            return calendar.add_business_days(self.now(), int(days), self.tz)
        except (TypeError, ValueError):
            raise StepFailed(f"business_days must be a whole number, got {days!r}") from None

    def until_moment(self, step: m.WaitStep, scope: Scope) -> datetime:
        until = str(self.render(step.until, scope))
        try:
            moment = calendar.parse_moment(until, self.tz)
        except ValueError:
            raise StepFailed(f"until: '{until}' is not a date or datetime") from None
        if step.offset:
            offset = str(self.render(step.offset, scope)).strip()
            try:
                moment = calendar.after(moment, parse_duration(offset, allow_negative=True), self.tz)
            except ValueError as err:
                raise StepFailed(f"offset: '{offset}' is not a duration: {err}") from None
        return moment

    async def step_wait_for(self, step: m.WaitForStep, scope: Scope) -> dict[str, Any]:
        """Counts the events since the step before it started (``scope.since``): an event that beats the wait
        by a moment (it came during the email asking for it) is not lost."""
        found: list[Event] = []
        judged = {e.seq for e in self.events if e.seq <= scope.since}

        def matched() -> bool:
            # Runs inside the workflow's condition check: it must never raise (that would fail the activation
            # forever), and it gives the same answer when asked again. An event the match cannot judge (a missing
            # field) does not count, as for exit_when.
            if found:
                return True
            for seen in self.events:
                if seen.seq in judged or seen.event.type != step.event:
                    continue
                judged.add(seen.seq)
                try:
                    ok = step.match is None or bool(self.evaluate(step.match, scope, event=event_context(seen.event)))
                except Exception as err:  # noqa: BLE001 - see above
                    self.note(step, "info", f"event {seen.event.type} ignored: match could not be evaluated ({err})")
                    ok = False
                if ok:
                    found.append(seen.event)
                    return True
            return False

        timeout = step.wait_timeout or step.timeout
        moment = self.moment_after(step, timeout, scope, "timeout") if timeout else None
        self.note(step, "waiting", f"for event {step.event}")
        if await self.wait_until(step, matched, moment):
            return {"event": event_context(found[0]), "timed_out": False}
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
            suffix = f"/approval{round_ or ''}"
            due = (
                self.moment_after(step, settings.timeout, scope, f"approval{round_ or ''}.timeout")
                if settings.timeout
                else None
            )
            request = act.ApprovalRequest(
                key=self.key(step, scope, suffix),
                ref=self.ref(step),
                approvers=approvers,
                at=self.now().isoformat(),
                message=str(self.render(settings.message or "", scope)),
                draft=draft,
                due_at=due.isoformat() if due else None,
            )
            created: act.ApprovalCreated = await self.create_ask(
                step, scope, "create_approval", request, act.ApprovalCreated, _opened_approval
            )
            ask = PendingAsk(Pending("approval", created.approval_id, step.id, list(created.deciders)))
            self.note(step, "waiting", f"for approval {created.approval_id} by {', '.join(created.deciders) or 'ops'}")
            answer: Decision | None = await self.await_answer(step, ask, due)
            status = ("approved" if answer.decision == "approve" else "rejected") if answer else "timed_out"
            escalate = answer is None and on_timeout.startswith("escalate:") and round_ == 0
            await self.call(
                step,
                scope,
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
                return {"decision": status, "by": answer.by, "comment": answer.comment, "edits": answer.edits}
            if escalate:
                approvers = [on_timeout.split(":", 1)[1]]
                on_timeout = "reject"
                round_ += 1
                self.note(step, "info", f"no decision in time: escalated to {approvers[0]}")
                continue
            if on_timeout == "approve":
                return {"decision": "approved", "by": None, "comment": "approved on timeout", "edits": None}
            return {"decision": "timed_out", "by": None, "comment": None, "edits": None}

    async def await_answer(self, step: m.Step, ask: PendingAsk, due: datetime | None) -> Any:
        """Waits for a person's answer to the ask until ``due``; None when none came in time."""
        self.pending[ask.info.id] = ask
        self.open_asks[ask.info.id] = ask.info.kind
        try:
            await self.wait_until(step, lambda: ask.answer is not None, due)
        finally:
            self.pending.pop(ask.info.id, None)
        return ask.answer

    # ----------------------------------------------------------------- people answering

    def find_ask(
        self, kind: str, ask_id: str | None, step_id: str | None, *, unknown: str, none: str, several: str
    ) -> PendingAsk:
        """The pending ask an answer names: by its id, or else as the only one of its kind waiting in the step."""
        if ask_id:
            found = self.pending.get(ask_id)
            if found is None or found.info.kind != kind:
                raise ValueError(unknown)
            return found
        matching = [a for a in self.pending.values() if a.info.kind == kind and a.info.step_id == step_id]
        if not matching:
            raise ValueError(none)
        if len(matching) > 1:
            raise ValueError(f"{len(matching)} {several}")
        return matching[0]

    def check_decision(self, d: Decision) -> PendingAsk:
        if d.decision not in ("approve", "reject"):
            raise ValueError(f"decision must be approve or reject, not {d.decision!r}")
        ask = self.find_ask(
            "approval",
            d.approval_id,
            d.step_id,
            unknown=f"approval {d.approval_id} is not pending in this run (decided already, or unknown)",
            none=f"no approval is pending for step {d.step_id!r}",
            several=f"approvals are pending for step {d.step_id!r}: name the approval_id",
        )
        if ask.answer is not None:
            raise ValueError(f"approval {ask.info.id} is decided already")
        if not d.admin and d.by not in ask.info.deciders:
            raise ValueError(
                f"{d.by!r} may not decide approval {ask.info.id}; it is for {', '.join(ask.info.deciders) or 'ops'}"
            )
        if d.edits:
            unknown = set(d.edits) - {"subject", "body"}
            if unknown:
                raise ValueError(f"only subject and body can be edited, not {', '.join(sorted(unknown))}")
        return ask

    def check_outcome(self, o: Outcome) -> PendingAsk:
        ask = self.find_ask(
            "call_task",
            o.task_id,
            o.step_id,
            unknown=f"task {o.task_id} is not waiting for an outcome in this run",
            none=f"no tasks are waiting for step {o.step_id!r}",
            several=f"tasks are waiting for step {o.step_id!r}",
        )
        if ask.answer is not None:
            raise ValueError(f"task {ask.info.id} has an outcome already")
        if o.outcome not in ask.info.outcomes:
            raise ValueError(f"outcome must be one of {', '.join(ask.info.outcomes)}, not {o.outcome!r}")
        if not o.admin and o.by not in ask.info.deciders:
            raise ValueError(
                f"{o.by!r} may not record the outcome of task {ask.info.id}; it is {ask.info.deciders[0]}'s"
            )
        return ask


def _opened_approval(created: act.ApprovalCreated) -> tuple[str, str]:
    return created.approval_id, "approval"
