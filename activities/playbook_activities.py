"""The activities the interpreter workflow calls, bound to a database and to providers.

Every effect is idempotent by ``key``: the row that records it is looked up first, so a retry or a
replay returns the first result instead of sending, creating or writing again.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session
from temporalio import activity

from engine.storage import enrolled
from engine.storage import models as t
from engine.storage.db import session

from . import assignment
from .crm import CrmProvider
from .email import EmailProvider, OutgoingEmail, send_all
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
    EmailBatchRequest,
    EmailBatchResult,
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
        ref = getattr(req, "ref", None) or _batch_ref(req)
        context = {"activity": fn.__name__, "attempt": activity.info().attempt if activity.in_activity() else None}
        if ref is not None:
            context.update(run_id=ref.workflow_id, playbook=ref.playbook_id, version=ref.version[:8], step=ref.step_id)
        with structlog.contextvars.bound_contextvars(**context):
            result = fn(self, req)
            log.info("activity done", result=type(result).__name__)
            return result

    return wrapper


def _batch_ref(req: Any) -> Any:
    """A batch's run and step, when all its items share them (one step's for_each items); else None."""
    refs = {(e.ref.workflow_id, e.ref.step_id): e.ref for e in getattr(req, "emails", None) or []}
    return next(iter(refs.values())) if len(refs) == 1 else None


def _moment(at: str) -> datetime:
    # Stored in UTC: SQLite keeps no offset, so a local time would read as UTC and be hours off.
    return datetime.fromisoformat(at).astimezone(UTC)


def _when(at: str | None) -> datetime | None:
    return _moment(at) if at else None


def _public_id(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """IN lists of at most ``size``: SQLite allows 32,766 bound parameters per statement, older builds 999."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _recipients(req: EmailRequest) -> list[str]:
    return [a.strip().lower() for a in req.to if a and a.strip()]


def _stored(row: t.OutboxEmail | None) -> EmailResult | None:
    """An email whose row is past "sending" has its result: a retry or replay returns it and sends nothing."""
    if row is not None and row.status != "sending":
        return EmailResult(message_id=row.message_id, status=row.status)
    return None


def _suppressed(s: Session, addresses: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(set(addresses))):
        found.update(s.scalars(select(t.Suppression.email).where(t.Suppression.email.in_(chunk))).all())
    return found


