"""Checks of meaning that a schema cannot express.

Step shape (exactly one kind), unique step ids, ``steps.X`` referring to a step that can have run
before, names in scope, ``vars.X`` declared, templates and expressions that parse and touch no
internals, filters that exist and are allowed (deterministic), the template bounds that literals decide,
durations, cron, timezones, assignee forms, switch and wait shapes.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from . import expressions as ex
from .durations import DurationError, parse_duration
from .problems import Problem
from .schema_check import suggest
from .schema_source import CATEGORY_PATTERN, STEP_KINDS
from .step_tree import Path, child_lists, iter_step_paths, kind_of, kinds_of, path_text
from .yaml_source import Document

RUN_NAMES = ("account", "contact", "contacts", "event", "vars", "steps", "run")
TRIGGER_NAMES = ("event", "account")
SEGMENT_NAMES = ("account",)
EXIT_NAMES = ("event", "account", "contact", "vars", "run")
SETUP_NAMES = ("account", "contact", "contacts", "event", "run")
JINJA_GLOBALS = ("range", "dict", "true", "false", "none", "True", "False", "None", "loop")

RUN_FIELDS = ("id", "playbook", "version", "started_at")
EVENT_FIELDS = ("id", "type", "data", "occurred_at", "account_id")

COMMON_RESULT = ("status", "error")
# Fields some results have: `reason` says why an effect was skipped (control, for a run of the control group). Accepted,
# not listed in the hint of an unknown field (most results never have it).
OCCASIONAL_RESULT = ("reason",)
RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("message_id", "subject", "body", "decision", "by", "comment", "edits"),
    "call_task": ("task_id", "outcome", "assignee"),
    "crm": ("account",),
    "assign": ("owner",),
    "wait": (),
    "wait_for": ("event", "timed_out"),
    "approval": ("decision", "by", "comment", "edits"),
    "switch": ("case",),
    "parallel": (),
    "split": ("path",),
    "for_each": ("count", "failed"),
    "set": (),
    "run_playbook": ("run_id", "outcome"),
    "stop": (),
}

# Keys whose values are bare expressions, per kind (the common `when` is handled for every step).
EXPRESSION_KEYS: dict[str, tuple[str, ...]] = {"wait_for": ("match",), "for_each": ("items",)}
# Keys whose values hold duration text, per kind.
DURATION_KEYS: dict[str, tuple[str, ...]] = {
    "call_task": ("due", "timeout"),
    "wait_for": ("timeout",),
    "approval": ("timeout",),
}
ASSIGNEE_FORMS = "owner, role:<name>, user:<id> or a template giving a CSM id"


@dataclass
class Scope:
    visible: dict[str, str]  # step id -> kind, of steps that can have run before
    locals: tuple[str, ...] = ()  # for_each item names
    in_for_each: tuple[str, ...] = ()  # for_each step paths we are inside


@dataclass
class StepInfo:
    path: Path
    kind: str | None
    for_each: str | None  # path text of the innermost enclosing for_each, if any


@dataclass
class Checker:
    doc: Document
    file: str
    problems: list[Problem] = field(default_factory=list)
    steps_by_id: dict[str, StepInfo] = field(default_factory=dict)
    declared_vars: set[str] = field(default_factory=set)
    bad_paths: set[Path] = field(default_factory=set)  # steps with no or two kinds
    categories: tuple[str, ...] | None = None  # of the messaging policy; None: not known, not checked
    policy_file: str | None = None  # where the categories come from, for messages

    # positions ---------------------------------------------------------------------------------

    def at_key(self, path: Path, message: str, rule: str = "meaning") -> None:
        pos = self.doc.pos(path)
        self.problems.append(Problem(self.file, pos.key_line, pos.key_col, message, rule, pos.key_len))

    def at_value(self, path: Path, message: str, rule: str = "meaning", line_offset: int = 0) -> None:
        pos = self.doc.pos(path)
        if line_offset and pos.block:
            self.problems.append(Problem(self.file, pos.value_line + line_offset, 1, message, rule))
        else:
            self.problems.append(Problem(self.file, pos.value_line, pos.value_col, message, rule, pos.value_len))

    # the whole playbook --------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        data = self.doc.data
        if not isinstance(data, dict):
            return self.problems
        self.check_step_shapes(data.get("steps"))
        self.collect_step_ids(data.get("steps"))
        vars_ = data.get("vars")
        if isinstance(vars_, dict):
            self.declared_vars.update(k for k in vars_ if isinstance(k, str))
        self.check_trigger(data.get("trigger"))
        self.check_settings(data)  # exit_when may use the declared vars (not those of set steps: they may not have run)
        if isinstance(vars_, dict):
            for key, value in vars_.items():
                self.check_strings(("vars", key), value, SETUP_NAMES, None)
        self.check_steps(data.get("steps"), ("steps",), Scope(visible={}))
        return self.problems

    def check_step_shapes(self, steps: Any) -> None:
        for path, step in iter_step_paths(steps):
            if not isinstance(step, dict):
                continue  # the schema reports it
            kinds = kinds_of(step)
            if len(kinds) == 1:
                continue
            self.bad_paths.add(path)
            all_kinds = ", ".join(STEP_KINDS)
            if not kinds:
                unknown = [k for k in step if k not in ("id", "name", "when", "retry", "timeout", "on_error")]
                close = next((suggest(str(k), STEP_KINDS) for k in unknown if suggest(str(k), STEP_KINDS)), None)
                if unknown and close:
                    key = next(k for k in unknown if suggest(str(k), STEP_KINDS) == close)
                    self.at_key(
                        path + (key,),
                        f"unknown step kind '{key}'; did you mean '{close}'? A step has one of: {all_kinds}",
                    )
                elif unknown:
                    self.at_key(
                        path + (unknown[0],),
                        f"unknown step kind '{unknown[0]}'; a step has exactly one of: {all_kinds}",
                    )
                else:
                    self.at_value(path, f"step has no kind; a step has exactly one of: {all_kinds}")
            else:
                named = ", ".join(f"'{k}'" for k in kinds)
                self.at_key(
                    path + (kinds[1],),
                    f"step has {len(kinds)} kinds ({named}); a step has exactly one of: {all_kinds}. "
                    "Split it into separate steps",
                )

    def collect_step_ids(self, steps: Any) -> None:
        def walk(steps: Any, path: Path, for_each: str | None) -> None:
            if not isinstance(steps, list):
                return
            for i, step in enumerate(steps):
                step_path = path + (i,)
                if not isinstance(step, dict):
                    continue
                kind = kind_of(step)
                step_id = step.get("id")
                if isinstance(step_id, str):
                    if step_id in self.steps_by_id:
                        first = self.doc.pos(self.steps_by_id[step_id].path + ("id",))
                        self.at_value(
                            step_path + ("id",),
                            f"duplicate step id '{step_id}' (first used at line {first.value_line}); "
                            "step ids are unique in a playbook",
                        )
                    else:
                        self.steps_by_id[step_id] = StepInfo(step_path, kind, for_each)
                for child in child_lists(step, step_path):
                    inner = path_text(step_path) if child.role == "for_each" else for_each
                    walk(child.steps, child.path, inner)

        walk(steps, ("steps",), None)

    def check_trigger(self, trigger: Any) -> None:
        if not isinstance(trigger, dict):
            return
        modes = [m for m in ("event", "schedule", "manual") if m in trigger]
        if len(modes) > 1:
            self.at_key(
                ("trigger", modes[1]),
                f"trigger has both '{modes[0]}' and '{modes[1]}'; give exactly one of event, schedule, manual",
            )
        if "when" in trigger and "event" not in trigger:
            self.at_key(
                ("trigger", "when"),
                "trigger 'when' filters events; it needs 'event' (for schedules use schedule.accounts)",
            )
        self.check_expression(("trigger", "when"), trigger.get("when"), TRIGGER_NAMES, None)
        schedule = trigger.get("schedule")
        if isinstance(schedule, dict):
            cron = schedule.get("cron")
            if isinstance(cron, str):
                reason = cron_problem(cron)
                if reason:
                    self.at_value(("trigger", "schedule", "cron"), f"invalid cron '{cron}': {reason}")
            self.check_expression(("trigger", "schedule", "accounts"), schedule.get("accounts"), SEGMENT_NAMES, None)
            self.check_timezone(("trigger", "schedule", "timezone"), schedule.get("timezone"))

    def check_settings(self, data: dict[str, Any]) -> None:
        settings = data.get("settings")
        if isinstance(settings, dict):
            self.check_timezone(("settings", "timezone"), settings.get("timezone"))
            self.check_strings(
                ("settings", "timezone"), settings.get("timezone"), ("account", "contact", "event"), None
            )
        enrollment = data.get("enrollment")
        if isinstance(enrollment, dict):
            self.check_strings(("enrollment", "key"), enrollment.get("key"), ("account", "contact", "event"), None)
        exits = data.get("exit_when")
        if isinstance(exits, list):
            for i, rule in enumerate(exits):
                if isinstance(rule, dict):
                    self.check_expression(("exit_when", i, "match"), rule.get("match"), EXIT_NAMES, None)

    def check_timezone(self, path: Path, value: Any) -> None:
        if not isinstance(value, str) or ex.is_template(value):
            return
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.at_value(path, f"unknown timezone '{value}'; expected an IANA name like Europe/Berlin or UTC")

    # steps ---------------------------------------------------------------------------------------

    def check_steps(self, steps: Any, path: Path, scope: Scope) -> None:
        """Checks a list of steps in order; adds what they make visible to scope.visible."""
        if not isinstance(steps, list):
            return
        for i, step in enumerate(steps):
            step_path = path + (i,)
            if not isinstance(step, dict) or step_path in self.bad_paths:
                continue
            kind = kind_of(step)
            if kind is None:  # pragma: no cover - bad_paths holds every step without exactly one kind
                continue
            step_id = step.get("id") if isinstance(step.get("id"), str) else None
            self.check_step(step, step_path, kind, step_id, scope)
            for child in child_lists(step, step_path):
                if child.role == "for_each":
                    spec = step.get("for_each") or {}
                    name = spec.get("as", "item") if isinstance(spec.get("as", "item"), str) else "item"
                    if name in RUN_NAMES:
                        self.at_value(
                            step_path + ("for_each", "as"),
                            f"'as: {name}' would hide the playbook's own '{name}'; pick another name",
                        )
                    inner = Scope(
                        dict(scope.visible), scope.locals + (name,), scope.in_for_each + (path_text(step_path),)
                    )
                else:
                    # cases and branches see what ran before the container, not each other
                    inner = Scope(dict(scope.visible), scope.locals, scope.in_for_each)
                self.check_steps(child.steps, child.path, inner)
            # Only once every case/branch is checked: they see what ran before the container, not each other.
            for child in child_lists(step, step_path):
                if child.role == "for_each":
                    continue
                for sid, info in self.steps_by_id.items():
                    if info.path[: len(child.path)] == child.path and info.for_each == self._for_each_of(scope):
                        scope.visible.setdefault(sid, info.kind or "")
            if step_id:
                scope.visible[step_id] = kind

    def _for_each_of(self, scope: Scope) -> str | None:
        return scope.in_for_each[-1] if scope.in_for_each else None

    def check_step(self, step: dict[str, Any], path: Path, kind: str, step_id: str | None, scope: Scope) -> None:
        names = RUN_NAMES + scope.locals
        self.check_expression(path + ("when",), step.get("when"), names, scope, self_id=step_id)
        if isinstance(step.get("retry"), dict):
            for key in ("initial_interval", "maximum_interval"):
                self.check_duration(path + ("retry", key), step["retry"].get(key))
        self.check_duration(path + ("timeout",), step.get("timeout"))
        spec = step.get(kind)
        spec_path = path + (kind,)
        for key in EXPRESSION_KEYS.get(kind, ()):
            if isinstance(spec, dict):
                extra = ("event",) if key == "match" else ()
                self.check_expression(spec_path + (key,), spec.get(key), names + extra, scope, self_id=step_id)
        for key in DURATION_KEYS.get(kind, ()):
            if isinstance(spec, dict):
                self.check_duration(spec_path + (key,), spec.get(key))
        if kind == "switch" and isinstance(spec, list):
            for j, case in enumerate(spec):
                if isinstance(case, dict) and "when" in case:
                    self.check_expression(spec_path + (j, "when"), case["when"], names, scope, self_id=step_id)
        if kind == "split" and step_id is None:
            # the path a key takes is drawn from the step id: without one, the groups could not be told apart
            # nor kept when steps are added before it
            self.at_key(
                path + ("split",),
                "a split step needs an id: it decides the path each key takes, and its result (steps.<id>.path) "
                "says which one was taken",
            )
        if kind == "set" and isinstance(spec, dict):
            self.declared_vars.update(k for k in spec if isinstance(k, str))
        shape_check = getattr(self, f"check_{kind}", None)
        if shape_check:
            shape_check(spec, spec_path)
        # every other string in the kind's value may be a template
        for sub_path, value in self._strings(spec, spec_path, kind):
            self.check_template(sub_path, value, names, scope, self_id=step_id)

    def _strings(self, value: Any, path: Path, kind: str) -> Iterator[tuple[Path, str]]:
        nested = {
            "switch": ("steps", "else", "when"),
            "parallel": ("steps",),
            "split": ("paths",),
            "for_each": ("steps", "items"),
            "email": ("category",),  # a name from the policy, never a template (check_email says so)
        }
        skip_keys = nested.get(kind, ()) + EXPRESSION_KEYS.get(kind, ())

        def walk(v: Any, p: Path, depth: int) -> Iterator[tuple[Path, str]]:
            if isinstance(v, str):
                yield p, v
            elif isinstance(v, dict):
                for k, item in v.items():
                    if k in skip_keys and depth <= 1:
                        continue
                    yield from walk(item, p + (k,), depth + 1)
            elif isinstance(v, list):
                for j, item in enumerate(v):
                    yield from walk(item, p + (j,), depth)

        yield from walk(value, path, 0)

    # kind-specific shapes --------------------------------------------------------------------------

    def check_switch(self, spec: Any, path: Path) -> None:
        if not isinstance(spec, list):
            return
        for j, case in enumerate(spec):
            if not isinstance(case, dict):
                continue
            if "else" in case and j != len(spec) - 1:
                self.at_key(
                    path + (j, "else"), "'else' must be the last item of a switch; the cases after it never run"
                )

    def check_split(self, spec: Any, path: Path) -> None:
        if not isinstance(spec, dict):
            return
        paths = spec.get("paths")
        if not isinstance(paths, list):
            return
        first: dict[str, int] = {}
        for j, item in enumerate(paths):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                line = self.doc.pos(path + ("paths", first[name], "name")).value_line
                self.at_value(
                    path + ("paths", j, "name"),
                    f"duplicate path name '{name}' (first used at line {line}); each path of a split has its own name",
                )
            else:
                first[name] = j

    def check_wait(self, spec: Any, path: Path) -> None:
        if isinstance(spec, str):
            self.check_duration(path, spec)
        elif isinstance(spec, dict):
            has_until = "until" in spec
            has_bd = "business_days" in spec
            if has_until == has_bd:
                self.at_key(path, "wait needs exactly one of 'until' (with an optional offset) or 'business_days'")
            if "offset" in spec and not has_until:
                self.at_key(path + ("offset",), "'offset' shifts 'until'; it needs 'until'")
            if isinstance(spec.get("offset"), str):
                self.check_duration(path + ("offset",), spec["offset"], allow_negative=True)

    def check_email(self, spec: Any, path: Path) -> None:
        if not isinstance(spec, dict):
            return
        if isinstance(spec.get("approval"), dict):
            self.check_duration(path + ("approval", "timeout"), spec["approval"].get("timeout"))
        if "template_id" not in spec:
            # SendGrid answers 400 to an email without a subject or without content: refuse it here instead.
            for key, what in (("subject", "a subject"), ("body", "content")):
                value = spec.get(key)
                if isinstance(value, str) and not value.strip():
                    self.at_value(
                        path + (key,),
                        f"the {key} is empty; the email provider refuses an email without {what} (SendGrid answers "
                        f"400): write one, or give a provider template_id",
                    )
        category = spec.get("category")
        if isinstance(category, str) and ex.is_template(category):
            self.at_value(
                path + ("category",),
                "category is a name from the policy, not a template: consent and caps are decided by it before the "
                "email is written",
            )
        elif (
            self.categories is not None
            and isinstance(category, str)
            and re.match(CATEGORY_PATTERN, category)
            and category not in self.categories
        ):
            close = suggest(category, self.categories)
            hint = f"; did you mean '{close}'?" if close else f"; declared: {', '.join(self.categories)}"
            source = f"the policy {self.policy_file}" if self.policy_file else "the built-in default policy"
            self.at_value(path + ("category",), f"category '{category}' is not declared in {source}{hint}")

    def check_call_task(self, spec: Any, path: Path) -> None:
        if not isinstance(spec, dict):
            return
        assignee = spec.get("assignee")
        valid = assignee == "owner" or (isinstance(assignee, str) and assignee.startswith(("role:", "user:")))
        if isinstance(assignee, str) and not ex.is_template(assignee) and (not valid or assignee.endswith(":")):
            hint = f"; did you mean 'user:{assignee}'?" if ":" not in assignee else ""
            self.at_value(path + ("assignee",), f"assignee must be {ASSIGNEE_FORMS}; got '{assignee}'{hint}")
        if "timeout" in spec and spec.get("wait") is not True:
            self.at_key(path + ("timeout",), "call_task 'timeout' only applies with 'wait: true'")

    # values --------------------------------------------------------------------------------------

    def check_duration(self, path: Path, value: Any, allow_negative: bool = False) -> None:
        if not isinstance(value, str) or ex.is_template(value):
            return
        try:
            parse_duration(value, allow_negative=allow_negative)
        except DurationError as err:
            if "longer than" in str(err) or "negative" in str(err):
                self.at_value(path, str(err))
            # a malformed duration is reported by the schema's pattern

    def check_strings(self, path: Path, value: Any, names: tuple[str, ...], scope: Scope | None) -> None:
        if isinstance(value, str):
            self.check_template(path, value, names, scope)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check_strings(path + (k,), v, names, scope)
        elif isinstance(value, list):
            for j, v in enumerate(value):
                self.check_strings(path + (j,), v, names, scope)

    def check_template(
        self, path: Path, value: str, names: tuple[str, ...], scope: Scope | None, self_id: str | None = None
    ) -> None:
        if not ex.is_template(value):
            return
        try:
            analysis = ex.analyse_template(value)
        except ex.AnalysisError as err:
            message = err.message
            if "end of print statement" in message and value.count("{{") > value.count("}}"):
                message = "template syntax error: '{{' is not closed; add '}}'"
            line, col = self.template_error_at(path, err.line)
            self.problems.append(Problem(self.file, line, col, message, "expression"))
            return
        self.check_analysis(path, analysis, names, scope, self_id)

    def template_error_at(self, path: Path, template_line: int) -> tuple[int, int]:
        """Where a template's syntax error stands in the file: inside a block scalar, on the offending line."""
        pos = self.doc.pos(path)
        if not pos.block:
            return pos.value_line, pos.value_col
        lines = self.doc.text.splitlines()
        block: list[int] = []  # 0-based indexes of the block's lines
        for i in range(pos.value_line, len(lines)):
            text = lines[i]
            if text.strip() and len(text) - len(text.lstrip()) < pos.key_col:
                break
            block.append(i)
        literal = self.doc.text.splitlines()[pos.value_line - 1][pos.value_col - 1 :].startswith("|")
        if literal and 0 < template_line <= len(block):
            i = block[template_line - 1]
        else:
            # a folded (>) block joins lines: find the first line that does not parse on its own
            found = next(
                (j for j in block if ("{{" in lines[j] or "{%" in lines[j]) and _fails(lines[j].strip())), None
            )
            if found is None:
                return pos.value_line, pos.value_col
            i = found
        return i + 1, len(lines[i]) - len(lines[i].lstrip()) + 1

    def check_expression(
        self, path: Path, value: Any, names: tuple[str, ...], scope: Scope | None, self_id: str | None = None
    ) -> None:
        if not isinstance(value, str):
            return
        key = next((p for p in reversed(path) if isinstance(p, str)), "when")
        if "{{" in value or "{%" in value:
            stripped = value.replace("{{", "").replace("}}", "").strip()
            consequence = "not a list" if key == "items" else "which is always true"
            self.at_value(
                path,
                f"'{key}' is an expression: write it without {{{{ }}}}, e.g. {key}: {stripped}. "
                f"With braces it is text, {consequence}",
                "expression",
            )
            return
        if not value.strip():
            self.at_value(path, f"'{key}' is empty; write an expression such as account.plan == \"pro\"", "expression")
            return
        try:
            analysis = ex.analyse_expression(value)
        except ex.AnalysisError as err:
            self.at_value(path, err.message, "expression")
            return
        self.check_analysis(path, analysis, names, scope, self_id)

    def check_analysis(
        self, path: Path, analysis: ex.Analysis, names: tuple[str, ...], scope: Scope | None, self_id: str | None
    ) -> None:
        for tag in sorted(set(analysis.forbidden)):
            self.at_value(
                path, f"'{{% {tag} %}}' is not allowed: a template cannot load other templates or files", "expression"
            )
        for attr in sorted(set(analysis.unsafe)):
            self.at_value(
                path, f"access to '{attr}' is not allowed: templates cannot reach Python internals", "expression"
            )
        if analysis.unsafe or analysis.forbidden:
            return
        allowed = set(names) | set(JINJA_GLOBALS)
        for name in sorted(analysis.names - allowed):
            if name in ex.REFUSED_GLOBALS:
                self.at_value(path, f"'{name}' is not allowed: {ex.REFUSED_GLOBALS[name]}", "expression")
                continue
            close = suggest(name, names)
            hint = f"did you mean '{close}'? " if close else ""
            self.at_value(path, f"unknown name '{name}'; {hint}names in scope here: {', '.join(names)}", "expression")
        for name in sorted(analysis.unknown_filters):
            if name in ex.REFUSED_FILTERS:
                self.at_value(path, f"filter '{name}' is not allowed: {ex.REFUSED_FILTERS[name]}", "expression")
                continue
            close = suggest(name, ex.environment().filters)
            hint = f"; did you mean '{close}'?" if close else ""
            self.at_value(path, f"unknown filter '{name}'{hint}", "expression")
        for name in sorted(analysis.unknown_tests):
            if name in ex.REFUSED_TESTS:
                self.at_value(path, f"test '{name}' is not allowed: {ex.REFUSED_TESTS[name]}", "expression")
                continue
            self.at_value(path, f"unknown test '{name}'", "expression")
        for line, message in dict.fromkeys(analysis.limits):  # range(100000) twice on a line is one problem
            line, col = self.template_error_at(path, line)  # inside a block scalar, on the line it is about
            self.problems.append(Problem(self.file, line, col, message, "expression"))
        for ref in analysis.references:
            if ref.root not in allowed or ref.root in analysis.names - set(names):
                continue
            if ref.root == "steps" and "steps" in names:
                self.check_step_reference(path, ref.attrs, scope, self_id)
            elif ref.root == "vars" and ref.attrs and "vars" in names:
                if ref.attrs[0] not in self.declared_vars:
                    close = suggest(ref.attrs[0], self.declared_vars)
                    hint = f"did you mean 'vars.{close}'? " if close else ""
                    declared = ", ".join(sorted(self.declared_vars)) or "none"
                    self.at_value(
                        path,
                        f"unknown variable 'vars.{ref.attrs[0]}'; {hint}declare it under 'vars:' or with a set step "
                        f"before it (declared: {declared})",
                        "reference",
                    )
            elif ref.root == "run" and ref.attrs and ref.attrs[0] not in RUN_FIELDS and "run" in names:
                self.at_value(path, f"'run' has no field '{ref.attrs[0]}'; it has {', '.join(RUN_FIELDS)}", "reference")
            elif ref.root == "event" and ref.attrs and ref.attrs[0] not in EVENT_FIELDS and "event" in names:
                close = suggest(ref.attrs[0], EVENT_FIELDS)
                hint = (
                    f"did you mean 'event.{close}'? " if close else f"event data is under event.data.{ref.attrs[0]}; "
                )
                self.at_value(
                    path, f"'event' has no field '{ref.attrs[0]}'; {hint}fields: {', '.join(EVENT_FIELDS)}", "reference"
                )

    def check_step_reference(
        self, path: Path, attrs: tuple[str, ...], scope: Scope | None, self_id: str | None
    ) -> None:
        if not attrs:
            return
        target = attrs[0]
        info = self.steps_by_id.get(target)
        if info is None:
            close = suggest(target, self.steps_by_id)
            hint = f"; did you mean 'steps.{close}'?" if close else ""
            self.at_value(path, f"unknown step 'steps.{target}'{hint}", "reference")
            return
        line = self.doc.pos(info.path).key_line
        if target == self_id:
            self.at_value(path, f"step '{target}' cannot use its own result", "reference")
            return
        if scope is None:
            return
        if info.for_each and info.for_each not in scope.in_for_each:
            self.at_value(
                path,
                f"steps.{target} runs once per item inside a for_each (line {line}); "
                "outside it use the for_each step's count and failed",
                "reference",
            )
            return
        if target not in scope.visible:
            self.at_value(
                path,
                f"steps.{target} (line {line}) has not run at this point: a step can only use the results of steps "
                "before it (not of later steps, nor of another switch case or parallel branch)",
                "reference",
            )
            return
        if len(attrs) > 1 and info.kind:
            fields = RESULT_FIELDS.get(info.kind, ()) + COMMON_RESULT
            if attrs[1] not in fields + OCCASIONAL_RESULT:
                close = suggest(attrs[1], fields)
                hint = f"did you mean '{close}'? " if close else ""
                self.at_value(
                    path,
                    f"{_article(info.kind)} {info.kind} step's result has no '{attrs[1]}'; "
                    f"{hint}it has {', '.join(fields)}",
                    "reference",
                )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _fails(template: str) -> bool:
    try:
        ex.analyse_template(template)
    except ex.AnalysisError:
        return True
    return False


CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12"),
    ("day-of-week", "0-7"),
)


def cron_problem(cron: str) -> str | None:
    """None for a valid five-field cron expression; else what is wrong, naming the field."""
    fields = cron.split()
    if len(fields) != 5:
        return 'expected five fields, minute hour day-of-month month day-of-week, e.g. "0 9 1 1,4,7,10 *"'
    for i, (name, bounds) in enumerate(CRON_FIELDS):
        probe = ["*"] * 5
        probe[i] = fields[i]
        if not croniter.is_valid(" ".join(probe)):
            digits = [int(n) for n in re.findall(r"\d+", fields[i])]
            low, high = (int(b) for b in bounds.split("-"))
            if digits and any(not low <= n <= high for n in digits if "/" not in fields[i]):
                return f"the {name} field '{fields[i]}' is out of range ({bounds})"
            return f"the {name} field '{fields[i]}' is not valid ({bounds}, *, lists a,b, ranges a-b, steps */n)"
    if not croniter.is_valid(cron):
        return "not a valid cron expression"
    return None


def check_meaning(
    doc: Document, file: str, categories: tuple[str, ...] | None = None, policy_file: str | None = None
) -> tuple[list[Problem], set[Path]]:
    """Returns the problems and the paths of steps whose shape is broken (for the schema check to skip).

    ``categories``: the email categories of the playbook's messaging policy (None: not checked).
    """
    checker = Checker(doc, file, categories=categories, policy_file=policy_file)
    checker.run()
    return checker.problems, checker.bad_paths
