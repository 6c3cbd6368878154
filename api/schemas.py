"""Request and response bodies (separate from the storage models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@/-]+$")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200, description="Unique per event: a repeat is answered the same.")
    type: str = Field(min_length=3, max_length=200, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", description="e.g. account.signed_up")
    account_id: str = ID
    occurred_at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    account: dict[str, Any] | None = Field(default=None, description="CRM fields to upsert on the account.")
    contacts: list[dict[str, Any]] | None = Field(default=None, description="The account's contacts (first = primary).")


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
    created_at: datetime | None
    due_at: datetime | None


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=5000)
    edits: dict[str, str] | None = Field(default=None, description="subject and/or body of the draft email")


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
    created_at: datetime | None
    due_at: datetime | None


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: str = Field(min_length=1, max_length=100)


class RunStartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    playbook: str = Field(min_length=1, max_length=200)
    account_id: str = ID
    event: dict[str, Any] | None = None


class RunOut(BaseModel):
    id: str
    playbook: str
    version: str
    account: str
    status: str
    started_at: datetime | None
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
