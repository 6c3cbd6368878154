"""Builds the immutable model from playbook data that passed validation.

Only called on data with no problems, so it trusts the shape; defaults are applied here, once.
"""

from __future__ import annotations

from typing import Any

from . import model as m
from .groups import parse_percent
from .policy import Policy
from .step_tree import kind_of, path_text


def _tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(value)
    return (value,)


def _approval(spec: dict[str, Any]) -> m.ApprovalSettings:
    return m.ApprovalSettings(
        approvers=_tuple(spec["approvers"]),
        message=spec.get("message"),
        timeout=spec.get("timeout"),
        on_timeout=spec.get("on_timeout", "reject"),
    )


def _steps(steps: list[dict[str, Any]], path: tuple[Any, ...]) -> tuple[m.Step, ...]:
    return tuple(_step(step, path + (i,)) for i, step in enumerate(steps))


def _step(step: dict[str, Any], path: tuple[Any, ...]) -> m.Step:
    kind = kind_of(step)
    if kind is None:  # validation refuses such a step before anything is built
        raise ValueError(f"the step at {path_text(path)} has no single kind")
    spec = step[kind]
    common: dict[str, Any] = {
        "path": path_text(path),
        "id": step.get("id"),
        "name": step.get("name"),
        "when": step.get("when"),
        "timeout": step.get("timeout"),
        "on_error": step.get("on_error", "fail"),
    }
    if isinstance(step.get("retry"), dict):
        common["retry"] = m.Retry(**step["retry"])
    kp = path + (kind,)
    if kind == "email":
        return m.EmailStep(
            **common,
            to=_tuple(spec["to"]),
            subject=spec.get("subject"),
            body=spec.get("body"),
            cc=_tuple(spec.get("cc")),
            bcc=_tuple(spec.get("bcc")),
            sender=spec.get("from"),
            reply_to=spec.get("reply_to"),
            template_id=spec.get("template_id"),
            data=dict(spec.get("data") or {}),
            approval=_approval(spec["approval"]) if "approval" in spec else None,
            category=spec.get("category"),
        )
    if kind == "call_task":
        return m.CallTaskStep(
            **common,
            title=spec["title"],
            assignee=spec.get("assignee", "owner"),
            notes=spec.get("notes"),
            due=spec.get("due"),
            outcomes=tuple(spec.get("outcomes") or ("done",)),
            wait=bool(spec.get("wait", False)),
            wait_timeout=spec.get("timeout"),
        )
    if kind == "crm":
        ((action, value),) = spec.items()
        return m.CrmStep(**common, action=action, value=value or None)
    if kind == "assign":
        return m.AssignStep(**common, by=spec["by"], team=spec.get("team"), fallback=spec.get("fallback"))
    if kind == "wait":
        if isinstance(spec, str):
            return m.WaitStep(**common, duration=spec)
        return m.WaitStep(
            **common, until=spec.get("until"), offset=spec.get("offset"), business_days=spec.get("business_days")
        )
    if kind == "wait_for":
        return m.WaitForStep(**common, event=spec["event"], match=spec.get("match"), wait_timeout=spec.get("timeout"))
    if kind == "approval":
        return m.ApprovalStep(**common, approval=_approval(spec))
    if kind == "switch":
        cases = []
        otherwise = None
        for i, case in enumerate(spec):
            if "else" in case:
                otherwise = _steps(case["else"], kp + (i, "else"))
            else:
                cases.append(m.Case(when=case["when"], steps=_steps(case["steps"], kp + (i, "steps"))))
        return m.SwitchStep(**common, cases=tuple(cases), otherwise=otherwise)
    if kind == "parallel":
        return m.ParallelStep(
            **common,
            branches=tuple(
                m.Branch(name=b.get("name"), steps=_steps(b["steps"], kp + (i, "steps"))) for i, b in enumerate(spec)
            ),
        )
    if kind == "split":
        return m.SplitStep(
            **common,
            key=spec.get("key"),
            paths=tuple(
                m.SplitPath(name=p["name"], weight=p["weight"], steps=_steps(p["steps"], kp + ("paths", i, "steps")))
                for i, p in enumerate(spec["paths"])
            ),
        )
    if kind == "for_each":
        return m.ForEachStep(
            **common,
            items=spec["items"],
            item_name=spec.get("as", "item"),
            concurrency=spec.get("concurrency", 10),
            steps=_steps(spec["steps"], kp + ("steps",)),
        )
    if kind == "set":
        return m.SetStep(**common, values=dict(spec))
    if kind == "run_playbook":
        return m.RunPlaybookStep(
            **common, playbook_id=spec["id"], input=dict(spec.get("input") or {}), wait=bool(spec.get("wait", False))
        )
    if kind == "stop":
        spec = spec or {}
        return m.StopStep(**common, outcome=spec.get("outcome", "completed"), reason=spec.get("reason"))
    raise ValueError(f"unknown step kind {kind!r}")  # pragma: no cover - validation rejects it first


def _trigger(spec: dict[str, Any] | None) -> m.Trigger:
    if not spec:
        return m.Trigger()
    if "event" in spec:
        return m.Trigger(type="event", event=spec["event"], when=spec.get("when"))
    if "schedule" in spec:
        sched = spec["schedule"]
        return m.Trigger(
            type="schedule", cron=sched["cron"], accounts=sched.get("accounts"), timezone=sched.get("timezone", "UTC")
        )
    return m.Trigger(type="manual")


def build_playbook(data: dict[str, Any], text: str, policy: Policy | None = None) -> m.Playbook:
    settings = data.get("settings") or {}
    enrollment = data.get("enrollment") or {}
    return m.Playbook(
        id=data["id"],
        version=m.content_version(text),
        title=data.get("title") or data["id"],
        description=data.get("description") or "",
        trigger=_trigger(data.get("trigger")),
        enrollment=m.Enrollment(
            key=enrollment.get("key", "{{ account.id }}"), reenroll=enrollment.get("reenroll", "never")
        ),
        exit_when=tuple(
            m.ExitRule(event=r["event"], match=r.get("match"), goal=bool(r.get("goal", False)))
            for r in data.get("exit_when") or []
        ),
        settings=m.Settings(
            timezone=settings.get("timezone", "UTC"),
            quiet_hours=settings.get("quiet_hours"),
            control=parse_percent(settings.get("control", 0)),
        ),
        vars=dict(data.get("vars") or {}),
        steps=_steps(data["steps"], ("steps",)),
        policy=policy,
    )
