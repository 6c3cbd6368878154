"""The activities the interpreter workflow calls, bound to a database and to providers.

Every effect is idempotent by ``key``: the row that records it is looked up first, so a retry or a
replay returns the first result instead of sending, creating or writing again.

Heartbeats: the worker beats every activity while it runs (engine.runtime.workers.KeepAlive), so a cancel (the run
ended) or a failed beat now reaches a running activity, where without heartbeats it never did. Each activity is
declared with ``no_thread_cancel_exception``: the SDK would otherwise raise CancelledError inside its thread at
any line, for instance after the provider accepted an email and before its row says "sent", leaving a row that
lies. An activity always runs to its end, as before; a cancelled run simply ignores what it returns.

send_emails reports no progress in its heartbeats: its progress is its rows, which a retry reads first (a final row
is answered as stored, only "sending" rows are sent again). A heartbeat could be no fresher than that: the SDK
sends one at most every 8 s, so the emails a dead worker's last seconds sent would be missing from it too; the
window that remains (the provider accepted, the second transaction not yet committed) is send_emails' own.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session
from temporalio import activity

from engine.language import health as hl
from engine.storage import enrolled, governance, progress
from engine.storage import models as t
from engine.storage.db import in_chunks, session, utc

from . import admission, assignment
from .admission import Admission
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
    LeftOut,
    ProgressReport,
    RunRef,
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


def _run_columns(ref: RunRef) -> dict[str, Any]:
    """The columns every effect's row keeps of the run and step that caused it."""
    return {
        "workflow_id": ref.workflow_id, "playbook_id": ref.playbook_id, "account_id": ref.account_id,
        "step_id": ref.step_id,
    }


