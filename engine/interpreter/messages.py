"""What goes in and out of a PlaybookRun workflow: its input, result, signals, updates and query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.language.model import Playbook

WORKFLOW_NAME = "PlaybookRun"
FOR_EACH_WORKFLOW_NAME = "PlaybookForEachChunk"
EVENT_SIGNAL = "event"
SLICE_STARTED_SIGNAL = "slice_started"  # a for_each slice to its parent: every item of mine has started
DECIDE_UPDATE = "decide"
OUTCOME_UPDATE = "record_outcome"
STATE_QUERY = "state"


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    occurred_at: str | None = None
    account_id: str | None = None


def event_context(e: Event) -> dict[str, Any]:
    """An event as templates and expressions see it (`event.type`, `event.data`, ...)."""
    return {"type": e.type, "data": e.data, "id": e.id, "occurred_at": e.occurred_at, "account_id": e.account_id}


@dataclass
class Reported:
    """What a run has written of itself to the funnel's projection (engine/storage/progress.py), so that it reports
    only what changed; carried through continue-as-new."""

    steps: dict[str, str] = field(default_factory=dict)  # step id -> status
    current: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    control: bool = False


@dataclass
class Carried:
    """What a run hands to its next run in the chain when its history gets long (continue-as-new): where it
    is (the top-level step to run, started again if it was waiting), and what later steps can still use."""

    next_step: int
    since: int  # the event sequence number from which that step's wait_for counts
    account: dict[str, Any]
    contacts: list[dict[str, Any]]
    event: dict[str, Any] | None
    timezone: str
    vars: dict[str, Any]
    steps: dict[str, dict[str, Any]]  # results as `steps.<id>` sees them
    statuses: dict[str, dict[str, Any]]
    timeline: list[TimelineEntry]
    timeline_dropped: int
    deadlines: dict[str, str]  # pinned moments of the step being started again
    seq: int
    events: list[tuple[int, Event]]  # events a wait_for can still count, with their sequence numbers
    continued: int = 1  # how many runs the chain has had before this one
    # when the step is started again (it was waiting): the sequence number at which it first started
    step_started: int | None = None
    started_at: str | None = None  # when the chain's first run started (`run.started_at`)
    control: bool = False  # held out of every effect (settings.control)
    enrollment_key: str | None = None  # as rendered when the chain's first run started (split, control)
    paths: dict[str, str] = field(default_factory=dict)  # split step id -> the path the chain took
    # The funnel's projection (PROGRESS_PATCH): the chain's row, its reports so far (the next is numbered higher:
    # one cut short by continue-as-new may still land) and what they wrote. None: the chain began before runs
    # reported, or it has written nothing the next run can rely on (its first report then writes everything).
    run_key: str | None = None
    report_seq: int = 0
    reported: Reported | None = None


@dataclass
class RunInput:
    playbook: Playbook
    account_id: str
    event: Event | None = None
    input: dict[str, Any] = field(default_factory=dict)  # extra vars (run_playbook input)
    # Seconds added to the server's clock: 0 in production. `playbook test` sets it so a scenario can start
    # at any date (the time-skipping server only moves forward from today); timers are relative, so it cancels out.
    clock_offset: float = 0.0
    carried: Carried | None = None  # set when a run continues as new


@dataclass
class RunResult:
    outcome: str  # completed | exited | goal | failed
    reason: str | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeline: list[TimelineEntry] = field(default_factory=list)
    control: bool = False  # the run was in the playbook's control group: it performed no effect


@dataclass
class Decision:
    decision: str  # approve | reject
    by: str
    approval_id: str | None = None  # or step_id
    step_id: str | None = None
    comment: str | None = None
    edits: dict[str, Any] | None = None  # subject, body (emails with approval)
    admin: bool = False  # ops may decide anything


@dataclass
class DecisionResult:
    approval_id: str
    decision: str


@dataclass
class Outcome:
    outcome: str
    by: str
    task_id: str | None = None  # or step_id
    step_id: str | None = None
    admin: bool = False


@dataclass
class TimelineEntry:
    at: str
    path: str
    step_id: str | None
    kind: str
    status: str  # started | done | skipped | failed | waiting | not_run | info
    detail: str = ""


@dataclass
class Pending:
    kind: str  # approval | call_task
    id: str  # approval_id / task_id
    step_id: str | None
    deciders: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)


@dataclass
class RunState:
    playbook_id: str
    version: str
    account_id: str
    status: str  # running | completed | exited | goal | failed
    current: list[str] = field(default_factory=list)  # paths of steps running now
    timeline: list[TimelineEntry] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    control: bool = False  # in the playbook's control group (settings.control)


@dataclass
class ForEachChunkInput:
    """A slice of a large for_each, run as a child workflow so the parent's history stays bounded."""

    playbook: Playbook
    account_id: str
    step_path: str
    start_index: int
    items: list[Any]
    context: dict[str, Any]  # account, contacts, event, vars, steps, locals, run: what the steps refer to
    timezone: str
    parent_workflow_id: str
    key_prefix: str
    clock_offset: float = 0.0
    concurrency: int | None = None  # this slice's share of the step's concurrency (None: the step's own)
    report_started: bool = False  # signal SLICE_STARTED_SIGNAL to the parent once every item has started


@dataclass
class ForEachChunkResult:
    count: int
    failed: int
    stopped: str | None = None  # a stop step ran in an item: its outcome
    reason: str | None = None
