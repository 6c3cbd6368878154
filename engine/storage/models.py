"""The engine's own tables (SQLAlchemy 2): the built-in CRM, the email outbox, the call-task inbox,
approval drafts, and the keys that make every effect happen once.

Each effect table has a unique ``key`` (run + step position + item), so a retried or replayed
activity finds its earlier row instead of acting again. Times are the workflow's (simulated in
tests), passed in by the activity, never read from the wall clock here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}
    # Every model here is mapped to a plain Table (DeclarativeBase says FromClause, which Core's insert() refuses).
    __table__: ClassVar[Table]


class Csm(Base):
    """A customer-success manager the engine may assign (the team)."""

    __tablename__ = "csms"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    languages: Mapped[list[Any]] = mapped_column(default=list)
    role: Mapped[str | None] = mapped_column(String(100), default=None)
    capacity: Mapped[int | None] = mapped_column(Integer, default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(300), default="")
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("csms.id"), default=None, index=True)
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)  # every other CRM field
    updated_at: Mapped[datetime | None] = mapped_column(default=None)


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # 0 is the primary contact
    email: Mapped[str] = mapped_column(String(320), default="")
    first_name: Mapped[str] = mapped_column(String(200), default="")
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("account_id", "tag"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    tag: Mapped[str] = mapped_column(String(200))


class Assignment(Base):
    """Who an assign step chose, by key: a retry returns the same CSM even for round robin."""

    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    csm_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]


class OutboxEmail(Base):
    """Every email the engine sends or drafts; the embedded email provider's delivery is this row."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    message_id: Mapped[str] = mapped_column(String(200), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(400), index=True)
    playbook_id: Mapped[str] = mapped_column(String(200), index=True)
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    step_id: Mapped[str | None] = mapped_column(String(200))
    to: Mapped[list[Any]] = mapped_column(default=list)
    cc: Mapped[list[Any]] = mapped_column(default=list)
    bcc: Mapped[list[Any]] = mapped_column(default=list)
    sender: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    template_id: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # sending | sent | suppressed | rejected | capped (capped is not final: the same key may be admitted later)
    status: Mapped[str] = mapped_column(String(20))
    provider: Mapped[str] = mapped_column(String(40))
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    # messaging governance (docs/messaging.md): the category, exactly the headers a provider got, and the
    # recipients left out ([{address, reason}]); server defaults so rows written before them read as empty
    category: Mapped[str] = mapped_column(String(100), default="", server_default="")
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))
    left_out: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))


class Suppression(Base):
    """Addresses that must not receive any email (bounced, spam report, dropped, manual), normalised."""

    __tablename__ = "suppressions"
    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200), default="unsubscribed")
    source: Mapped[str] = mapped_column(String(200), default="", server_default="")  # api | cli | sendgrid | ...
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime | None] = mapped_column(default=None)  # None: suppressed before it was recorded


class Consent(Base):
    """One contact's choice for one category of email: subscribed or unsubscribed, by whom and when."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("email", "category"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320))  # normalised (governance.normalize_address)
    category: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))  # subscribed | unsubscribed
    source: Mapped[str] = mapped_column(String(200), default="")  # link | one_click | api | cli | sendgrid | ...
    at: Mapped[datetime]


class EmailDelivery(Base):
    """The frequency caps' ledger: one row per email and `to` recipient that went out or is going out.
    A cap counts an address's rows with status sending or sent in a rolling window; a send the provider
    rejected stops counting. Written in the same transaction as the admission that counted, so caps hold
    under concurrency."""

    __tablename__ = "email_deliveries"
    __table_args__ = (UniqueConstraint("key", "address"), Index("ix_email_deliveries_address_at", "address", "at"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400))  # the outbox row's key
    address: Mapped[str] = mapped_column(String(320))  # normalised
    category: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))  # sending | sent (both count) | rejected


class WebhookEvent(Base):
    """A provider's webhook event by its id (SendGrid's sg_event_id), so a redelivery changes nothing twice."""

    __tablename__ = "webhook_events"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime]


class CallTask(Base):
    """The call-task inbox: what CSMs must do, and the outcome they record."""

    __tablename__ = "call_tasks"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    task_id: Mapped[str] = mapped_column(String(200), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(400), index=True)
    playbook_id: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    step_id: Mapped[str | None] = mapped_column(String(200))
    assignee: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(Text)
    notes: Mapped[str] = mapped_column(Text, default="")
    outcomes: Mapped[list[Any]] = mapped_column(default=list)
    wait: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | done | timed_out | cancelled
    outcome: Mapped[str | None] = mapped_column(String(100))
    completed_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    due_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class Approval(Base):
    """A decision a person must take; for an email with approval, the draft they may edit."""

    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    approval_id: Mapped[str] = mapped_column(String(200), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(400), index=True)
    playbook_id: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    step_id: Mapped[str | None] = mapped_column(String(200))
    approvers: Mapped[list[Any]] = mapped_column(default=list)  # resolved: user:<id> / role:<name>
    message: Mapped[str] = mapped_column(Text, default="")
    draft: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # to, subject, body
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | approved | rejected | timed_out
    decided_by: Mapped[str | None] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    edits: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime]
    due_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]


class EnrolledRun(Base):
    """A run by its workflow id, so an event reaches the account's runs at once, by id (Temporal's visibility
    store lags behind a start). Written by the intake when it starts a run and by every run's first activity;
    a row whose workflow has ended is removed when an event finds it gone. With continue-as-new and
    `reenroll: after_exit` the id stays the same: a signal to it reaches the run of the chain that is live."""

    __tablename__ = "enrolled_runs"
    workflow_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    playbook_id: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime]


class ApiToken(Base):
    """An API token: only its SHA-256 is stored. Roles: ops (everything), csm (their own work), system (events)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    csm_id: Mapped[str | None] = mapped_column(String(100), default=None)  # for role csm: who they are
    created_at: Mapped[datetime]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class ReceivedEvent(Base):
    """Each event id once: a repeated POST /events answers what the first one did."""

    __tablename__ = "received_events"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    type: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    received_at: Mapped[datetime]
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RunProgress(Base):
    """The funnel's projection (docs/funnel.md): one row per run, an enrollment, kept by the run itself as it
    moves (the record_progress local activity), never rebuilt from histories. ``run_key`` is the run id of the
    chain's first Temporal run: continue-as-new keeps it, a re-enrollment under the same workflow id gets a new
    one. No personal data: ids, step ids, statuses and event types only."""

    __tablename__ = "run_progress"
    __table_args__ = (Index("ix_run_progress_playbook", "playbook_id", "version", "started_at"),)
    run_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(500), index=True)
    playbook_id: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))  # the playbook's full content version
    account_id: Mapped[str] = mapped_column(String(200), index=True)
    control: Mapped[bool] = mapped_column(Boolean, default=False)  # held out (settings.control)
    paths: Mapped[dict[str, Any]] = mapped_column(default=dict)  # split step id -> the path the run took
    # running | completed | exited | goal | failed | cancelled
    status: Mapped[str] = mapped_column(String(20), default="running")
    reason: Mapped[str] = mapped_column(Text, default="")  # failed: the message (at most 500 characters)
    exit_event: Mapped[str | None] = mapped_column(String(200), default=None)  # exited / goal: the event type
    current: Mapped[list[Any]] = mapped_column(default=list)  # the steps the run is in now (waiting there)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime]
    seq: Mapped[int] = mapped_column(Integer, default=0)  # the newest report applied; an older one changes nothing


