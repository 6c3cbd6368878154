"""Steps with effects on the world: `email`, `call_task`, `crm`, `assign`, and `set` (the run's own vars).

Each effect is one activity whose key (run + step position + item) makes it happen once, however often
the activity is retried or the step started again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities import types as act
    from engine.interpreter import calendar
    from engine.interpreter.messages import Pending
    from engine.language import model as m
    from engine.language.policy import EmailRules

from engine.interpreter.core import PendingAsk, Scope, StepFailed, activity_failure
from engine.interpreter.waiting import WaitingSteps

# Since this patch an email step's result (steps.ID, the run's result and its state query) keeps the message id,
# status and subject, not the body: the body is in the outbox / provider row of that message id, and a run's result
# repeated every body it sent. A step whose body a later step reads (`steps.ID.body`, documented) keeps it.
# Runs recorded before the patch replay with their bodies.
RESULT_WITHOUT_BODIES_PATCH = "result-without-bodies"
ALL_STEPS = "*"  # body_readers(): a template reads some step's body in a way the pattern does not name
_BODY_READ = re.compile(
    r"""steps\s*(?:\.\s*([A-Za-z_][\w-]*)|\[\s*['"]([^'"]+)['"]\s*\])\s*(?:\.\s*body\b|\[\s*['"]body['"]\s*\])"""
)


@dataclass
class EmailBatch:
    """The emails of one step that for_each items reached in the same workflow activation: one send_emails."""

    step: m.EmailStep
    scope: Scope  # the first item's: the activity's options (retry, timeout) come from the step
    members: list[tuple[act.EmailRequest, asyncio.Future[act.EmailResult]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    gone: int = 0  # members cancelled (their run is exiting)


def _utc(moment: str) -> datetime:
    return datetime.fromisoformat(moment).astimezone(UTC)


def _governed(rules: EmailRules | None) -> dict[str, Any]:
    """The email request's fields from the messaging policy: its category, whether recipients may opt out, the caps
    that count it. Runs started before policies existed (no policy in their input) send as they did."""
    if rules is None:
        return {}
    return {
        "category": rules.category,
        "unsubscribe": rules.unsubscribe,
        "caps": [act.CapRule(c.max, c.per_seconds, list(c.categories)) for c in rules.caps],
        "sendgrid_group": rules.sendgrid_group,
    }


def _texts(value: Any) -> Iterator[str]:
    """Every string in a model object (its dataclasses, tuples and dicts), keys of free-form maps excluded."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)
    elif dataclasses.is_dataclass(value):
        for v in vars(value).values():
            yield from _texts(v)


def body_readers(playbook: m.Playbook) -> frozenset[str]:
    """Ids of the email steps whose body some template or expression of the playbook reads (steps.ID.body,
    steps['ID']['body']); ALL_STEPS in it when a text names both `steps` and `body` some other way (kept, to be
    safe). Text scanning of the model's strings only: no template is parsed."""
    readers: set[str] = set()
    for text in _texts(playbook.steps):
        if "body" not in text or "steps" not in text:
            continue
        named = [a or b for a, b in _BODY_READ.findall(text)]
        readers.update(named or [ALL_STEPS])
    return frozenset(readers)


class EffectSteps(WaitingSteps):
    _body_readers: frozenset[str] | None = None  # body_readers(self.playbook), worked out once per run

    def keeps_body(self, step: m.EmailStep) -> bool:
        """Whether the email step's result keeps its body (see RESULT_WITHOUT_BODIES_PATCH)."""
        if not workflow.patched(RESULT_WITHOUT_BODIES_PATCH):
            return True
        if self._body_readers is None:
            self._body_readers = body_readers(self.playbook)
        return ALL_STEPS in self._body_readers or step.id in self._body_readers

    async def step_email(self, step: m.EmailStep, scope: Scope) -> dict[str, Any]:
        rules = self.playbook.policy.for_email(step.category) if self.playbook.policy is not None else None
        # the draft in one render (one context); the rest as it is sent, after any approval or quiet hours
        to_, subject_, body_ = self.render([list(step.to), step.subject or "", step.body or ""], scope)
        to = [str(a) for a in to_]
        subject = str(subject_)
        body = str(body_)
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
            # after an approval, the step is not started again in a new run: the decision is in this one
            await self.sleep_until(
                step, self.pinned(step, scope, "quiet_hours", lambda: resume), may_roll=step.approval is None
            )
        cc, bcc, sender, reply_to, data = self.render(
            [list(step.cc), list(step.bcc), step.sender, step.reply_to, dict(step.data)], scope
        )
        request = act.EmailRequest(
            key=self.key(step, scope),
            ref=self.ref(step),
            to=to,
            at=self.now().isoformat(),
            subject=subject,
            body=body,
            cc=[str(a) for a in cc],
            bcc=[str(a) for a in bcc],
            sender=sender if step.sender else (self.account.get("owner") or {}).get("email"),
            reply_to=reply_to if step.reply_to else None,
            template_id=step.template_id,
            data=data,
            **_governed(rules),
        )
        sent = await self.send(step, scope, request)
        if sent.status == "capped" and rules is not None and rules.when_capped == "defer":
            # wait until the caps allow it (the activity says when), at most max_delay after the first try
            latest = self.pinned(
                step, scope, "capped_until", lambda: self.now() + timedelta(seconds=rules.max_delay_seconds or 0)
            )
            while sent.status == "capped" and sent.retry_at and _utc(sent.retry_at) <= latest:
                self.note(step, "waiting", f"capped until {sent.retry_at}")
                await self.sleep_until(step, _utc(sent.retry_at), may_roll=step.approval is None)
                sent = await self.send(step, scope, dataclasses.replace(request, at=self.now().isoformat()))
        outcome = {**result, "message_id": sent.message_id, "status": sent.status, "subject": subject}
        if self.keeps_body(step):
            outcome["body"] = body
        if sent.left_out:
            outcome["left_out"] = [{"address": o.address, "reason": o.reason} for o in sent.left_out]
        return outcome

    async def send(self, step: m.EmailStep, scope: Scope, request: act.EmailRequest) -> act.EmailResult:
        if self.fanout and scope.gates:
            return await self.send_in_batch(step, scope, request)
        result: act.EmailResult = await self.call(step, scope, "send_email", request, act.EmailResult)
        return result

    async def send_in_batch(self, step: m.EmailStep, scope: Scope, request: act.EmailRequest) -> act.EmailResult:
        """A for_each item's email, sent with the others that reach this step in the same activation: one
        send_emails activity (up to EMAIL_BATCH_LIMIT), each email still keyed, recorded and answered on its own.
        The item holds its concurrency slot until its answer comes."""
        async with self.slot(scope):
            batch = self.email_batches.get(step.path)
            if batch is None or len(batch.members) >= act.EMAIL_BATCH_LIMIT:
                batch = self.email_batches[step.path] = EmailBatch(step, scope)
                batch.task = asyncio.create_task(self.send_batch(batch))
            answer: asyncio.Future[act.EmailResult] = asyncio.get_running_loop().create_future()
            batch.members.append((request, answer))
            try:
                result = await answer
            except asyncio.CancelledError:
                batch.gone += 1
                if batch.gone == len(batch.members) and batch.task is not None:
                    batch.task.cancel()  # every item of the batch is leaving: so does its activity
                raise
        self.stop_if_exiting()
        return result

    async def send_batch(self, batch: EmailBatch) -> None:
        # A condition is checked only once nothing else can run: by then every item that reaches this step in
        # this activation has joined the batch.
        await workflow.wait_condition(lambda: True)
        if self.email_batches.get(batch.step.path) is batch:
            del self.email_batches[batch.step.path]
        members = [(r, f) for r, f in batch.members if not f.done()]
        if not members:
            return
        try:
            sent: act.EmailBatchResult = await workflow.execute_activity(
                "send_emails",
                act.EmailBatchRequest([request for request, _ in members]),
                result_type=act.EmailBatchResult,
                **self.options(batch.step, batch.scope),
            )
        except Exception as err:  # noqa: BLE001 - e.g. a request too large for Temporal: each item's step fails
            for _, answer in members:
                if not answer.done():
                    answer.set_exception(
                        activity_failure("send_emails", err)
                        if isinstance(err, ActivityError)
                        else StepFailed(f"send_emails failed: {type(err).__name__}: {err}")
                    )
            return
        for (_, answer), result in zip(members, sent.results, strict=True):
            if not answer.done():
                answer.set_result(result)

    async def step_call_task(self, step: m.CallTaskStep, scope: Scope) -> dict[str, Any]:
        due_at = self.moment_after(step, step.due, scope, "due").isoformat() if step.due else None
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
        created: act.CallTaskResult
        if step.wait:
            created = await self.create_ask(
                step, scope, "create_call_task", request, act.CallTaskResult, _opened_task
            )
        else:  # a task nobody waits for stays in the inbox whatever becomes of the run
            created = await self.call(step, scope, "create_call_task", request, act.CallTaskResult)
        result: dict[str, Any] = {"task_id": created.task_id, "assignee": created.assignee, "outcome": None}
        if not step.wait:
            return result
        ask = PendingAsk(Pending("call_task", created.task_id, step.id, [created.assignee], list(step.outcomes)))
        timeout = step.wait_timeout or step.timeout
        due = self.moment_after(step, timeout, scope, "wait.timeout") if timeout else None
        self.note(step, "waiting", f"for the outcome of task {created.task_id}")
        answer = await self.await_answer(step, ask, due)
        outcome, by, status = (answer.outcome, answer.by, "done") if answer else ("timed_out", None, "timed_out")
        await self.call(
            step,
            scope,
            "close_call_task",
            act.CloseTaskRequest(created.task_id, status, self.now().isoformat(), outcome, by),
            act.Done,
        )
        self.open_asks.pop(created.task_id, None)
        return {**result, "outcome": outcome}

    async def step_crm(self, step: m.CrmStep, scope: Scope) -> dict[str, Any]:
        snapshot: act.AccountSnapshot
        if step.action == "lookup":
            snapshot = await self.call(
                step, scope, "load_account", act.AccountRequest(self.account_id), act.AccountSnapshot
            )
        else:
            fields = self.render(step.value, scope) if step.action == "update" else {}
            text = str(self.render(step.value, scope)) if step.action in ("note", "tag") else None
            request = act.CrmRequest(
                key=self.key(step, scope),
                ref=self.ref(step),
                action=step.action,
                at=self.now().isoformat(),
                fields=fields or {},
                text=text,
            )
            snapshot = await self.call(step, scope, "update_crm", request, act.AccountSnapshot)
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
        result: act.AssignResult = await self.call(step, scope, "assign_owner", request, act.AssignResult)
        self.set_snapshot(result.account)
        if result.owner is None:
            raise StepFailed(f"no CSM fits (by {step.by}) and no fallback is set")
        return {"owner": result.owner}

    async def step_set(self, step: m.SetStep, scope: Scope) -> dict[str, Any]:
        for name, value in step.values.items():
            scope.vars[name] = self.render(value, scope)
        return {}


def _opened_task(created: act.CallTaskResult) -> tuple[str, str]:
    return created.task_id, "call_task"
