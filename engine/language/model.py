"""The validated playbook as typed, immutable, plain data.

Every class is a frozen dataclass of str/int/float/bool/None, tuples and dicts of those, and other
classes from here, so a Playbook serialises to JSON (``to_data``) and back (``from_data``) without
loss: it is the input of the interpreter workflow, and a run is pinned to the exact one it got.
Free-form maps (vars, crm updates, email data) stay dicts; treat them as read-only.

Each step carries ``path``, its position in the playbook ("steps.3.switch.0.steps.1"): with the run id
it makes the idempotency key of the step's effects, stable across retries and replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .policy import Policy

Expression = str | bool  # a bare Jinja expression, or a literal true/false


@dataclass(frozen=True, kw_only=True)
class Retry:
    max_attempts: int = 5
    initial_interval: str = "10s"
    backoff: float = 2.0
    maximum_interval: str | None = None


@dataclass(frozen=True, kw_only=True)
class ApprovalSettings:
    approvers: tuple[str, ...]
    message: str | None = None
    timeout: str | None = None
    on_timeout: str = "reject"


@dataclass(frozen=True, kw_only=True)
class StepBase:
    path: str
    id: str | None = None
    name: str | None = None
    when: Expression | None = None
    retry: Retry | None = None
    timeout: str | None = None
    on_error: Literal["fail", "continue"] = "fail"


@dataclass(frozen=True, kw_only=True)
class EmailStep(StepBase):
    kind: Literal["email"] = "email"
    to: tuple[str, ...]
    subject: str | None = None
    body: str | None = None
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    sender: str | None = None  # `from` in YAML
    reply_to: str | None = None
    template_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    approval: ApprovalSettings | None = None
    category: str | None = None  # a category of the policy; None: the policy's default_category


@dataclass(frozen=True, kw_only=True)
class CallTaskStep(StepBase):
    kind: Literal["call_task"] = "call_task"
    title: str
    assignee: str = "owner"
    notes: str | None = None
    due: str | None = None
    outcomes: tuple[str, ...] = ("done",)
    wait: bool = False
    wait_timeout: str | None = None  # `call_task.timeout` in YAML


@dataclass(frozen=True, kw_only=True)
class CrmStep(StepBase):
    kind: Literal["crm"] = "crm"
    action: Literal["update", "note", "tag", "lookup"]
    value: Any = None  # update: dict of fields; note/tag: template; lookup: None


@dataclass(frozen=True, kw_only=True)
class AssignStep(StepBase):
    kind: Literal["assign"] = "assign"
    by: Literal["language", "round_robin", "least_loaded", "owner"]
    team: str | None = None
    fallback: str | None = None


@dataclass(frozen=True, kw_only=True)
class WaitStep(StepBase):
    kind: Literal["wait"] = "wait"
    duration: str | None = None  # "14d", "3bd", "P14D" or a template
    until: str | None = None  # datetime template
    offset: str | None = None  # "-2d"
    business_days: int | str | None = None


@dataclass(frozen=True, kw_only=True)
class WaitForStep(StepBase):
    kind: Literal["wait_for"] = "wait_for"
    event: str
    match: Expression | None = None
    wait_timeout: str | None = None


@dataclass(frozen=True, kw_only=True)
class ApprovalStep(StepBase):
    kind: Literal["approval"] = "approval"
    approval: ApprovalSettings


@dataclass(frozen=True, kw_only=True)
class Case:
    when: Expression
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class SwitchStep(StepBase):
    kind: Literal["switch"] = "switch"
    cases: tuple[Case, ...]
    otherwise: tuple[Step, ...] | None = None  # the `else` item


@dataclass(frozen=True, kw_only=True)
class Branch:
    name: str | None = None
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class ParallelStep(StepBase):
    kind: Literal["parallel"] = "parallel"
    branches: tuple[Branch, ...]


@dataclass(frozen=True, kw_only=True)
class SplitPath:
    name: str
    weight: int
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class SplitStep(StepBase):
    kind: Literal["split"] = "split"
    key: str | None = None  # a template; None: the run's enrollment key
    paths: tuple[SplitPath, ...]


@dataclass(frozen=True, kw_only=True)
class ForEachStep(StepBase):
    kind: Literal["for_each"] = "for_each"
    items: Expression
    item_name: str = "item"  # `as` in YAML
    concurrency: int = 10
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class SetStep(StepBase):
    kind: Literal["set"] = "set"
    values: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunPlaybookStep(StepBase):
    kind: Literal["run_playbook"] = "run_playbook"
    playbook_id: str
    input: dict[str, Any] = field(default_factory=dict)
    wait: bool = False


@dataclass(frozen=True, kw_only=True)
class StopStep(StepBase):
    kind: Literal["stop"] = "stop"
    outcome: Literal["completed", "exited"] = "completed"
    reason: str | None = None


Step = (
    EmailStep
    | CallTaskStep
    | CrmStep
    | AssignStep
    | WaitStep
    | WaitForStep
    | ApprovalStep
    | SwitchStep
    | ParallelStep
    | SplitStep
    | ForEachStep
    | SetStep
    | RunPlaybookStep
    | StopStep
)
STEP_CLASSES: dict[str, type] = {cls.__dataclass_fields__["kind"].default: cls for cls in typing.get_args(Step)}


@dataclass(frozen=True, kw_only=True)
class Trigger:
    type: Literal["event", "schedule", "manual"] = "manual"
    event: str | None = None
    when: Expression | None = None
    cron: str | None = None
    accounts: Expression | None = None
    timezone: str = "UTC"


@dataclass(frozen=True, kw_only=True)
class Enrollment:
    key: str = "{{ account.id }}"
    reenroll: Literal["never", "after_exit", "always"] = "never"


@dataclass(frozen=True, kw_only=True)
class ExitRule:
    event: str
    match: Expression | None = None
    goal: bool = False


@dataclass(frozen=True, kw_only=True)
class Settings:
    timezone: str = "UTC"
    quiet_hours: str | None = None
    control: float = 0.0  # the percentage of enrolled accounts held out of every effect (0-50)


@dataclass(frozen=True, kw_only=True)
class Playbook:
    id: str
    version: str  # content hash of the exact text
    title: str
    description: str = ""
    trigger: Trigger = field(default_factory=Trigger)
    enrollment: Enrollment = field(default_factory=Enrollment)
    exit_when: tuple[ExitRule, ...] = ()
    settings: Settings = field(default_factory=Settings)
    vars: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    # The messaging policy of its library, attached when loaded; None only in runs recorded before policies.
    policy: Policy | None = None

    def walk(self) -> typing.Iterator[Step]:
        """Every step, nested ones included, in document order."""
        return iter_steps(self.steps)

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.walk() if s.id == step_id), None)


def iter_steps(steps: tuple[Step, ...]) -> typing.Iterator[Step]:
    for step in steps:
        yield step
        if isinstance(step, SwitchStep):
            for case in step.cases:
                yield from iter_steps(case.steps)
            if step.otherwise:
                yield from iter_steps(step.otherwise)
        elif isinstance(step, ParallelStep):
            for branch in step.branches:
                yield from iter_steps(branch.steps)
        elif isinstance(step, SplitStep):
            for path in step.paths:
                yield from iter_steps(path.steps)
        elif isinstance(step, ForEachStep):
            yield from iter_steps(step.steps)


def content_version(text: str) -> str:
    """The version of a playbook: a hash of its exact text (line endings normalised)."""
    normalised = text.replace("\r\n", "\n").encode("utf-8")
    return hashlib.sha256(normalised).hexdigest()[:16]


# ------------------------------------------------------------------ plain data round trip


def to_data(obj: Any) -> Any:
    """A model object as JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


_UNIONS = (Union, types.UnionType)  # Optional[X] from typing.get_type_hints, X | Y


def _from(tp: Any, value: Any) -> Any:
    if tp is Any or value is None:
        return value
    if tp is Step or (typing.get_origin(tp) in _UNIONS and STEP_CLASSES["email"] in typing.get_args(tp)):
        return _from(STEP_CLASSES[value["kind"]], value)
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _from(arg, value)
            if typing.get_origin(arg) is tuple and isinstance(value, (list, tuple)):
                return _from(arg, value)
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(_from(item_type, v) for v in value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{k: _from(hints[k], v) for k, v in value.items() if k in hints})
    return value


def from_data(data: dict[str, Any]) -> Playbook:
    """The inverse of ``to_data`` for a Playbook."""
    playbook = _from(Playbook, data)
    if not isinstance(playbook, Playbook):
        raise TypeError(f"not the data of a playbook: {type(data).__name__}")
    return playbook