class RunStepProgress(Base):
    """Each step a run has finished one way or another (by step id, nested steps included)."""

    __tablename__ = "run_step_progress"
    run_key: Mapped[str] = mapped_column(ForeignKey("run_progress.run_key", ondelete="CASCADE"), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # done | skipped | failed | not_run
    at: Mapped[datetime]


class HealthEventValue(Base):
    """What one event gives one measure of one scorecard (docs/health.md): 1 for a count, the number for a sum or a
    last value; once per (account, scorecard, measure, event id), so a repeated event counts once. No personal data:
    ids, the time and a number."""

    __tablename__ = "health_event_values"
    # One index, the unique key, led by the account: a measure's window is read through it (the night keeps only
    # what is in a window), and an event's values go to the account's pages (migration 0008)
    __table_args__ = (
        UniqueConstraint("account_id", "scorecard_id", "measure_id", "event_id",
                         name="uq_health_event_values_account_event"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(String(200))
    scorecard_id: Mapped[str] = mapped_column(String(200))
    measure_id: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime]  # when the event happened (its occurred_at, else when it was taken)
    value: Mapped[float] = mapped_column(Float)


class HealthScore(Base):
    """An account's current score on one scorecard, its band, the measures' parts of it, and the score before the
    last change (the trend)."""

    __tablename__ = "health_scores"
    # the ops page's counts per band and lowest scores of a band (engine/storage/health_overview.py)
    __table_args__ = (Index("ix_health_scores_band", "scorecard_id", "band"),)
    account_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    scorecard_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    score: Mapped[float | None] = mapped_column(Float, default=None)  # None: every measure skipped
    band: Mapped[str | None] = mapped_column(String(100), default=None)
    components: Mapped[list[Any]] = mapped_column(default=list)  # engine.language.health.Component as dicts
    computed_at: Mapped[datetime]
    scorecard_version: Mapped[str] = mapped_column(String(100), default="")
    previous_score: Mapped[float | None] = mapped_column(Float, default=None)
    previous_band: Mapped[str | None] = mapped_column(String(100), default=None)


class HealthHistory(Base):
    """One row per change of an account's score on a scorecard (not per recompute): the trend's memory. ``cause`` is
    what changed it (the event id, or nightly/<time>), so a change whose health.score_changed could not be sent is
    sent again when the same event (or the same nightly page) is taken again."""

    __tablename__ = "health_history"
    __table_args__ = (
        Index("ix_health_history_account", "account_id", "scorecard_id", "computed_at"),
        # the ops page's band changes of a scorecard since a day, read from the index alone
        Index("ix_health_history_band_changes", "scorecard_id", "computed_at", "band", "previous_band"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(200))
    scorecard_id: Mapped[str] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Float, default=None)
    band: Mapped[str | None] = mapped_column(String(100), default=None)
    computed_at: Mapped[datetime]
    previous_score: Mapped[float | None] = mapped_column(Float, default=None)
    previous_band: Mapped[str | None] = mapped_column(String(100), default=None)
    reasons: Mapped[list[Any]] = mapped_column(default=list)  # engine.language.health.reasons(): measure ids, numbers
    cause: Mapped[str] = mapped_column(String(300), default="", index=True)