def _public_id(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _stored(row: t.OutboxEmail | None) -> EmailResult | None:
    """An email whose row is final has its result: a retry or replay returns it and sends nothing. "sending"
    is not final (a retry sends it), nor is "capped" (a deferred email is admitted afresh later)."""
    if row is not None and row.status not in ("sending", "capped"):
        left_out = [LeftOut(address=entry["address"], reason=entry["reason"]) for entry in row.left_out or []]
        return EmailResult(message_id=row.message_id, status=row.status, left_out=left_out)
    return None


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _refused(message_id: str, admitted: Admission) -> EmailResult:
    return EmailResult(message_id=message_id, status=admitted.status, detail=admitted.detail,
                       left_out=admitted.left_out, retry_at=_iso(admitted.retry_at))


# send_emails' second transaction: one executemany for every row the provider answered
_SET_EMAIL_STATUS = (
    update(t.OutboxEmail.__table__)
    .where(t.OutboxEmail.__table__.c.key == bindparam("k"))
    .values(status=bindparam("new_status"), provider_message_id=bindparam("provider_id"))
)


def health_reasons(scorecard_id: str, components: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What holds a score down: its measures by the points they cost against a perfect 100 (negative), at most 3
    ({measure, title, value, score, points}); engine.language.health.reasons of the score alone."""
    return [{k: r[k] for k in ("measure", "title", "value", "score", "points")}
            for r in hl.holding_down(scorecard_id, components)]


def health_context(scores: Sequence[t.HealthScore]) -> dict[str, Any]:
    """``account.health`` as templates see it: the first scorecard's (in id order) score, band and reasons, and every
    scorecard's under ``cards``; an account without a score has score and band None, no reasons and no cards (so a
    template may test ``account.health.score is none`` rather than fail on a missing name)."""
    cards = {
        row.scorecard_id: {
            "scorecard": row.scorecard_id, "score": row.score, "band": row.band,
            "reasons": health_reasons(row.scorecard_id, row.components or []), "previous": row.previous_score,
            "previous_band": row.previous_band, "computed_at": _iso(utc(row.computed_at)),
        }
        for row in scores
    }
    first = next(iter(cards.values()), None)
    if first is None:
        return {"scorecard": None, "score": None, "band": None, "reasons": [], "previous": None,
                "previous_band": None, "computed_at": None, "cards": {}}
    return {**first, "cards": cards}


UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"  # RFC 8058's one-click body, also the header's value


class PlaybookActivities:
    def __init__(
        self,
        db_url: str,
        crm: CrmProvider,
        email: EmailProvider,
        default_sender: str = "success@example.com",
        listeners: list[Listener] | None = None,
        unsubscribe_links: governance.UnsubscribeLinks | None = None,
    ) -> None:
        self.db_url = db_url
        self.crm = crm
        self.email = email
        self.default_sender = default_sender
        self.listeners = listeners or []
        # None: no unsubscribe link or headers (no secret configured); consent is still checked
        self.unsubscribe_links = unsubscribe_links

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
            self.record_progress,
        ]

    def _notify(self, kind: str, record: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, record)

    # CRM ---------------------------------------------------------------------------------------

    @activity.defn(name="load_account", no_thread_cancel_exception=True)
    @logged
    def load_account(self, req: AccountRequest) -> AccountSnapshot:
        if req.ref is not None:
            at = _moment(req.at) if req.at else datetime.now(UTC)
            with session(self.db_url) as s:
                enrolled.register(s, [(req.ref.workflow_id, req.ref.account_id, req.ref.playbook_id)], at)
                if req.run_key is not None:  # the funnel counts the run as entered from now on
                    progress.register(s, req.run_key, req.ref.workflow_id, req.ref.playbook_id, req.ref.version,
                                      req.ref.account_id, at)
        try:
            snapshot = self.crm.get_account(req.account_id)
        except NotFoundError:
            snapshot = AccountSnapshot(account={"id": req.account_id, "owner": None, "tags": []}, found=False)
        except ProviderError as err:
            raise to_application_error(err) from err
        return self._with_health(req.account_id, snapshot)

    def _with_health(self, account_id: str, snapshot: AccountSnapshot) -> AccountSnapshot:
        """The snapshot with ``account.health`` (health_context) from the engine's health_scores."""
        with session(self.db_url) as s:
            scores = s.scalars(
                select(t.HealthScore).where(t.HealthScore.account_id == account_id).order_by(t.HealthScore.scorecard_id)
            ).all()
            health = health_context(scores)
        return AccountSnapshot({**snapshot.account, "health": health}, snapshot.contacts, snapshot.found)

    @activity.defn(name="assign_owner", no_thread_cancel_exception=True)
    @logged
    def assign_owner(self, req: AssignRequest) -> AssignResult:
        at = _moment(req.at)
        try:
            with session(self.db_url) as s:
                done = s.scalar(select(t.Assignment).where(t.Assignment.key == req.key))
                if done is not None:
                    account = self._with_health(req.ref.account_id, self.crm.get_account(req.ref.account_id))
                    return AssignResult(owner=done.csm_id, account=account)
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
            account = self._with_health(req.ref.account_id, self.crm.get_account(req.ref.account_id))
            return AssignResult(owner=chosen, account=account)
        except ProviderError as err:
            raise to_application_error(err) from err

    @activity.defn(name="update_crm", no_thread_cancel_exception=True)
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
            return self._with_health(account_id, self.crm.get_account(account_id))
        except ProviderError as err:
            raise to_application_error(err) from err

    # email -------------------------------------------------------------------------------------

    @activity.defn(name="send_email", no_thread_cancel_exception=True)
    @logged
    def send_email(self, req: EmailRequest) -> EmailResult:
        message_id = _public_id("msg", req.key)
        with session(self.db_url) as s:
            governance.begin_admission(s, admission.capped_addresses([req]))
            row = s.scalar(select(t.OutboxEmail).where(t.OutboxEmail.key == req.key))
            stored = _stored(row)
            if stored is not None:
                return stored
            admitted = admission.admit(s, req, admission.look_up(s, [req]), _moment(req.at))
            outgoing = self._record(s, req, row, message_id, admitted)
        if outgoing is None:
            return _refused(message_id, admitted)
        # The row is committed as "sending" before the provider is called: a crash after the provider
        # accepted but before the row says "sent" is the one window where a real provider could be
        # asked twice; the embedded outbox has no such window.
        try:
            provider_id = self.email.send(outgoing)
        except RejectedError as err:
            self._set_email_status(req.key, "rejected", None, ledger=bool(req.category))
            return EmailResult(message_id=message_id, status="rejected", detail=err.message,
                               left_out=admitted.left_out)
        except ProviderError as err:
            raise to_application_error(err) from err
        self._set_email_status(req.key, "sent", provider_id, ledger=bool(req.category))
        log.info("email sent", to=len(outgoing.to), left_out=len(admitted.left_out), message_id=message_id,
                 provider=self.email.name)
        return EmailResult(message_id=message_id, status="sent", left_out=admitted.left_out)

    @activity.defn(name="send_emails", no_thread_cancel_exception=True)
    @logged
    def send_emails(self, req: EmailBatchRequest) -> EmailBatchResult:
        """Many emails as one batch, each by send_email's rules: its own key, row, admission and result.

        One transaction reads every row by key and every recipient's suppression and consent, admits the
        emails in order (caps count the batch's earlier emails) and writes the rows ("sending"); one
        provider call sends what is left (``send_all``: SendGrid packs up to 1,000 emails into one mail
        send); one transaction records "sent" / "rejected". A row already final is returned as stored
        without the provider, so a retried batch sends nobody twice. When the provider could not send
        some emails (down, rate limited), the others are recorded first and the activity then fails
        retryably: the retry sends only the rows still "sending". The same window as send_email's
        remains, batch-wide: a crash between the provider accepting and the second transaction leaves
        those rows "sending", and a retry sends them again.
        """
        first: dict[str, EmailRequest] = {}
        for email in req.emails:
            first.setdefault(email.key, email)  # a key twice in one batch is one email, answered twice
        results: dict[str, EmailResult] = {}
        to_send: list[tuple[EmailRequest, OutgoingEmail, list[LeftOut]]] = []
        with session(self.db_url) as s:
            governance.begin_admission(s, admission.capped_addresses(first.values()))
            rows: dict[str, t.OutboxEmail] = {}
            for keys in in_chunks(list(first)):
                found = s.scalars(select(t.OutboxEmail).where(t.OutboxEmail.key.in_(keys)))
                rows.update((row.key, row) for row in found)
            open_ = []
            for key, email in first.items():
                stored = _stored(rows.get(key))
                if stored is not None:
                    results[key] = stored
                else:
                    open_.append(email)
            lookups = admission.look_up(s, open_)
            for email in open_:
                message_id = _public_id("msg", email.key)
                admitted = admission.admit(s, email, lookups, _moment(email.at))
                outgoing = self._record(s, email, rows.get(email.key), message_id, admitted)
                if outgoing is None:
                    results[email.key] = _refused(message_id, admitted)
                else:
                    to_send.append((email, outgoing, admitted.left_out))
        failure: ProviderError | None = None
        if to_send:
            try:
                outcomes = send_all(self.email, [outgoing for _email, outgoing, _left_out in to_send])
            except ProviderError as err:  # nothing was sent: every row stays "sending" for the retry
                raise to_application_error(err) from err
            updates: list[dict[str, Any]] = []
            for (email, outgoing, left_out), outcome in zip(to_send, outcomes, strict=True):
                if isinstance(outcome, str):
                    results[email.key] = EmailResult(message_id=outgoing.message_id, status="sent", left_out=left_out)
                    updates.append({"k": email.key, "new_status": "sent", "provider_id": outcome})
                elif isinstance(outcome, RejectedError):
                    results[email.key] = EmailResult(message_id=outgoing.message_id, status="rejected",
                                                     detail=outcome.message, left_out=left_out)
                    updates.append({"k": email.key, "new_status": "rejected", "provider_id": None})
                else:
                    failure = failure or outcome  # not sent: the row stays "sending"
            if updates:
                with session(self.db_url) as s:
                    s.execute(_SET_EMAIL_STATUS, updates)
                    in_ledger = [(u["k"], u["new_status"]) for u in updates if first[u["k"]].category]
                    governance.settle_deliveries(s, in_ledger)
        counts = Counter(result.status for result in results.values())
        log.info("emails sent", emails=len(first), sent=counts["sent"], suppressed=counts["suppressed"],
                 rejected=counts["rejected"], capped=counts["capped"], unsent=len(first) - len(results),
                 provider=self.email.name)
        if failure is not None:
            raise to_application_error(failure) from failure
        return EmailBatchResult(results=[results[email.key] for email in req.emails])

    def _record(
        self, s: Session, req: EmailRequest, row: t.OutboxEmail | None, message_id: str, admitted: Admission
    ) -> OutgoingEmail | None:
        """Writes or updates the email's outbox row from its admission: the email to hand to the provider
        when it is to be sent (its row "sending"), None when it is not (suppressed, rejected, capped).
        The row keeps who it went to (or, when it was not sent, who it was for), who was left out and
        why, and the body and headers exactly as the provider gets them."""
        sending = admitted.status == "sending"
        outgoing = self._outgoing(req, message_id, admitted) if sending else None
        values: dict[str, Any] = dict(
            to=list(admitted.to) if sending else list(req.to),
            cc=list(admitted.cc) if sending else list(req.cc),
            bcc=list(admitted.bcc) if sending else list(req.bcc),
            body=outgoing.body if outgoing is not None else req.body,
            data=dict(outgoing.data) if outgoing is not None else dict(req.data),
            headers=dict(outgoing.headers) if outgoing is not None else {},
            left_out=[{"address": entry.address, "reason": entry.reason} for entry in admitted.left_out],
            category=req.category,
            status=admitted.status,
        )
        if row is None:
            s.add(t.OutboxEmail(
                key=req.key,
                message_id=message_id,
                **_run_columns(req.ref),
                sender=req.sender or self.default_sender,
                reply_to=req.reply_to,
                subject=req.subject,
                template_id=req.template_id,
                provider=self.email.name,
                created_at=_when(req.at),
                **values,
            ))
        else:  # a retry of an email still "sending", or a deferred one admitted afresh
            for name, value in values.items():
                setattr(row, name, value)
        return outgoing

    def _outgoing(self, req: EmailRequest, message_id: str, admitted: Admission) -> OutgoingEmail:
        body, data, headers = req.body, dict(req.data), {}
        if req.unsubscribe and req.category and self.unsubscribe_links is not None:
            # RFC 8058: one link per recipient and category; an email to several goes with the first's
            url = self.unsubscribe_links.url(admitted.to_addresses[0], req.category)
            headers = {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": UNSUBSCRIBE_POST}
            if body:
                body = f"{body}\n\n--\nTo stop emails like this: {url}"
            if req.template_id:
                data["unsubscribe_url"] = url  # a template shows the link itself: {{unsubscribe_url}}
        return OutgoingEmail(
            message_id=message_id,
            to=list(admitted.to),
            subject=req.subject,
            body=body,
            sender=req.sender or self.default_sender,
            cc=list(admitted.cc),
            bcc=list(admitted.bcc),
            reply_to=req.reply_to,
            template_id=req.template_id,
            data=data,
            headers=headers,
            category=req.category,
            custom_args={
                "message_id": message_id,
                "workflow_id": req.ref.workflow_id,
                "account_id": req.ref.account_id,
                "step_id": req.ref.step_id or "",
                "category": req.category,
            },
            asm_group=req.sendgrid_group,
        )

    def _set_email_status(self, key: str, status: str, provider_id: str | None, *, ledger: bool) -> None:
        with session(self.db_url) as s:
            s.connection().execute(_SET_EMAIL_STATUS, {"k": key, "new_status": status, "provider_id": provider_id})
            if ledger:  # its `to` recipients are in the caps' ledger
                governance.settle_deliveries(s, [(key, status)])

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

    @activity.defn(name="create_call_task", no_thread_cancel_exception=True)
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
                **_run_columns(req.ref),
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

    @activity.defn(name="close_call_task", no_thread_cancel_exception=True)
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

    @activity.defn(name="create_approval", no_thread_cancel_exception=True)
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
                **_run_columns(req.ref),
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

    @activity.defn(name="close_approval", no_thread_cancel_exception=True)
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

    # the funnel's projection ---------------------------------------------------------------------

    @activity.defn(name="record_progress", no_thread_cancel_exception=True)
    @logged
    def record_progress(self, req: ProgressReport) -> Done:
        """The run's progress into the funnel's projection (a local activity of the run): applied whole, or not at
        all when the row has a newer report already (engine/storage/progress.py)."""
        with session(self.db_url) as s:
            applied = progress.apply(s, req)
        if not applied:
            log.info("progress report superseded", seq=req.seq)
        return Done(ok=applied)
