"""Hypothesis strategies for VALID playbooks, with what each one's run may and must do.

``generated_cases()`` draws a :class:`Case`: a playbook's YAML text over every step kind and its optional
fields (nested steps, every duration form the language allows, templates, when, retry, timeout, on_error,
quiet hours, timezones, exit_when, goals, vars), the world it runs in (start moment, account timezone) and
a driver script (answers to approvals and call tasks, events for wait_for and exit_when). Alongside, the
generator keeps what a correct run does:

- ``bound``: an upper bound of the run's simulated length. Every step that waits for a person or an event
  either has a timeout or is answered by the script, so every generated run must end.
- ``meta``: per step path, whether the step holds a *content error* (a template giving a bad duration, a
  bad business-day count or a bad date): only such a step may fail, apart from a container or waiting
  step whose own timeout legitimately ran out, and from steps failing because a step inside them did.
- the durations as written, with the time each one means, so the runner can check that a wait waited
  exactly that long, that a task is due when ``due`` says, and that a timeout fired no earlier than it says.

Business days and ISO durations are modelled here independently of the engine (``add_business_days``,
``Dur``), from the language reference: ``3bd`` is Monday to Friday in the run's timezone at the same local
time (a weekend start counts from Monday), a year is 365 days and a month 30, ``d`` and ``w`` are 24 h
and 7 × 24 h.

The generator checks itself: ``Case.validate()`` runs the project's validator on the text (the tests
assert it is valid), so a strategy that drifts from the language fails loudly instead of testing less.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from hypothesis import strategies as st

from engine.language.validator import PlaybookResult, validate_playbook_text

DAY = 86400.0
INF = float("inf")

# ------------------------------------------------------------------ the world a run meets

TEAM = [
    {"id": "csm-1", "name": "Casey", "email": "casey@success.example", "languages": ["en"]},
    {"id": "csm-2", "name": "Jonas", "email": "jonas@success.example", "languages": ["de"]},
    {"id": "lead-1", "name": "Sam", "email": "sam@success.example", "languages": ["en", "de"], "role": "lead"},
]
CONTACTS = [
    {"email": "anna@customer.example", "first_name": "Anna"},
    {"email": "ben@customer.example", "first_name": "Ben"},
]
# Simulated starts: a Monday morning, a Friday afternoon, a Saturday night, the night Europe moves to
# summer time (29 March 2026, 01:00 UTC), and the turn of the year.
STARTS = (
    datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    datetime(2026, 3, 6, 16, 30, tzinfo=UTC),
    datetime(2026, 3, 7, 22, 0, tzinfo=UTC),
    datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
)
TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland")
QUIET_HOURS = ("20:00-08:00", "12:00-13:00", "00:00-23:59", "09:00-09:00", "17:30-09:15")

# Child playbooks a run_playbook step may start (written to the runner's library folder).
CHILD_PLAYBOOKS: dict[str, str] = {
    "child-quick": """\
id: child-quick
vars:
  reason: none
steps:
  - set: { seen: "{{ vars.reason }}" }
  - crm: { note: "child run for {{ account.name }}: {{ vars.reason }}" }
""",
    "child-waits": """\
id: child-waits
vars:
  reason: none
steps:
  - wait: 1bd
  - crm: { tag: child-waited }
""",
    "child-stops": """\
id: child-stops
steps:
  - stop: { outcome: exited, reason: the child stops }
