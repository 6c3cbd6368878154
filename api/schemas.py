"""Request and response bodies (separate from the storage models)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

ID = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@/-]+$")

# The database keeps UTC without an offset (SQLite has none); an answer says it is UTC, as RFC 3339 wants.
UtcDatetime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]


def _rfc3339_string(value: Any) -> Any:
    if not isinstance(value, (str, datetime)):
        raise ValueError("must be an RFC 3339 date-time string")  # not a number read as seconds since 1970
    return value


# A timestamp in a request: a date-time string, as documented.
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339_string)]


class ProblemDetails(BaseModel):
    """Every error answer (RFC 9457), as application/problem+json."""

    type: str = Field(description="about:blank: the title says what kind of error it is")
    title: str
    status: int = Field(description="The HTTP status code, again")
    detail: str = Field(description="What went wrong, in words")
    errors: list[dict[str, str]] | None = Field(
        default=None, description="For invalid requests: each invalid field's location and message"
    )


class AccountIn(BaseModel):
    """CRM fields of the account; name and owner are columns of their own, every other field is kept as given."""

    model_config = ConfigDict(extra="allow")
    name: str | None = Field(default=None, max_length=300, description="null or absent: the name stays as it is")
    owner: str | None = Field(
        default=None, max_length=200, description="The owning CSM's id (one the engine knows); null: no owner"
    )


class ContactIn(BaseModel):
    """A contact of the account; every field besides email and first_name is kept as given."""

    model_config = ConfigDict(extra="allow")
    email: str = Field(default="", max_length=320)
    first_name: str = Field(default="", max_length=200)


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200, description="Unique per event: a repeat is answered the same.")
    type: str = Field(
        min_length=3, max_length=200, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", description="e.g. account.signed_up"
    )
    account_id: str = ID
    occurred_at: Timestamp | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    account: AccountIn | None = Field(default=None, description="CRM fields to upsert on the account.")
    contacts: list[ContactIn] | None = Field(default=None, description="The account's contacts (first = primary).")


class StartedRunOut(BaseModel):
    playbook: str
    run_id: str
    status: Literal["started", "already_running", "already_enrolled", "invalid_key"]


class EventOut(BaseModel):
    event_id: str
    runs: list[StartedRunOut]
    delivered_to: list[str]
    duplicate: bool


class ApprovalOut(BaseModel):
    id: str
    run_id: str
    playbook: str
    account_id: str
    step: str | None
    message: str
    draft: dict[str, Any] | None
    approvers: list[str]
    status: str
    created_at: UtcDatetime | None
    due_at: UtcDatetime | None


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=5000)
    edits: dict[Literal["subject", "body"], str] | None = Field(
        default=None, description="subject and/or body of the draft email"
    )


class DecisionOut(BaseModel):
    id: str
    decision: str


class TaskOut(BaseModel):
    id: str
    run_id: str
    playbook: str
    account_id: str
    step: str | None
    assignee: str
    title: str
    notes: str
    outcomes: list[str]
    status: str
    outcome: str | None
    created_at: UtcDatetime | None
    due_at: UtcDatetime | None


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: str = Field(min_length=1, max_length=100)


class RunEventIn(BaseModel):
    """The event a run started by hand sees as its trigger."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(
        min_length=3, max_length=200, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", description="e.g. account.signed_up"
    )
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, max_length=200)
    occurred_at: Timestamp | None = None


class RunStartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    playbook: str = Field(min_length=1, max_length=200)
    account_id: str = ID
    event: RunEventIn | None = None


class RunOut(BaseModel):
    id: str
    playbook: str
    version: str
    account: str
    status: str
    started_at: UtcDatetime | None
    current: list[str] = []


class TimelineOut(BaseModel):
    at: str
    step: str | None
    kind: str
    status: str
    detail: str


class RunDetailOut(RunOut):
    timeline: list[TimelineOut]
    pending: list[dict[str, Any]]


class PlaybookOut(BaseModel):
    id: str
    title: str
    version: str
    trigger: str
    steps: int


class ProblemOut(BaseModel):
    file: str
    line: int
    column: int
    message: str
    rule: str


