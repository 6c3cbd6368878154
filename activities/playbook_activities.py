"""The activities the interpreter workflow calls, bound to a database and to providers.

Every effect is idempotent by ``key``: the row that records it is looked up first, so a retry or a
replay returns the first result instead of sending, creating or writing again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from temporalio import activity

from engine.storage import enrolled
from engine.storage import models as t
from engine.storage.db import session

from . import assignment
from .crm import CrmProvider
from .email import EmailProvider, OutgoingEmail
from .errors import NotFoundError, ProviderError, RejectedError, to_application_error
from .types import (
    AccountRequest,
    AccountSnapshot,
    ApprovalCreated,
    ApprovalRequest,
    AssignRequest,
    AssignResult,
    CallTaskRequest,
    CallTaskResult,
    CloseApprovalRequest,
    CloseTaskRequest,
    CrmRequest,
    Done,
    EmailRequest,
    EmailResult,
)

# Called after a task or approval is created: (kind, record). The scenario runner listens here.
Listener = Callable[[str, dict[str, Any]], None]

log = structlog.get_logger("activities")


def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Binds the run, playbook, version and step to every log line of the activity (people's data is masked)."""

    @functools.wraps(fn)
    def wrapper(self: Any, req: Any) -> Any:
        ref = getattr(req, "ref", None)
        context = {"activity": fn.__name__, "attempt": activity.info().attempt if activity.in_activity() else None}
        if ref is not None:
            context.update(run_id=ref.workflow_id, playbook=ref.playbook_id, version=ref.version[:8], step=ref.step_id)
        with structlog.contextvars.bound_contextvars(**context):
            result = fn(self, req)
            log.info("activity done", result=type(result).__name__)
            return result

    return wrapper


def _moment(at: str) -> datetime:
    # Stored in UTC: SQLite keeps no offset, so a local time would read as UTC and be hours off.
    return datetime.fromisoformat(at).astimezone(UTC)


def _when(at: str | None) -> datetime | None:
    return _moment(at) if at else None


def _public_id(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:20]}"