""",
}
CHILD_BOUND = 5 * DAY  # the longest a child above may take (1bd from a Friday night is under 4 days)

# ------------------------------------------------------------------ durations, modelled independently


@dataclass(frozen=True)
class Dur:
    """A duration as written in a playbook, and what it means at run time."""

    text: str
    seconds: float = 0.0  # calendar seconds (when not business days)
    bdays: int = 0  # business days, Monday to Friday in the run's timezone
    bad: bool = False  # a template that renders to something that is not a duration
    is_bd: bool = False

    @property
    def upper(self) -> float:
        """The longest this can take, in seconds (a bad one fails at once)."""
        if self.bad:
            return 0.0
        if self.is_bd:
            return (self.bdays + 2 * (self.bdays // 5 + 1) + 2) * DAY
        return self.seconds

    def lower(self) -> float:
        if self.bad:
            return 0.0
        return self.bdays * DAY if self.is_bd else self.seconds

    def end(self, start: datetime, tz: ZoneInfo) -> datetime:
        assert not self.bad
        if self.is_bd and self.bdays:  # 0bd is no time at all, even from a weekend
            return add_business_days(start, self.bdays, tz)
        return start + timedelta(seconds=self.seconds)


def add_business_days(start: datetime, days: int, tz: ZoneInfo) -> datetime:
    """start + days business days (Monday to Friday) in tz at the same local time; negative goes back.

    A start on a weekend counts from the next Monday (or, going back, the previous Friday) at the same time.
    """
    local = start.astimezone(tz)
    day, clock = local.date(), local.time().replace(tzinfo=None)
    step = 1 if days >= 0 else -1
    while day.weekday() >= 5:
        day += timedelta(days=step)
    remaining = abs(days)
    while remaining:
        day += timedelta(days=step)
        if day.weekday() < 5:
            remaining -= 1
    return datetime.combine(day, clock, tz)


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# vars a template may use as a duration: name -> (value, its meaning)
GOOD_DURATION_VARS: dict[str, Dur] = {
    "t_secs": Dur("30s", seconds=30),
    "t_mins": Dur("45m", seconds=45 * 60),
    "t_hours": Dur("2h", seconds=7200),
    "t_days": Dur("3d", seconds=3 * DAY),
    "t_week": Dur("1w", seconds=7 * DAY),
    "t_bd": Dur("2bd", bdays=2, is_bd=True),
    "t_iso": Dur("P1DT2H", seconds=DAY + 7200),
    "t_iso_w": Dur("P1W", seconds=7 * DAY),
    "t_from_crm": Dur("5d", seconds=5 * DAY),  # "{{ account.follow_up }}": rendered from the CRM at start
}
BAD_DURATION_VARS = {
    "t_banana": "banana",
    "t_neg": "-2d",  # negative: not allowed outside wait.offset
    "t_words": "3 days",
    "t_long": "5000d",  # longer than ten years
    "t_empty": "",
    "t_upper": "3D",
}
# vars for "{{ vars.n }}d" forms and business_days templates
NUMBER_VARS: dict[str, int | str] = {"n": 2, "n_text": "3"}
UNTIL_VARS: dict[str, str] = {  # until values; day_bad is not a date
    "day": "2026-04-15",
    "moment": "2026-04-15T10:30:00",
    "moment_offset": "2026-04-15T10:30:00+02:00",
    "day_past": "2025-01-01",
    "day_bad": "next tuesday",
}
ACCOUNT_FIELDS = {
    "name": "Kraus GmbH",
    "plan": "pro",
    "language": "en",
    "follow_up": "5d",
    "renewal_date": "2026-05-01",
}


def playbook_vars() -> dict[str, Any]:
    values: dict[str, Any] = {name: d.text for name, d in GOOD_DURATION_VARS.items()}
    values["t_from_crm"] = "{{ account.follow_up }}"
    values.update(BAD_DURATION_VARS)
    values.update(NUMBER_VARS)
    values.update(UNTIL_VARS)
    values.update({"flag": True, "greeting": "Hi {{ contact.first_name }}", "numbers": [1, 2]})
    return values


def parse_moment(text: str, tz: ZoneInfo) -> datetime:
    """A date (midnight) or datetime, read in tz when it has no offset (the language reference)."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(0, 0), tz)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


# ------------------------------------------------------------------ what the generator records


@dataclass
class StepMeta:
    path: str
    kind: str
    id: str | None
    content_error: bool = False  # holds a bad value: may fail
    timeout: Dur | None = None  # the step's common timeout
    in_for_each: bool = False
    wait: Callable[[datetime, ZoneInfo], datetime] | None = None  # wait steps: the moment to wait until
    due: Dur | None = None  # call_task.due
    wait_timeout: Dur | None = None  # call_task/wait_for: the timeout in force
    approval_timeout: Dur | None = None
    retry_initial: Dur | None = None
    retry_maximum: Dur | None = None
    retry_attempts: int | None = None
    retry_backoff: float | None = None