# send_emails' second transaction: one executemany for every row the provider answered
_SET_EMAIL_STATUS = (
    update(t.OutboxEmail.__table__)
    .where(t.OutboxEmail.__table__.c.key == bindparam("k"))
    .values(status=bindparam("new_status"), provider_message_id=bindparam("provider_id"))
)


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
            self.send_emails,
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
        with session(self.db_url) as s:
            row = s.scalar(select(t.OutboxEmail).where(t.OutboxEmail.key == req.key))
            stored = _stored(row)
            if stored is not None:
                return stored
            refused = self._admit(s, req, row, message_id, _suppressed(s, _recipients(req)))
        if refused is not None:
            return refused
        # The row is committed as "sending" before the provider is called: a crash after the provider
        # accepted but before the row says "sent" is the one window where a real provider could be
        # asked twice; the embedded outbox has no such window.
        try:
            provider_id = self.email.send(self._outgoing(req, message_id))
        except RejectedError as err:
            self._set_email_status(req.key, "rejected", None)
            return EmailResult(message_id=message_id, status="rejected", detail=err.message)
        except ProviderError as err:
            raise to_application_error(err) from err
        self._set_email_status(req.key, "sent", provider_id)
        log.info("email sent", to=req.to, message_id=message_id, provider=self.email.name)
        return EmailResult(message_id=message_id, status="sent")

    @activity.defn(name="send_emails")
    @logged
    def send_emails(self, req: EmailBatchRequest) -> EmailBatchResult:
        """Many emails as one batch, each by send_email's rules: its own key, row, suppression check and result.

        One transaction reads every row by key and every recipient's suppression and writes the new rows
        ("sending"); one provider call sends what is left (``send_all``: SendGrid packs up to 1,000 emails
        into one mail send); one transaction records "sent" / "rejected". A row already past "sending" is
        returned as stored without the provider, so a retried batch sends nobody twice. When the provider
        could not send some emails (down, rate limited), the others are recorded first and the activity
        then fails retryably: the retry sends only the rows still "sending". The same window as
        send_email's remains, batch-wide: a crash between the provider accepting and the second
        transaction leaves those rows "sending", and a retry sends them again.
        """
        first: dict[str, EmailRequest] = {}
        for email in req.emails:
            first.setdefault(email.key, email)  # a key twice in one batch is one email, answered twice
        results: dict[str, EmailResult] = {}
        to_send: list[tuple[EmailRequest, str]] = []
        with session(self.db_url) as s:
            rows: dict[str, t.OutboxEmail] = {}
            for keys in _chunks(list(first)):
                found = s.scalars(select(t.OutboxEmail).where(t.OutboxEmail.key.in_(keys)))
                rows.update((row.key, row) for row in found)
            open_ = []
            for key, email in first.items():
                stored = _stored(rows.get(key))
                if stored is not None:
                    results[key] = stored
                else:
                    open_.append(email)
            suppressed = _suppressed(s, [address for email in open_ for address in _recipients(email)])
            for email in open_:
                message_id = _public_id("msg", email.key)
                refused = self._admit(s, email, rows.get(email.key), message_id, suppressed)
                if refused is not None:
                    results[email.key] = refused
                else:
                    to_send.append((email, message_id))
        failure: ProviderError | None = None
        if to_send:
            try:
                outcomes = send_all(self.email, [self._outgoing(email, message_id) for email, message_id in to_send])
            except ProviderError as err:  # nothing was sent: every row stays "sending" for the retry
                raise to_application_error(err) from err
            updates: list[dict[str, Any]] = []
            for (email, message_id), outcome in zip(to_send, outcomes, strict=True):
                if isinstance(outcome, str):
                    results[email.key] = EmailResult(message_id=message_id, status="sent")
                    updates.append({"k": email.key, "new_status": "sent", "provider_id": outcome})
                elif isinstance(outcome, RejectedError):
                    results[email.key] = EmailResult(message_id=message_id, status="rejected", detail=outcome.message)
                    updates.append({"k": email.key, "new_status": "rejected", "provider_id": None})
                else:
                    failure = failure or outcome  # not sent: the row stays "sending"
            if updates:
                with session(self.db_url) as s:
                    s.execute(_SET_EMAIL_STATUS, updates)
        counts = Counter(result.status for result in results.values())
        log.info("emails sent", emails=len(first), sent=counts["sent"], suppressed=counts["suppressed"],
                 rejected=counts["rejected"], unsent=len(first) - len(results), provider=self.email.name)
        if failure is not None:
            raise to_application_error(failure) from failure
        return EmailBatchResult(results=[results[email.key] for email in req.emails])

    def _admit(
        self, s: Session, req: EmailRequest, row: t.OutboxEmail | None, message_id: str, suppressed: set[str]
    ) -> EmailResult | None:
        """Checks the recipients against the rules and the suppression list and writes or updates the row:
        the email's result when it is not to be sent (rejected, suppressed), None when the provider is next."""
        recipients = _recipients(req)
        status = "sending"
        detail = None
        if not recipients or any("@" not in a for a in recipients):
            status, detail = "rejected", f"invalid recipient(s): {', '.join(req.to) or 'none'}"
        elif suppressed and set(recipients) <= suppressed:
            status, detail = "suppressed", "every recipient is on the suppression list"
        if row is not None and status != "sending":
            row.status = status  # a retry found the address suppressed or invalid meanwhile: record that
        if row is None:
            s.add(
                t.OutboxEmail(
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
                    created_at=_when(req.at),
                )
            )
        return None if status == "sending" else EmailResult(message_id=message_id, status=status, detail=detail)

    def _outgoing(self, req: EmailRequest, message_id: str) -> OutgoingEmail:
        return OutgoingEmail(
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