class PlaybookActivities:
    def __init__(
        self,
        db_url: str,
        crm: CrmProvider,
        email: EmailProvider,
        default_sender: str = "success@example.com",
        listeners: list[Listener] | None = None,
    ) -> None:
        self.db_url = db_url
        self.crm = crm
        self.email = email
        self.default_sender = default_sender
        self.listeners = listeners or []

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.load_account,
            self.assign_owner,
            self.update_crm,
            self.send_email,
            self.create_call_task,
            self.close_call_task,
            self.create_approval,
            self.close_approval,
        ]

    def _notify(self, kind: str, record: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, record)

    # CRM ---------------------------------------------------------------------------------------

    @activity.defn(name="load_account")
    @logged
    def load_account(self, req: AccountRequest) -> AccountSnapshot:
        if req.ref is not None:
            with session(self.db_url) as s:
                enrolled.register(s, [(req.ref.workflow_id, req.ref.account_id, req.ref.playbook_id)],
                                  _moment(req.at) if req.at else datetime.now(UTC))
        try:
            return self.crm.get_account(req.account_id)
        except NotFoundError:
            return AccountSnapshot(account={"id": req.account_id, "owner": None, "tags": []}, found=False)
        except ProviderError as err:
            raise to_application_error(err) from err

    @activity.defn(name="assign_owner")
    @logged
    def assign_owner(self, req: AssignRequest) -> AssignResult:
        at = _moment(req.at)
        try:
            with session(self.db_url) as s:
                done = s.scalar(select(t.Assignment).where(t.Assignment.key == req.key))
                if done is not None:
                    return AssignResult(owner=done.csm_id, account=self.crm.get_account(req.ref.account_id))
            snapshot = self.crm.get_account(req.ref.account_id)
            owner = snapshot.account.get("owner") or {}
            with session(self.db_url) as s:
                last = s.scalar(select(t.Assignment.csm_id).order_by(t.Assignment.id.desc()).limit(1))
            chosen = assignment.choose(
                req.by,
                self.crm.team(),
                language=snapshot.account.get("language"),
                current_owner=owner.get("id"),
                last_assigned=last,
                team_filter=req.team,
            ) or req.fallback
            if chosen and chosen != owner.get("id"):
                self.crm.set_owner(req.ref.account_id, chosen, at)
            with session(self.db_url) as s:
                s.add(t.Assignment(key=req.key, account_id=req.ref.account_id, csm_id=chosen, created_at=at))
            return AssignResult(owner=chosen, account=self.crm.get_account(req.ref.account_id))
        except ProviderError as err:
            raise to_application_error(err) from err

    @activity.defn(name="update_crm")
    @logged
    def update_crm(self, req: CrmRequest) -> AccountSnapshot:
        at = _moment(req.at)
        account_id = req.ref.account_id
        try:
            if req.action == "update":
                self.crm.update_fields(account_id, req.fields, at)  # setting fields is idempotent by nature
            elif req.action == "note":
                self.crm.add_note(req.key, account_id, req.text or "", at)
            elif req.action == "tag":
                self.crm.add_tag(account_id, req.text or "")
            return self.crm.get_account(account_id)
        except ProviderError as err:
            raise to_application_error(err) from err

    # email -------------------------------------------------------------------------------------

    @activity.defn(name="send_email")
    @logged
    def send_email(self, req: EmailRequest) -> EmailResult:
        message_id = _public_id("msg", req.key)
        at = _when(req.at)
        with session(self.db_url) as s:
            row = s.scalar(select(t.OutboxEmail).where(t.OutboxEmail.key == req.key))
            if row is not None and row.status != "sending":
                return EmailResult(message_id=row.message_id, status=row.status)
            recipients = [a.strip().lower() for a in req.to if a and a.strip()]
            suppressed = set(
                s.scalars(select(t.Suppression.email).where(t.Suppression.email.in_(recipients))).all()
            )
            status = "sending"
            detail = None
            if not recipients or any("@" not in a for a in recipients):
                status, detail = "rejected", f"invalid recipient(s): {', '.join(req.to) or 'none'}"
            elif suppressed and set(recipients) <= suppressed:
                status, detail = "suppressed", "every recipient is on the suppression list"
            if row is not None and status != "sending":
                row.status = status  # a retry found the address suppressed or invalid meanwhile: record that
            if row is None:
                row = t.OutboxEmail(
                    key=req.key,
                    message_id=message_id,
                    workflow_id=req.ref.workflow_id,
                    playbook_id=req.ref.playbook_id,
                    account_id=req.ref.account_id,
                    step_id=req.ref.step_id,
                    to=list(req.to),
                    cc=list(req.cc),
                    bcc=list(req.bcc),
                    sender=req.sender or self.default_sender,
                    reply_to=req.reply_to,
                    subject=req.subject,
                    body=req.body,
                    template_id=req.template_id,
                    data=dict(req.data),
                    status=status,
                    provider=self.email.name,
                    created_at=at,
                )
                s.add(row)
        if status != "sending":
            return EmailResult(message_id=message_id, status=status, detail=detail)
        # The row is committed as "sending" before the provider is called: a crash after the provider
        # accepted but before the row says "sent" is the one window where a real provider could be
        # asked twice; the embedded outbox has no such window.
        outgoing = OutgoingEmail(
            message_id=message_id,
            to=list(req.to),
            subject=req.subject,
            body=req.body,
            sender=req.sender or self.default_sender,
            cc=list(req.cc),
            bcc=list(req.bcc),
            reply_to=req.reply_to,
            template_id=req.template_id,
            data=dict(req.data),
        )
        try:
            provider_id = self.email.send(outgoing)
        except RejectedError as err:
            self._set_email_status(req.key, "rejected", None)
            return EmailResult(message_id=message_id, status="rejected", detail=err.message)
        except ProviderError as err:
            raise to_application_error(err) from err
        self._set_email_status(req.key, "sent", provider_id)
        log.info("email sent", to=req.to, message_id=message_id, provider=self.email.name)
        return EmailResult(message_id=message_id, status="sent")

    def _set_email_status(self, key: str, status: str, provider_id: str | None) -> None:
        with session(self.db_url) as s:
            row = s.scalar(select(t.OutboxEmail).where(t.OutboxEmail.key == key))
            if row is not None:
                row.status = status
                row.provider_message_id = provider_id

    # people: who is the owner, the role, the user --------------------------------------------------

    def _owner_of(self, account_id: str) -> str | None:
        try:
            owner = self.crm.get_account(account_id).account.get("owner")
        except NotFoundError:
            return None
        return owner.get("id") if owner else None

    def _resolve_assignee(self, spec: str, account_id: str) -> str:
        if spec == "owner":
            return self._owner_of(account_id) or "unassigned"
        if spec.startswith("user:"):
            return spec[len("user:"):]
        if spec.startswith("role:"):
            role = spec[len("role:"):]
            members = [c for c in self.crm.team() if c.role == role]
            if not members:
                return spec  # nobody has the role yet: the task waits in the role's queue
            with session(self.db_url) as s:
                per_assignee = (
                    select(t.CallTask.assignee, func.count())
                    .where(t.CallTask.status == "open")
                    .group_by(t.CallTask.assignee)
                )
                open_tasks = dict(s.execute(per_assignee).all())
            return min(members, key=lambda c: (open_tasks.get(c.id, 0), c.load, c.id)).id
        return spec

    def _resolve_deciders(self, specs: list[str], account_id: str) -> list[str]:
        deciders: list[str] = []
        for spec in specs:
            if spec == "owner":
                owner = self._owner_of(account_id)
                found = [owner] if owner else []
            elif spec.startswith("role:"):
                found = [c.id for c in self.crm.team() if c.role == spec[len("role:"):]]
            elif spec.startswith("user:"):
                found = [spec[len("user:"):]]
            else:
                found = [spec]
            deciders.extend(d for d in found if d not in deciders)
        return deciders

    # call tasks ----------------------------------------------------------------------------------

    @activity.defn(name="create_call_task")
    @logged
    def create_call_task(self, req: CallTaskRequest) -> CallTaskResult:
        try:
            with session(self.db_url) as s:
                row = s.scalar(select(t.CallTask).where(t.CallTask.key == req.key))
                if row is not None:
                    return CallTaskResult(task_id=row.task_id, assignee=row.assignee)
            assignee = self._resolve_assignee(req.assignee, req.ref.account_id)
            task_id = _public_id("task", req.key)
            record = dict(
                key=req.key,
                task_id=task_id,
                workflow_id=req.ref.workflow_id,
                playbook_id=req.ref.playbook_id,
                account_id=req.ref.account_id,
                step_id=req.ref.step_id,
                assignee=assignee,
                title=req.title,
                notes=req.notes,
                outcomes=list(req.outcomes),
                wait=req.wait,
                status="open",
                created_at=_when(req.at),
                due_at=_when(req.due_at),
            )
            with session(self.db_url) as s:
                s.add(t.CallTask(**record))
        except ProviderError as err:
            raise to_application_error(err) from err
        self._notify("call_task", record)
        return CallTaskResult(task_id=task_id, assignee=assignee)

    @activity.defn(name="close_call_task")
    @logged
    def close_call_task(self, req: CloseTaskRequest) -> Done:
        with session(self.db_url) as s:
            row = s.scalar(select(t.CallTask).where(t.CallTask.task_id == req.task_id))
            if row is None:
                raise to_application_error(NotFoundError(f"no task '{req.task_id}'", provider="inbox"))
            if row.status == "open":
                row.status = req.status
                row.outcome = req.outcome
                row.completed_by = req.by
                row.completed_at = _when(req.at)
        return Done()

    # approvals -----------------------------------------------------------------------------------

    @activity.defn(name="create_approval")
    @logged
    def create_approval(self, req: ApprovalRequest) -> ApprovalCreated:
        try:
            with session(self.db_url) as s:
                row = s.scalar(select(t.Approval).where(t.Approval.key == req.key))
                if row is not None:
                    return ApprovalCreated(approval_id=row.approval_id, deciders=list(row.approvers))
            deciders = self._resolve_deciders(list(req.approvers), req.ref.account_id)
            approval_id = _public_id("apr", req.key)
            record = dict(
                key=req.key,
                approval_id=approval_id,
                workflow_id=req.ref.workflow_id,
                playbook_id=req.ref.playbook_id,
                account_id=req.ref.account_id,
                step_id=req.ref.step_id,
                approvers=deciders,
                message=req.message,
                draft=req.draft,
                status="pending",
                created_at=_when(req.at),
                due_at=_when(req.due_at),
            )
            with session(self.db_url) as s:
                s.add(t.Approval(**record))
        except ProviderError as err:
            raise to_application_error(err) from err
        self._notify("approval", record)
        return ApprovalCreated(approval_id=approval_id, deciders=deciders)

    @activity.defn(name="close_approval")
    @logged
    def close_approval(self, req: CloseApprovalRequest) -> Done:
        with session(self.db_url) as s:
            row = s.scalar(select(t.Approval).where(t.Approval.approval_id == req.approval_id))
            if row is None:
                raise to_application_error(NotFoundError(f"no approval '{req.approval_id}'", provider="inbox"))
            if row.status == "pending":
                row.status = req.status
                row.decided_by = req.by
                row.comment = req.comment
                row.edits = req.edits
                row.decided_at = _when(req.at)
        return Done()
