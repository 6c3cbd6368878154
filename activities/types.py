"""What the interpreter workflow sends to activities and gets back: one dataclass in, one out.

Plain dataclasses only (no imports of providers or storage), so the workflow sandbox can import
this module cheaply. Every request that causes an effect carries ``key``: the run and the step's
position (and item), never the attempt, so a retried or replayed activity finds its first effect.
``at`` is the workflow's clock (ISO 8601): simulated in tests, so activities never read the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunRef:
    """Which run and step an effect belongs to."""

    workflow_id: str
    playbook_id: str
    account_id: str
    step_id: str | None = None
    version: str = ""


@dataclass(frozen=True)
class AccountRequest:
    account_id: str
    # set by a run's first activity: the run is recorded under its workflow id, so events reach it by id
    ref: RunRef | None = None
    at: str | None = None
    # set by the first activity of runs that report their progress: their row in run_progress is registered
    run_key: str | None = None


@dataclass(frozen=True)
class ProgressReport:
    """A run's progress for the funnel's projection (engine/storage/progress.py): its whole row, and the statuses
    of the steps that changed since its last report written. ``seq`` numbers the chain's reports: a report older
    than the row's changes nothing. No personal data: ids, step ids, statuses and event types only."""

    run_key: str  # the run id of the chain's first run
    workflow_id: str
    playbook_id: str
    version: str
    account_id: str
    at: str  # the run's clock (ISO): updated_at, ended_at when the run has ended, the steps' `at`
    seq: int
    status: str = "running"  # running | completed | exited | goal | failed | cancelled
    control: bool = False
    paths: dict[str, str] = field(default_factory=dict)  # split step id -> the path taken
    reason: str = ""  # failed: why
    exit_event: str | None = None  # exited / goal: the event type that ended the run
    current: list[str] = field(default_factory=list)  # the steps the run is in now (ids, or paths)
    started_at: str | None = None  # when the chain's first run started (used when the row is new)
    steps: dict[str, str] = field(default_factory=dict)  # step id -> done | skipped | failed | not_run

    @property
    def ref(self) -> RunRef:
        """The run, as the activities' log lines name it."""
        return RunRef(self.workflow_id, self.playbook_id, self.account_id, None, self.version)


@dataclass(frozen=True)
class AccountSnapshot:
    """The account as templates see it: every CRM field, id, name and owner ({id, name, email} or None)."""

    account: dict[str, Any]
    contacts: list[dict[str, Any]] = field(default_factory=list)
    found: bool = True


@dataclass(frozen=True)
class AccountPage:
    """A page of the CRM's accounts, for segments: each account as templates see it (contacts are not read), in a
    stable order; ``after`` is the cursor of the next page, None after the last."""

    accounts: list[dict[str, Any]]
    after: str | None = None


@dataclass(frozen=True)
class AssignRequest:
    key: str
    ref: RunRef
    by: str  # language | round_robin | least_loaded | owner
    at: str
    team: str | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class AssignResult:
    owner: str | None  # the CSM id, None when nobody fits and there is no fallback
    account: AccountSnapshot | None = None


@dataclass(frozen=True)
class CrmRequest:
    key: str
    ref: RunRef
    action: str  # update | note | tag | lookup
    at: str
    fields: dict[str, Any] = field(default_factory=dict)  # update
    text: str | None = None  # note / tag


@dataclass(frozen=True)
class EmailRequest:
    key: str
    ref: RunRef
    to: list[str]
    at: str
    subject: str = ""
    body: str = ""
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    sender: str | None = None
    reply_to: str | None = None
    template_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    # Messaging governance (policy.yaml, docs/playbook-language.md "Messaging policy"). A request without a
    # category (runs started before policies existed) gets only the suppression list, on every recipient.
    category: str = ""
    unsubscribe: bool = False  # the category allows opting out: consent is checked, the link and headers added
    caps: list[CapRule] = field(default_factory=list)  # the caps that count this email (none: not capped)
    sendgrid_group: int | None = None  # the category's SendGrid suppression group (ASM), when configured


@dataclass(frozen=True)
class CapRule:
    """At most ``max`` emails to one recipient within any ``per_seconds``, counting the emails of
    ``categories`` (all categories when empty) that really went out (or are going out now)."""

    max: int
    per_seconds: int
    categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LeftOut:
    """A recipient the email did not go to, and why: unsubscribed | suppressed: <reason> | invalid | capped."""

    address: str
    reason: str


