"""Scenario files: the schema, then that they fit the playbook they test.

A scenario names its playbook by id (looked up in the library) or by a path relative to itself.
Script and expectations must name steps of that playbook, of the right kind. A scenario may carry its
own messaging policy (the policy.yaml format): it replaces the library's for that scenario, and the
result's playbook carries it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path as FsPath
from typing import Any

from .documents import Loaded, load_document, read_text
from .durations import DurationError, parse_duration
from .model import ApprovalStep, CallTaskStep, EmailStep, Playbook
from .policy import DEFAULT_POLICY, Policy
from .policy_file import build_policy, check_policy_meaning
from .problems import Problem
from .schema_check import policy_validator, schema_problems, suggest
from .yaml_source import Path

# Finds a playbook for a scenario: (reference, scenario file) -> playbook, or an error message.
Resolver = Callable[[str, FsPath], "Playbook | str"]


@dataclass
class ScenarioResult(Loaded):
    playbook: Playbook | None = None  # with the scenario's own policy attached, when it has one
    policy: Policy | None = None  # the scenario's own policy (its `policy:`), if any

    @property
    def ok(self) -> bool:
        return not self.problems and self.playbook is not None

    @property
    def data(self) -> Any:
        return self.doc.data if self.doc else None


def validate_scenario_file(path: FsPath | str, resolve: Resolver) -> ScenarioResult:
    path = FsPath(path)
    text, problem = read_text(path)
    if problem:
        return ScenarioResult(str(path), text, problems=[problem])
    return validate_scenario_text(text, str(path), resolve, path)


def validate_scenario_text(text: str, file: str, resolve: Resolver, location: FsPath | None = None) -> ScenarioResult:
    loaded = load_document(text, file)
    result = ScenarioResult(loaded.file, loaded.text, loaded.doc, loaded.problems)
    doc = loaded.doc
    if doc is None:
        return result
    if doc.data is None:
        result.problems.append(Problem(file, 1, 1, "file is empty; a scenario needs at least 'playbook' and 'account'"))
        return result
    result.problems.extend(schema_problems(doc, file, "scenario"))
    data = doc.data
    if isinstance(data, dict) and "policy" in data:
        meaning = check_policy_meaning(doc, file, data["policy"], ("policy",))
        precise = {(p.line, p.column) for p in meaning}
        result.problems = [p for p in result.problems if (p.line, p.column) not in precise] + meaning
        if not meaning and policy_validator().is_valid(data["policy"]):
            result.policy = build_policy(data["policy"], file)
    if isinstance(data, dict) and isinstance(data.get("playbook"), str):
        found = resolve(data["playbook"], location or FsPath(file))
        if isinstance(found, str):
            pos = doc.pos(("playbook",))
            result.problems.append(Problem(file, pos.value_line, pos.value_col, found, "reference", pos.value_len))
        else:
            if result.policy is not None:
                result.problems.extend(_check_policy_fits(doc, file, found, result.policy))
                found = dataclasses.replace(found, policy=result.policy)
            result.playbook = found
            result.problems.extend(_check_against(doc, file, data, found))
    if isinstance(data, dict):
        result.problems.extend(_check_times(doc, file, data))
    result.problems = sorted(set(result.problems), key=lambda p: (p.line, p.column, p.message))
    return result


def _problem(doc: Any, file: str, path: Path, message: str) -> Problem:
    pos = doc.pos(path)
    return Problem(file, pos.value_line, pos.value_col, message, "reference", pos.value_len)


def _check_policy_fits(doc: Any, file: str, playbook: Playbook, policy: Policy) -> list[Problem]:
    """Every email step of the playbook names a category the scenario's policy declares."""
    problems = []
    declared = [c.name for c in policy.categories]
    for step in playbook.walk():
        if isinstance(step, EmailStep) and step.category is not None and step.category not in declared:
            name = step.id or step.path
            problems.append(
                _problem(
                    doc,
                    file,
                    ("policy", "categories"),
                    f"email step '{name}' of playbook '{playbook.id}' has category '{step.category}', "
                    "which this policy does not declare",
                )
            )
    return problems