class ValidationOut(BaseModel):
    valid: bool
    problems: list[ProblemOut]


class ValidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=1_000_000, description="The playbook's YAML text.")
    file: str = Field(default="playbook.yaml", max_length=300)


# ------------------------------------------------------------------------------ messaging governance

# An email address as the consent and suppression endpoints take it: a plain address (no display name), which
# email-validator accepts. The pattern is what the document promises, so that a client (or a fuzzer) that sends
# what it describes is never refused: a dot-atom local part of at most 64 characters, domain labels of at most 63,
# and no special-use top-level domain (RFC 6761: test, local, localhost, invalid; onion, arpa), which
# email-validator refuses. Stricter than RFC 5322 at its edges (quoted local parts, four or more subdomains).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL = rf"({_ATOM}{{1,64}}|{_ATOM}{{1,31}}\.{_ATOM}{{1,32}}|{_ATOM}{{1,20}}\.{_ATOM}{{1,21}}\.{_ATOM}{{1,21}})"
_LABEL = r"([A-Za-z0-9]{1,63}|[A-Za-z0-9]{1,25}(-[A-Za-z0-9]{1,18}){1,2})"
_TOP = r"(?!(test|local|localhost|invalid|onion|arpa)$)[A-Za-z]{2,24}"
EMAIL_PATTERN = rf"^{_LOCAL}@({_LABEL}\.){{1,3}}{_TOP}$"
EMAIL = re.compile(EMAIL_PATTERN)
EMAIL_FORMAT: dict[str, Any] = {"pattern": EMAIL_PATTERN}
EMAIL_OR_NOTHING: dict[str, Any] = {"pattern": f"^$|{EMAIL_PATTERN}"}  # a filter: empty is no filter


class WebhookOut(BaseModel):
    """What a batch of SendGrid events did."""

    events: int = Field(description="Events in the batch")
    suppressed: int = Field(description="bounce, dropped and spamreport events that suppressed their address")
    unsubscribed: int = Field(description="unsubscribe and group_unsubscribe events recorded as consent")
    delivered_to_runs: int = Field(description="delivered, open and click events that reached their run")
    duplicates: int = Field(description="Events seen before (SendGrid redelivers): nothing changed")
    ignored: int = Field(description="Events that change nothing here (processed, deferred, soft bounces, ...)")


class ConsentOut(BaseModel):
    category: str
    status: Literal["subscribed", "unsubscribed"]
    source: str = Field(description="Who recorded it: one_click, link, api, cli, sendgrid, ...")
    at: UtcDatetime


class ContactConsentOut(BaseModel):
    email: str = Field(description="The address, normalised (lower case, without a display name)")
    consents: list[ConsentOut] = Field(description="Recorded choices; a category without one is subscribed")


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscribed: bool


class SuppressionOut(BaseModel):
    email: str
    reason: str = Field(description="bounced, dropped, spam_report, manual, ...")
    source: str = Field(description="sendgrid, api, cli, ...")
    detail: str
    created_at: UtcDatetime | None