@dataclass
class Case:
    text: str
    data: dict[str, Any]
    start: datetime
    account_timezone: str
    tz: ZoneInfo  # the run's timezone
    quiet_hours: str | None
    script: list[dict[str, Any]]
    bound: float  # seconds of simulated time the run may take at most
    meta: dict[str, StepMeta]
    exit_events: bool  # the script posts an event that may end the run
    label: str = ""

    def __repr__(self) -> str:  # hypothesis prints it; the failure message carries describe()
        return f"Case({self.label or 'generated'}, start {self.start.isoformat()}, {len(self.text)} characters of YAML)"

    def validate(self) -> PlaybookResult:
        return validate_playbook_text(self.text, "generated.yaml")

    def describe(self) -> str:
        lines = [f"# start {self.start.isoformat()}, account timezone {self.account_timezone}"]
        if self.script:
            lines.append(f"# script: {self.script}")
        return "\n".join(lines) + "\n" + self.text


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


# ------------------------------------------------------------------ the generator


class Gen:
    """One playbook's drawing state: ids, the metadata of every step, the script."""

    MAX_DEPTH = 2

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw
        self.ids = itertools.count(1)
        self.meta: dict[str, StepMeta] = {}
        self.script: list[dict[str, Any]] = []
        self.set_names = itertools.count(1)
        self.only: tuple[str, ...] = ()  # the step kinds allowed here (inside a large for_each)
        self.dyn: tuple[str, Dur] | None = None  # vars.t_dyn, set by the first step at run time: (value, meaning)

    # ---------------------------------------------------------------- values

    def duration(self, *, template: bool = True, bad: bool = True) -> Dur:
        form = self.draw(
            st.sampled_from(
                ["plain", "bd", "iso", "template", "number_template"] if template else ["plain", "bd", "iso"]
            )
        )
        if form == "plain":
            unit = self.draw(st.sampled_from(list(UNITS)))
            limit = {"s": 3600, "m": 600, "h": 72, "d": 30, "w": 4}[unit]
            amount = self.draw(st.integers(0, limit))
            return Dur(f"{amount}{unit}", seconds=amount * UNITS[unit])
        if form == "bd":
            amount = self.draw(st.integers(0, 10))
            return Dur(f"{amount}bd", bdays=amount, is_bd=True)
        if form == "iso":
            return self.iso_duration()
        if form == "number_template":
            name = self.draw(st.sampled_from(sorted(NUMBER_VARS)))
            unit = self.draw(st.sampled_from(["h", "d", "bd", "w"]))
            amount = int(NUMBER_VARS[name])
            text = f"{{{{ vars.{name} }}}}{unit}"
            if unit == "bd":
                return Dur(text, bdays=amount, is_bd=True)
            return Dur(text, seconds=amount * UNITS[unit])
        names = sorted(GOOD_DURATION_VARS) + (sorted(BAD_DURATION_VARS) if bad else [])
        if self.dyn is not None:
            names.append("t_dyn")
        name = self.draw(st.sampled_from(names))
        text = f"{{{{ vars.{name} }}}}"
        if name == "t_dyn":
            assert self.dyn is not None
            return replace(self.dyn[1], text=text)
        if name in BAD_DURATION_VARS:
            return Dur(text, bad=True)
        good = GOOD_DURATION_VARS[name]
        return Dur(text, seconds=good.seconds, bdays=good.bdays, is_bd=good.is_bd)

    def iso_duration(self) -> Dur:
        parts = self.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "Y": st.integers(0, 1),
                    "M": st.integers(0, 2),
                    "W": st.integers(0, 2),
                    "D": st.integers(0, 10),
                    "TH": st.integers(0, 30),
                    "TM": st.integers(0, 90),
                    "TS": st.integers(0, 90),
                },
            )
        )
        if not parts:
            parts = {"D": self.draw(st.integers(0, 3))}
        text = "P" + "".join(f"{parts[k]}{k}" for k in ("Y", "M", "W", "D") if k in parts)
        if any(k in parts for k in ("TH", "TM", "TS")):
            text += "T" + "".join(f"{parts[k]}{k[1]}" for k in ("TH", "TM", "TS") if k in parts)
        seconds = (
            parts.get("Y", 0) * 365 * DAY
            + parts.get("M", 0) * 30 * DAY
            + parts.get("W", 0) * 7 * DAY
            + parts.get("D", 0) * DAY
            + parts.get("TH", 0) * 3600
            + parts.get("TM", 0) * 60
            + parts.get("TS", 0)
        )
        return Dur(text, seconds=seconds)

    def answer_delay(self) -> tuple[str, float]:
        text = self.draw(st.sampled_from(["0s", "10m", "3h", "1d", "4d"]))
        amount, unit = int(text[:-1]), text[-1]
        return text, amount * UNITS[unit]

    # ---------------------------------------------------------------- steps

    def steps(
        self,
        path: str,
        depth: int,
        in_for_each: bool,
        item: str | None,
        min_size: int = 1,
        max_size: int = 3,
        first: int = 0,
    ) -> tuple[list[dict[str, Any]], float]:
        count = self.draw(st.integers(min_size, max_size))
        steps: list[dict[str, Any]] = []
        total = 0.0
        previous_id: str | None = None
        for i in range(first, first + count):
            step, bound = self.step(f"{path}.{i}", depth, in_for_each, item, previous_id)
            steps.append(step)
            total += bound
            previous_id = step.get("id")
        return steps, total

    def step(
        self, path: str, depth: int, in_for_each: bool, item: str | None, previous_id: str | None
    ) -> tuple[dict[str, Any], float]:
        kinds = ["set", "crm", "email", "wait", "call_task", "assign", "stop", "approval", "wait_for", "run_playbook"]
        if depth < self.MAX_DEPTH:
            kinds += ["switch", "parallel", "for_each"]
        if self.only:
            kinds = [k for k in kinds if k in self.only]
        kind = self.draw(st.sampled_from(kinds))
        step: dict[str, Any] = {}
        waits_for_people = kind in ("approval", "call_task", "email")
        if self.draw(st.booleans()) or waits_for_people:
            step["id"] = f"s{next(self.ids)}"
        if self.draw(st.integers(0, 4)) == 0:
            step["name"] = f"Step {path}"
        when = self.draw(
            st.sampled_from(
                [None, None, None, "true", "false", 'account.plan == "pro"', "vars.flag", "previous", "item"]
            )
        )
        if when == "previous":
            when = f'steps.{previous_id}.status != "failed"' if previous_id else None
        if when == "item":
            when = f"{item} is not none" if item else None
        if when is not None:
            step["when"] = when
        meta = StepMeta(path=path, kind=kind, id=step.get("id"), in_for_each=in_for_each)
        self.meta[path] = meta
        if self.draw(st.integers(0, 3)) == 0:
            retry: dict[str, Any] = {}
            if self.draw(st.booleans()):
                retry["max_attempts"] = meta.retry_attempts = self.draw(st.integers(1, 5))
            if self.draw(st.booleans()):
                d = meta.retry_initial = self.duration()
                meta.content_error |= d.bad
                retry["initial_interval"] = d.text
            if self.draw(st.booleans()):
                retry["backoff"] = meta.retry_backoff = self.draw(st.sampled_from([1, 1.5, 2.0, 3]))
            if self.draw(st.booleans()):
                d = meta.retry_maximum = self.duration()
                meta.content_error |= d.bad
                retry["maximum_interval"] = d.text
            step["retry"] = retry
        if self.draw(st.integers(0, 2)) == 0:
            d = self.duration()
            meta.content_error |= d.bad
            meta.timeout = d
            step["timeout"] = d.text
        if self.draw(st.integers(0, 3)) == 0:
            step["on_error"] = self.draw(st.sampled_from(["fail", "continue"]))
        body, bound = getattr(self, f"kind_{kind}")(step, meta, path, depth, in_for_each, item)
        step[kind] = body
        return step, bound

    def text(self, item: str | None) -> str:
        options = ["Hello", "Hello {{ account.name }}", "{{ vars.greeting }}", "Plan {{ account.plan | upper }}"]
        if item:
            options.append(f"For {{{{ {item} }}}}")
        return self.draw(st.sampled_from(options))

    def kind_set(self, step, meta, path, depth, in_for_each, item):
        name = f"v{next(self.set_names)}"
        values: dict[str, Any] = {name: self.text(item)}
        if self.draw(st.booleans()):
            values[f"{name}_n"] = self.draw(st.integers(0, 9))
        return values, 0.0

    def kind_crm(self, step, meta, path, depth, in_for_each, item):
        action = self.draw(st.sampled_from(["update", "note", "tag", "lookup"]))
        if action == "update":
            return {"update": {"stage": self.text(item), "touches": self.draw(st.integers(0, 3))}}, 0.0
        if action == "lookup":
            return {"lookup": {}}, 0.0
        return {action: self.draw(st.sampled_from(["followed-up", "note for {{ account.name }}"]))}, 0.0

    def kind_assign(self, step, meta, path, depth, in_for_each, item):
        spec: dict[str, Any] = {"by": self.draw(st.sampled_from(["language", "round_robin", "least_loaded", "owner"]))}
        if self.draw(st.booleans()):
            spec["team"] = "lead"
        if self.draw(st.booleans()):
            spec["fallback"] = "csm-1"
        return spec, 0.0

    def approval_settings(self, meta: StepMeta, answer_step: str | None) -> tuple[dict[str, Any], float]:
        spec: dict[str, Any] = {
            "approvers": self.draw(st.sampled_from(["owner", "role:lead", "user:csm-1", ["owner", "role:lead"]]))
        }
        if self.draw(st.booleans()):
            spec["message"] = "Go ahead with {{ account.name }}?"
        timeout: Dur | None = self.duration() if self.draw(st.booleans()) else None
        on_timeout = self.draw(
            st.sampled_from([None, "reject", "approve", "escalate:role:lead", "escalate:user:csm-2"])
        )
        answered = answer_step is not None and self.draw(st.booleans())
        if timeout is None and not answered:
            timeout = self.duration()
        bound = INF
        if timeout is not None:
            spec["timeout"] = timeout.text
            meta.content_error |= timeout.bad
            meta.approval_timeout = timeout
            rounds = 2 if on_timeout and on_timeout.startswith("escalate:") else 1
            bound = rounds * timeout.upper
        if on_timeout is not None:
            spec["on_timeout"] = on_timeout
        if answered:
            delay_text, delay = self.answer_delay()
            self.script.append(
                {
                    "approval": answer_step,
                    "decide": self.draw(st.sampled_from(["approve", "reject"])),
                    "after": delay_text,
                }
            )
            if timeout is None:
                bound = delay
        return spec, bound

    def kind_email(self, step, meta, path, depth, in_for_each, item):
        spec: dict[str, Any] = {
            "to": self.draw(st.sampled_from(["{{ contact.email }}", ["{{ contact.email }}", "ops@ourco.example"]]))
        }
        if self.draw(st.booleans()):
            spec["template_id"] = "welcome"
            if self.draw(st.booleans()):
                spec["data"] = {"first_name": "{{ contact.first_name }}", "n": 1}
        else:
            spec["subject"] = self.text(item)
            spec["body"] = self.text(item)
        if self.draw(st.integers(0, 3)) == 0:
            spec["cc"] = "{{ account.owner.email }}"
        if self.draw(st.integers(0, 3)) == 0:
            spec["bcc"] = ["audit@ourco.example"]
        if self.draw(st.integers(0, 3)) == 0:
            spec["from"] = "success@ourco.example"
        if self.draw(st.integers(0, 3)) == 0:
            spec["reply_to"] = "{{ account.owner.email }}"
        bound = DAY  # quiet hours hold an email back for less than a day
        if self.draw(st.integers(0, 2)) == 0:
            approval, waited = self.approval_settings(meta, step.get("id"))
            spec["approval"] = approval
            bound += waited
        return spec, bound

    def kind_call_task(self, step, meta, path, depth, in_for_each, item):
        spec: dict[str, Any] = {"title": self.text(item)}
        assignee = self.draw(
            st.sampled_from([None, "owner", "role:lead", "user:csm-1", "{{ account.owner.id }}", "role:nobody"])
        )
        if assignee:
            spec["assignee"] = assignee
        if self.draw(st.booleans()):
            spec["notes"] = self.text(item)
        if self.draw(st.booleans()):
            due = self.duration()
            meta.content_error |= due.bad
            meta.due = due
            spec["due"] = due.text
        outcomes = self.draw(st.sampled_from([None, ["done"], ["done", "no_answer", "declined"]]))
        if outcomes:
            spec["outcomes"] = outcomes
        if not self.draw(st.booleans()):
            if self.draw(st.booleans()):
                spec["wait"] = False
            return spec, 0.0
        spec["wait"] = True
        timeout: Dur | None = self.duration() if self.draw(st.booleans()) else None
        if timeout is not None:
            spec["timeout"] = timeout.text
            meta.content_error |= timeout.bad
        in_force = timeout or meta.timeout
        answered = self.draw(st.booleans()) and assignee != "role:nobody"
        if in_force is None and not answered:
            in_force = self.duration()
            spec["timeout"] = in_force.text
            meta.content_error |= in_force.bad
        meta.wait_timeout = in_force
        bound = in_force.upper if in_force is not None else INF
        if answered:
            delay_text, delay = self.answer_delay()
            outcome = self.draw(st.sampled_from(outcomes or ["done"]))
            self.script.append({"call_task": step["id"], "outcome": outcome, "after": delay_text})
            bound = min(bound, delay)
        return spec, bound

    def kind_wait(self, step, meta, path, depth, in_for_each, item):
        form = self.draw(st.sampled_from(["duration", "business_days", "until"]))
        if form == "duration":
            d = self.duration()
            meta.content_error |= d.bad
            meta.wait = None if d.bad else (lambda start, tz, d=d: d.end(start, tz))
            return d.text, d.upper
        if form == "business_days":
            value = self.draw(
                st.sampled_from(
                    ["int", "{{ vars.n }}", "{{ vars.n_text }}", "{{ vars.t_banana }}", "{{ vars.t_hours }}"]
                )
            )
            if value == "int":
                days: int | None = self.draw(st.integers(0, 10))
                value = days
            else:
                name = value.split("vars.")[1].split(" ")[0]
                days = int(NUMBER_VARS[name]) if name in NUMBER_VARS else None
            meta.content_error |= days is None
            if days:  # business_days: 0 from a weekend may end at once or on Monday: both read the reference
                meta.wait = lambda start, tz, days=days: add_business_days(start, days, tz)
            return {"business_days": value}, Dur("", bdays=days or 0, is_bd=True).upper
        name = self.draw(st.sampled_from(sorted(UNTIL_VARS)))
        spec: dict[str, Any] = {"until": f"{{{{ vars.{name} }}}}"}
        offset: str | None = None
        if self.draw(st.booleans()):
            amount = self.draw(st.integers(0, 95))
            unit = self.draw(st.sampled_from(["s", "m", "h", "d", "w", "bd"]))
            sign = self.draw(st.sampled_from(["", "-"]))
            offset = f"{sign}{amount}{unit}"
            spec["offset"] = offset
        value = UNTIL_VARS[name]
        if name == "day_bad":
            meta.content_error = True
            return spec, 0.0

        def moment(start: datetime, tz: ZoneInfo, value: str = value, offset: str | None = offset) -> datetime:
            at = parse_moment(value, tz)
            if offset:
                sign = -1 if offset.startswith("-") else 1
                body = offset.lstrip("-")
                if body.endswith("bd"):
                    return add_business_days(at, sign * int(body[:-2]), tz)
                return at + timedelta(seconds=sign * int(body[:-1]) * UNITS[body[-1]])
            return at

        meta.wait = moment
        # From any start to 15 April 2026 plus at most 95 weeks: a generous bound.
        return spec, (60 + 95 * 7 + 40) * DAY

    def kind_wait_for(self, step, meta, path, depth, in_for_each, item):
        event = self.draw(st.sampled_from(["survey.answered", "account.admin_changed"]))
        spec: dict[str, Any] = {"event": event}
        if self.draw(st.booleans()):
            spec["match"] = self.draw(
                st.sampled_from(["event.data.score <= 6", "event.data.missing == 1", 'account.plan == "pro"'])
            )
        timeout = self.duration() if self.draw(st.booleans()) or meta.timeout is None else None
        if timeout is not None:
            spec["timeout"] = timeout.text
            meta.content_error |= timeout.bad
        in_force = timeout or meta.timeout
        assert in_force is not None
        meta.wait_timeout = in_force
        if self.draw(st.booleans()):
            at_text, _ = self.answer_delay()
            self.script.append(
                {"at": at_text, "event": {"type": event, "data": {"score": self.draw(st.integers(0, 10))}}}
            )
        return spec, in_force.upper

    def kind_approval(self, step, meta, path, depth, in_for_each, item):
        return self.approval_settings(meta, step["id"])

    def kind_switch(self, step, meta, path, depth, in_for_each, item):
        cases = []
        bound = 0.0
        count = self.draw(st.integers(1, 2))
        for i in range(count):
            when = self.draw(st.sampled_from(["true", "false", 'account.plan == "pro"', "vars.flag"]))
            steps, b = self.steps(f"{path}.switch.{i}.steps", depth + 1, in_for_each, item, max_size=2)
            cases.append({"when": when, "steps": steps})
            bound = max(bound, b)
        if self.draw(st.booleans()):
            steps, b = self.steps(f"{path}.switch.{count}.else", depth + 1, in_for_each, item, max_size=2)
            cases.append({"else": steps})
            bound = max(bound, b)
        return cases, bound

    def kind_parallel(self, step, meta, path, depth, in_for_each, item):
        branches = []
        bound = 0.0
        for i in range(self.draw(st.integers(1, 3))):
            steps, b = self.steps(f"{path}.parallel.{i}.steps", depth + 1, in_for_each, item, max_size=2)
            branch: dict[str, Any] = {"steps": steps}
            if self.draw(st.booleans()):
                branch["name"] = f"branch {i}"
            branches.append(branch)
            bound = max(bound, b)
        return branches, bound

    def kind_for_each(self, step, meta, path, depth, in_for_each, item):
        # More than 100 items run in child workflows (chunks of 100); nobody answers there, so only steps that
        # need no answer run inside.
        items, count = self.draw(
            st.sampled_from(
                [
                    ("contacts", 2),
                    ("range(2) | list", 2),
                    ("[]", 0),
                    ("vars.numbers", 2),
                    ("[7]", 1),
                    ("range(101) | list", 101),
                ]
            )
        )
        name = self.draw(st.sampled_from([None, "person", "entry"]))
        spec: dict[str, Any] = {"items": items}
        if name:
            spec["as"] = name
        if self.draw(st.booleans()):
            spec["concurrency"] = self.draw(st.integers(1, 3))
        inner_item = name or "item"
        outer_only = self.only
        if count > 100:
            self.only = ("set", "wait", "stop")
        steps, b = self.steps(f"{path}.for_each.steps", depth + 1, True, inner_item, max_size=2)
        self.only = outer_only
        spec["steps"] = steps
        return spec, count * b

    def kind_run_playbook(self, step, meta, path, depth, in_for_each, item):
        spec: dict[str, Any] = {"id": self.draw(st.sampled_from(sorted(CHILD_PLAYBOOKS)))}
        if self.draw(st.booleans()):
            spec["input"] = {"reason": "{{ account.name }}"}
        wait = self.draw(st.sampled_from([None, True, False]))
        if wait is not None:
            spec["wait"] = wait
        return spec, CHILD_BOUND if wait else 0.0

    def kind_stop(self, step, meta, path, depth, in_for_each, item):
        spec: dict[str, Any] = {}
        if self.draw(st.booleans()):
            spec["outcome"] = self.draw(st.sampled_from(["completed", "exited"]))
        if self.draw(st.booleans()):
            spec["reason"] = "Done early for {{ account.name }}"
        return spec, 0.0