@dataclass(frozen=True)
class EmailResult:
    message_id: str
    status: str  # sent | suppressed | rejected | capped
    detail: str | None = None
    left_out: list[LeftOut] = field(default_factory=list)  # recipients not sent to, and why
    retry_at: str | None = None  # capped: the earliest moment (ISO, UTC) the caps allow this email again


# The most emails one send_emails activity takes: SendGrid's limit of personalizations in one mail send.
EMAIL_BATCH_LIMIT = 1000


@dataclass(frozen=True)
class EmailBatchRequest:
    """Emails that many for_each items reached together: sent as one batch, each still keyed by its own ``key``
    (its own outbox row, suppression check and result), so a retried batch sends nobody twice."""

    emails: list[EmailRequest]


@dataclass(frozen=True)
class EmailBatchResult:
    results: list[EmailResult]  # one per request, in the request's order


@dataclass(frozen=True)
class CallTaskRequest:
    key: str
    ref: RunRef
    assignee: str  # owner | role:<name> | user:<id> | a CSM id
    title: str
    at: str
    notes: str = ""
    due_at: str | None = None
    outcomes: list[str] = field(default_factory=list)
    wait: bool = False


@dataclass(frozen=True)
class CallTaskResult:
    task_id: str
    assignee: str  # the CSM id it went to


@dataclass(frozen=True)
class CloseTaskRequest:
    task_id: str
    status: str  # done | timed_out | cancelled
    at: str
    outcome: str | None = None
    by: str | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    key: str
    ref: RunRef
    approvers: list[str]  # owner | role:<name> | user:<id>
    at: str
    message: str = ""
    draft: dict[str, Any] | None = None  # for an email with approval: to, subject, body
    due_at: str | None = None


@dataclass(frozen=True)
class ApprovalCreated:
    approval_id: str
    deciders: list[str]  # the CSM ids allowed to decide


@dataclass(frozen=True)
class CloseApprovalRequest:
    approval_id: str
    status: str  # approved | rejected | timed_out | escalated
    at: str
    by: str | None = None
    comment: str | None = None
    edits: dict[str, Any] | None = None


@dataclass(frozen=True)
class PlaybookRequest:
    """run_playbook: the playbook to start, by id, from the worker's library."""

    playbook_id: str


@dataclass(frozen=True)
class Done:
    """An activity's empty answer (a dataclass, so fields can be added later)."""

    ok: bool = True


@dataclass(frozen=True)
class SegmentPage:
    """One page of the accounts a scheduled playbook's segment selects, in id order after `after`."""

    accounts: str | bool | None  # the expression over `account` (or literal true/false); None: every account
    after: str = ""
    limit: int = 200


@dataclass(frozen=True)
class SegmentResult:
    account_ids: list[str]
    next_after: str | None  # None: this was the last page
    scanned: int = 0


@dataclass(frozen=True)
class StartRunsRequest:
    """Start one run of a playbook per account (a schedule tick): enrollment rules as for events."""

    playbook_id: str
    account_ids: list[str]
    tick: str  # the tick's time, ISO 8601
    task_queue: str


@dataclass(frozen=True)
class StartRunsResult:
    started: int
    skipped: int


@dataclass(frozen=True)
class HealthWrite:
    """An account's health score and band as the CRM of record keeps them (None: no score)."""

    account_id: str
    score: float | None
    band: str | None


@dataclass(frozen=True)
class HealthPageRequest:
    """One page of the nightly health recompute (engine/interpreter/health_nightly.py): the accounts after the CRM's
    cursor ``after`` (None: from the start), recomputed at ``at`` (the night's time, ISO 8601: a retried page
    computes the same scores and sends the same health.score_changed events, by id)."""

    at: str
    after: str | None
    limit: int
    task_queue: str


@dataclass(frozen=True)
class HealthPageResult:
    after: str | None  # the next page's cursor; None: this was the last page
    accounts: int  # accounts read
    scored: int  # accounts with at least one scorecard
    changed: int  # scores that changed (health_history rows written)
    emitted: int  # health.score_changed events taken
    writes: list[HealthWrite] = field(default_factory=list)  # what the CRM of record should hold now


@dataclass(frozen=True)
class HealthWriteRequest:
    writes: list[HealthWrite]
    at: str