class SuppressionsOut(BaseModel):
    items: list[SuppressionOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null on the last one")


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=6, max_length=254, json_schema_extra=EMAIL_FORMAT)
    reason: str = Field(default="manual", min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*$")
    detail: str = Field(default="", max_length=2000)


class FunnelStepOut(BaseModel):
    step_id: str
    kind: str = Field(description="The step's kind; empty for a step the library's version no longer has")
    depth: int = Field(description="Nesting: 0 at the top, 1 inside a switch, parallel, split or for_each, ...")
    done: int
    skipped: int
    failed: int
    not_run: int
    waiting: int = Field(description="Live runs in this step now")


class FunnelGoalOut(BaseModel):
    event: str = Field(description="The goal's event type (an exit_when rule with goal: true)")
    reached: int
    rate: float = Field(description="reached / entered")
    median_seconds: float | None = Field(description="Median time from a run's start to the goal; null: none yet")


class ConversionOut(BaseModel):
    group: str = Field(description="treated or control; for a split, the path")
    runs: int
    converted: int = Field(description="Runs that reached a goal")
    rate: float = Field(description="converted / runs (0 for an empty group)")
    low: float = Field(description="Wilson 95% interval of the rate, low end")
    high: float


class ComparisonOut(BaseModel):
    name: str = Field(description="control, or the split step's id")
    groups: list[ConversionOut] = Field(description="control: [treated, control]; a split: one per path")
    difference: float | None = Field(
        description="treated - control, or path 2 - path 1 for a two-path split; null when a group is empty"
    )
    low: float | None = Field(description="Newcombe's 95% interval of the difference, low end")
    high: float | None


class FunnelOut(BaseModel):
    playbook_id: str
    version: str | None = Field(description="The full version counted; null: every version")
    versions: list[str] = Field(description="The playbook's versions with runs (newest first), and the library's")
    since: UtcDatetime | None = Field(description="Only runs started at or after this time")
    conversion: Literal["entered"] = Field(
        description="The denominator of every rate: all runs entered, live ones included (intention to treat)"
    )
    entered: int
    live: int = Field(description="Runs still running (waiting or working)")
    completed: int
    goal: int = Field(description="Runs that ended by reaching a goal")
    failed: int
    cancelled: int
    exited: dict[str, int] = Field(description="Runs that exited without a goal, by event type ((stop): a stop step)")
    steps: list[FunnelStepOut] = Field(description="In the playbook's order, then steps only older versions have")
    goals: list[FunnelGoalOut]
    comparisons: list[ComparisonOut]


# ------------------------------------------------------------------------------------------------ health scores


class HealthMeasureOut(BaseModel):
    measure: str = Field(description="The measure's id in the scorecard")
    title: str
    value: float | None = Field(description="What was measured (a count, a sum, a field, days); null: missing")
    score: float | None = Field(description="0-100 by the measure's rules; null when skipped")
    weight: int = Field(description="The weight the scorecard declares (the weights sum to 100)")
    effective_weight: float = Field(
        description="Its share of the score in points of 100, after skipped measures' weights are shared among the "
        "others; 0 when skipped"
    )
    contribution: float = Field(description="The points of the score it gives: effective_weight x score / 100")
    skipped: bool = Field(description="Missing data with `missing: skip`: no part of the score")
    missing: bool = Field(description="The value was missing or no rule matched it (skipped, or its fixed score)")


class HealthReasonOut(BaseModel):
    measure: str
    title: str = ""
    value: float | None = None
    score: float | None = None
    points: float = Field(
        description="reasons: what the measure costs the score against a perfect 100 (negative); last_change: how "
        "many points its part of the score moved"
    )
    previous_value: float | None = Field(default=None, description="last_change: its value before the change")
    previous_score: float | None = Field(default=None, description="last_change: its score before the change")


class HealthTrendOut(BaseModel):
    previous: float | None = Field(description="The score before its last change; null: none before")
    previous_band: str | None
    change: float | None = Field(description="score - previous; null when either is missing")
    thirty_days: float | None = Field(
        description="The score 30 days before computed_at (the newest change at or before then); null: none that old"
    )
    thirty_days_band: str | None
    change_thirty_days: float | None = Field(description="score - thirty_days; null when either is missing")


class HealthPointOut(BaseModel):
    score: float | None
    band: str | None
    computed_at: UtcDatetime


class HealthOut(BaseModel):
    scorecard: str = Field(description="The scorecard's id")
    scorecard_version: str = Field(description="The scorecard's content version the score was computed with")
    score: float | None = Field(description="0-100, one decimal; null: every measure was missing and skipped")
    band: str | None = Field(description="The scorecard's band the score falls in; null with no score")
    computed_at: UtcDatetime
    trend: HealthTrendOut
    reasons: list[HealthReasonOut] = Field(
        description="What holds the score down: the measures that cost it the most points (at most 3)"
    )
    last_change: list[HealthReasonOut] = Field(
        description="What moved the score at its last change (the reasons health.score_changed carried)"
    )
    measures: list[HealthMeasureOut] = Field(description="In the scorecard's order")
    history: list[HealthPointOut] = Field(description="The score's changes, newest first (at most 30)")