@st.composite
def generated_cases(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    gen = Gen(draw)
    data: dict[str, Any] = {"id": "prop-run"}
    if draw(st.booleans()):
        data["title"] = "Generated"
    trigger = draw(
        st.sampled_from(
            [
                None,
                {"manual": True},
                {"event": "account.signed_up", "when": 'account.plan != "free"'},
                {"schedule": {"cron": "0 9 * * 1", "timezone": "Europe/Berlin"}},
            ]
        )
    )
    if trigger:
        data["trigger"] = trigger
    if draw(st.booleans()):
        data["enrollment"] = {"reenroll": draw(st.sampled_from(["never", "after_exit", "always"]))}
    exit_rules = draw(st.sampled_from([None, "exit", "goal", "both"]))
    if exit_rules:
        rules: list[dict[str, Any]] = []
        if exit_rules in ("exit", "both"):
            rules.append({"event": "account.cancelled"})
        if exit_rules in ("goal", "both"):
            rules.append({"event": "subscription.activated", "match": "event.data.score >= 5", "goal": True})
        data["exit_when"] = rules
    account_tz = draw(st.sampled_from(TIMEZONES + ("Mars/Olympus",)))
    tz_setting = draw(
        st.sampled_from([None, "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "{{ account.timezone }}"])
    )
    quiet = draw(st.sampled_from((None,) + QUIET_HOURS))
    settings: dict[str, Any] = {}
    if tz_setting:
        settings["timezone"] = tz_setting
    if quiet:
        settings["quiet_hours"] = quiet
    if settings:
        data["settings"] = settings
    effective = account_tz if tz_setting == "{{ account.timezone }}" else (tz_setting or "UTC")
    tz = ZoneInfo(effective if effective in TIMEZONES else "UTC")
    # A duration var set at run time by the first step (to a good or a bad value), used by the steps after it.
    gen.dyn = draw(
        st.sampled_from(
            [
                None,
                ("4h", Dur("", seconds=4 * 3600)),
                ("1bd", Dur("", bdays=1, is_bd=True)),
                ("P1D", Dur("", seconds=DAY)),
                ("banana", Dur("", bad=True)),
                ("{{ account.follow_up }}", Dur("", seconds=5 * DAY)),
            ]
        )
    )
    first: list[dict[str, Any]] = []
    if gen.dyn is not None:
        first = [{"set": {"t_dyn": gen.dyn[0]}}]
        gen.meta["steps.0"] = StepMeta(path="steps.0", kind="set", id=None)
    steps, bound = gen.steps("steps", 0, False, None, min_size=1, max_size=4, first=len(first))
    steps = first + steps
    used = set(re.findall(r"vars\.([A-Za-z_][A-Za-z0-9_]*)", dump({"steps": steps})))
    declared = {name: value for name, value in playbook_vars().items() if name in used}  # only the vars used
    if declared:
        data["vars"] = declared
    data["steps"] = steps
    exit_events = False
    if exit_rules and draw(st.booleans()):
        at_text, _ = gen.answer_delay()
        kind = draw(st.sampled_from(["account.cancelled", "subscription.activated"]))
        gen.script.append({"at": at_text, "event": {"type": kind, "data": {"score": draw(st.integers(0, 9))}}})
        exit_events = True
    start = draw(st.sampled_from(STARTS))
    assert bound < INF, "every waiting step has a timeout or an answer"
    return Case(
        text=dump(data),
        data=data,
        start=start,
        account_timezone=account_tz,
        tz=tz,
        quiet_hours=quiet,
        script=gen.script,
        bound=bound,
        meta=gen.meta,
        exit_events=exit_events,
    )


def fixed_case(
    text: str,
    *,
    start: datetime = STARTS[0],
    account_timezone: str = "UTC",
    script: list[dict[str, Any]] | None = None,
    bound: float = 60 * DAY,
    meta: dict[str, StepMeta] | None = None,
    label: str = "",
) -> Case:
    """A hand-written case (a regression example): its text, the step metadata the checks need."""
    data = yaml.safe_load(text)
    settings = data.get("settings") or {}
    name = settings.get("timezone", "UTC")
    if name == "{{ account.timezone }}":
        name = account_timezone
    tz = ZoneInfo(name if name in TIMEZONES else "UTC")
    return Case(
        text=text,
        data=data,
        start=start,
        account_timezone=account_timezone,
        tz=tz,
        quiet_hours=settings.get("quiet_hours"),
        script=script or [],
        bound=bound,
        meta=meta or {},
        exit_events=False,
        label=label,
    )