def _check_against(doc: Any, file: str, data: dict[str, Any], playbook: Playbook) -> list[Problem]:
    problems: list[Problem] = []
    steps = {s.id: s for s in playbook.walk() if s.id}

    def need(path: Path, step_id: Any, accept: Callable[[Any], bool], what: str) -> Any:
        if not isinstance(step_id, str):
            return None
        step = steps.get(step_id)
        if step is None:
            close = suggest(step_id, steps)
            hint = f"; did you mean '{close}'?" if close else ""
            problems.append(_problem(doc, file, path, f"playbook '{playbook.id}' has no step '{step_id}'{hint}"))
            return None
        if not accept(step):
            problems.append(_problem(doc, file, path, f"step '{step_id}' is a {step.kind} step, not {what}"))
            return None
        return step

    is_email = lambda s: isinstance(s, EmailStep)  # noqa: E731
    is_call = lambda s: isinstance(s, CallTaskStep)  # noqa: E731
    asks = lambda s: isinstance(s, ApprovalStep) or (isinstance(s, EmailStep) and s.approval is not None)  # noqa: E731

    for i, item in enumerate(data.get("script") or []):
        if not isinstance(item, dict):
            continue
        if "call_task" in item:
            step = need(("script", i, "call_task"), item["call_task"], is_call, "a call_task step")
            outcome = item.get("outcome")
            if step is not None and isinstance(outcome, str) and outcome not in step.outcomes:
                problems.append(
                    _problem(
                        doc,
                        file,
                        ("script", i, "outcome"),
                        f"outcome '{outcome}' is not one of step '{step.id}' outcomes: {', '.join(step.outcomes)}",
                    )
                )
        if "approval" in item:
            need(("script", i, "approval"), item["approval"], asks, "an approval (or an email with approval)")
        category = item.get("category")
        if "unsubscribe" in item and isinstance(category, str):
            policy = playbook.policy or DEFAULT_POLICY
            known = policy.category(category)
            where = "the scenario's policy" if "policy" in data else f"the policy of playbook '{playbook.id}'"
            if known is None:
                names = [c.name for c in policy.categories]
                close = suggest(category, names)
                hint = f"; did you mean '{close}'?" if close else f"; declared: {', '.join(names)}"
                message = f"no category '{category}' in {where}{hint}"
                problems.append(_problem(doc, file, ("script", i, "category"), message))
            elif not known.unsubscribe:
                message = f"category '{category}' does not allow opting out (unsubscribe: false in {where})"
                problems.append(_problem(doc, file, ("script", i, "category"), message))
    for i, item in enumerate(data.get("expect") or []):
        if not isinstance(item, dict):
            continue
        if "step" in item:
            need(("expect", i, "step"), item["step"], lambda s: True, "a step")
        if "email" in item:
            need(("expect", i, "email"), item["email"], is_email, "an email step")
        if "no_email" in item:
            need(("expect", i, "no_email"), item["no_email"], is_email, "an email step")
        if "call_task" in item:
            need(("expect", i, "call_task"), item["call_task"], is_call, "a call_task step")
    return problems


def _check_times(doc: Any, file: str, data: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    start = data.get("start")
    if isinstance(start, dict) and "events" in start:
        for other in ("event", "manual"):
            if other in start:
                message = f"start takes events or {other}, not both: the run starts on the first event accepted"
                problems.append(_problem(doc, file, ("start", other), message))
        for i, item in enumerate(start["events"] if isinstance(start["events"], list) else []):
            value = item.get("at") if isinstance(item, dict) else None
            if isinstance(value, str):
                try:
                    parse_duration(value)
                except DurationError as err:
                    if "longer" in str(err) or "negative" in str(err):
                        problems.append(_problem(doc, file, ("start", "events", i, "at"), str(err)))
    if isinstance(start, dict) and isinstance(start.get("at"), str):
        try:
            parsed = datetime.fromisoformat(start["at"].replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                message = "start.at needs a timezone, e.g. 2026-03-02T09:00:00Z"
                problems.append(_problem(doc, file, ("start", "at"), message))
        except ValueError:
            message = f"start.at '{start['at']}' is not an ISO 8601 datetime like 2026-03-02T09:00:00Z"
            problems.append(_problem(doc, file, ("start", "at"), message))
    for section in ("script", "expect"):
        for i, item in enumerate(data.get(section) or []):
            if not isinstance(item, dict):
                continue
            for key in ("at", "after", "within"):
                value = item.get(key)
                if isinstance(value, str) and "{{" not in value:
                    try:
                        parse_duration(value)
                    except DurationError as err:
                        if "longer" in str(err) or "negative" in str(err):
                            problems.append(_problem(doc, file, (section, i, key), str(err)))
    return problems
