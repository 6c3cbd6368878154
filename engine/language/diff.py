"""What changed between two versions of a playbook, in the playbook's own terms.

Computed on the validated models, never on the YAML text: reformatting, comments and key order are
no change, and "14d" against "P14D" is the same wait. Steps are matched by id (a step without an id
by its kind and position), so an edited step is one change, not a removal and an addition.

Every change has a kind, which says whether it alters behaviour (docs/diff.md):
metadata (title, description) does not; audience, timing, flow, content, approval, settings, vars,
policy and identity do. Field names and step kinds the differ does not know (a newer language) are
compared all the same and counted as flow, so nothing new slips through as "no change".
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .durations import DurationError, parse_duration
from .model import STEP_CLASSES, Playbook, Step, to_data

METADATA = "metadata"
BEHAVIOUR_KINDS = ("identity", "audience", "timing", "flow", "approval", "content", "settings", "vars", "policy")
KINDS = (*BEHAVIOUR_KINDS, METADATA)  # the order changes are grouped in

# Fields of a step that hold its child steps: compared through the steps themselves, not as values.
_CHILD_FIELDS = {"cases", "otherwise", "branches", "steps"}
_STEP_TYPES = tuple(STEP_CLASSES.values())
_ITEM_LABELS = {"cases": "case", "branches": "branch", "otherwise": "else"}
_IGNORED_STEP_FIELDS = {"path", "kind", "id"}

# The kind of a change to a step's field; a field not listed is "flow".
_STEP_FIELD_KINDS: dict[str, str] = {
    # timing
    "duration": "timing",
    "until": "timing",
    "offset": "timing",
    "business_days": "timing",
    "wait_timeout": "timing",
    "timeout": "timing",
    "retry": "timing",
    # content
    "to": "content",
    "subject": "content",
    "body": "content",
    "cc": "content",
    "bcc": "content",
    "sender": "content",
    "reply_to": "content",
    "template_id": "content",
    "data": "content",
    "category": "content",
    "title": "content",
    "notes": "content",
    "due": "content",
    "assignee": "content",
    "action": "content",
    "value": "content",
    "by": "content",
    "team": "content",
    "fallback": "content",
    "values": "content",
    "input": "content",
    "name": METADATA,  # a step's display name
}
_DURATION_FIELDS = {"duration", "wait_timeout", "timeout", "due", "initial_interval", "maximum_interval"}
_SETTINGS_TIMING = {"timezone", "quiet_hours"}


@dataclass(frozen=True)
class Change:
    kind: str  # one of KINDS
    change: str  # added, removed, moved, changed
    subject: str  # what changed: "step welcome", "trigger", "settings", "exit_when", ...
    field: str | None  # the field, dotted ("approval.timeout"), or None for the whole subject
    old: Any
    new: Any
    text: str  # one line for people

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "change": self.change,
            "subject": self.subject,
            "field": self.field,
            "old": self.old,
            "new": self.new,
            "text": self.text,
        }


@dataclass(frozen=True)
class PlaybookDiff:
    changes: tuple[Change, ...]

    @property
    def behaviour_changed(self) -> bool:
        return any(c.kind != METADATA for c in self.changes)

    @property
    def summary(self) -> str:
        """no change, metadata only, content only, or behaviour (anything else)."""
        kinds = {c.kind for c in self.changes}
        if not kinds:
            return "no change"
        if kinds == {METADATA}:
            return "metadata only"
        if kinds - {METADATA} == {"content"}:
            return "content only"
        return "behaviour"

    def by_kind(self) -> dict[str, list[Change]]:
        grouped: dict[str, list[Change]] = {}
        for kind in KINDS:
            found = [c for c in self.changes if c.kind == kind]
            if found:
                grouped[kind] = found
        return grouped


# ------------------------------------------------------------------ where steps sit


@dataclass(frozen=True)
class _Placed:
    step: Step
    key: str  # how it is matched across versions
    container: str  # the list of steps it sits in, in the playbook's terms ("top", "route case 1", ...)
    index: int


def _label(step: Step) -> str:
    if step.id:
        return step.id
    return f"{step.kind} '{step.name}'" if step.name else f"{step.kind} at {step.path}"


def _keys(steps: tuple[Step, ...]) -> dict[str, str]:
    """How each step (by path) is matched across versions: its id; else its kind and name when no other step has
    both, so inserting a step above it does not make it "removed and added"; else its kind and position."""
    placed = list(_walk(steps, "top"))
    names = Counter((s.kind, s.name) for s, _c, _i in placed if not s.id and s.name)
    keys = {}
    for step, _container, _index in placed:
        if step.id:
            keys[step.path] = f"id:{step.id}"
        elif step.name and names[(step.kind, step.name)] == 1:
            keys[step.path] = f"name:{step.kind}:{step.name}"
        else:
            keys[step.path] = f"at:{step.kind}@{step.path}"
    return keys


def step_names(playbook: Playbook) -> dict[str, str]:
    """Each step's path -> how the diff names it (its id, else its kind and name when no other step has both, else
    its kind and path): names that survive a step inserted above, for comparing what two versions did."""
    return {path: _label_of_key(key, path) for path, key in _keys(playbook.steps).items()}


def _label_of_key(key: str, path: str) -> str:
    how, _, rest = key.partition(":")
    if how == "id":
        return rest
    if how == "name":
        kind, _, name = rest.partition(":")
        return f"{kind} '{name}'"
    return path


def _place(steps: tuple[Step, ...]) -> dict[str, _Placed]:
    keys = _keys(steps)
    return {keys[s.path]: _Placed(s, keys[s.path], c, i) for s, c, i in _walk(steps, "top")}


def _walk(steps: tuple[Step, ...], container: str) -> Iterator[tuple[Step, str, int]]:
    for i, step in enumerate(steps):
        yield step, container, i
        name = step.id or step.path
        for child_container, children in _child_lists(step, name):
            yield from _walk(children, child_container)


def _is_steps(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and all(isinstance(v, _STEP_TYPES) for v in value)


def _is_paths(value: Any) -> bool:
    """Cases, branches, a split's paths: objects that each hold a list of steps."""
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(dataclasses.is_dataclass(v) and isinstance(getattr(v, "steps", None), tuple) for v in value)
    )


def _child_fields(*steps: Step) -> set[str]:
    """The fields holding nested steps, found by their values rather than by name, so that a container step kind
    added to the language later is walked and compared too."""
    found = set(_CHILD_FIELDS)
    for step in steps:
        for f in dataclasses.fields(step):
            value = getattr(step, f.name)
            if _is_steps(value) or _is_paths(value):
                found.add(f.name)
    return found


def _path_label(step_name: str, field_name: str, index: int) -> str:
    # by position, not by a branch's name: renaming a branch does not move the steps in it
    return f"{step_name} {_ITEM_LABELS.get(field_name, field_name)} {index + 1}"


def _child_lists(step: Step, name: str) -> Iterator[tuple[str, tuple[Step, ...]]]:
    for field_name in sorted(_child_fields(step), key=_field_order(step)):
        value: Any = getattr(step, field_name, None)
        if _is_paths(value):
            for i, item in enumerate(value):
                yield _path_label(name, field_name, i), item.steps
        elif _is_steps(value):
            yield f"{name} {_ITEM_LABELS.get(field_name, step.kind)}", value


def _field_order(step: Step) -> Callable[[str], int]:
    order = {f.name: i for i, f in enumerate(dataclasses.fields(step))}
    return lambda name: order.get(name, len(order))


def _where(placed: _Placed) -> str:
    return f"{placed.container} #{placed.index + 1}"


# ------------------------------------------------------------------ values


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(to_data(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: Any) -> str:
    return "(none)" if value is None else _short(value)


def _pair(old: Any, new: Any, limit: int = 60) -> str:
    """old → new; two long texts are shown from a little before where they first differ, so the change is seen."""
    if isinstance(old, str) and isinstance(new, str) and max(len(old), len(new)) > limit:
        a, b = " ".join(old.split()), " ".join(new.split())
        common = len(os.path.commonprefix([a, b]))
        start = max(0, common - 20)
        lead = "…" if start else ""
        return f"{_short(lead + a[start:], limit)} → {_short(lead + b[start:], limit)}"
    return f"{_shown(old)} → {_shown(new)}"


def _same(field: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if field.split(".")[-1] in _DURATION_FIELDS and isinstance(old, str) and isinstance(new, str):
        try:
            return parse_duration(old, allow_negative=True) == parse_duration(new, allow_negative=True)
        except DurationError:
            return False
    return False


def _fields(obj: Any, skip: set[str]) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}


def _object_changes(subject: str, old: Any, new: Any, kind_of: Callable[[str], str]) -> Iterator[Change]:
    return _value_changes(subject, _fields(old, set()), _fields(new, set()), kind_of)


def _value_changes(
    subject: str,
    old_fields: dict[str, Any],
    new_fields: dict[str, Any],
    kind_of: Callable[[str], str],
    prefix: str = "",
) -> Iterator[Change]:
    """Field by field; nested settings objects (retry, approval) field by field too."""
    for name in dict.fromkeys([*old_fields, *new_fields]):
        a, b = old_fields.get(name), new_fields.get(name)
        dotted = prefix + name
        if _same(dotted, a, b):
            continue
        kind = kind_of(dotted)
        both_objects = dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b)
        if both_objects and type(a) is type(b):
            yield from _value_changes(subject, _fields(a, set()), _fields(b, set()), kind_of, dotted + ".")
            continue
        yield Change(
            kind,
            "changed",
            subject,
            dotted,
            to_data(a),
            to_data(b),
            f"{subject}: {dotted} {_pair(a, b)}",
        )


def _step_field_kind(dotted: str) -> str:
    head = dotted.split(".")[0]
    if head == "approval":
        # who is asked and what they are told is the approval; how long they have is timing
        return "timing" if dotted in ("approval.timeout", "approval.on_timeout") else "approval"
    return _STEP_FIELD_KINDS.get(head, "flow")


# ------------------------------------------------------------------ steps


def _pair_unmatched(old: dict[str, _Placed], new: dict[str, _Placed]) -> tuple[dict[str, _Placed], dict[str, _Placed]]:
    """A step without an id that matched nothing (its name was edited, say) is the same step as an unmatched one
    without an id of the same kind at the same place: it is compared with it, not removed and added."""
    spare = {(p.container, p.index, p.step.kind): k for k, p in old.items() if k not in new and not p.step.id}
    renamed = {}
    for key, q in new.items():
        if key in old or q.step.id:
            continue
        old_key = spare.pop((q.container, q.index, q.step.kind), None)
        if old_key is not None:
            renamed[key] = old_key
    return old, {renamed.get(k, k): q for k, q in new.items()}


def _asks_approval(step: Step) -> bool:
    return step.kind == "approval" or getattr(step, "approval", None) is not None


def _step_changes(old: Playbook, new: Playbook) -> Iterator[Change]:
    old_placed, new_placed = _pair_unmatched(_place(old.steps), _place(new.steps))
    for key, p in old_placed.items():
        if key not in new_placed:
            s = p.step
            yield Change(
                "flow",
                "removed",
                f"step {_label(s)}",
                None,
                s.kind,
                None,
                f"removed {s.kind} step {_label(s)} (was {_where(p)})",
            )
            if _asks_approval(s):
                yield Change(
                    "approval",
                    "removed",
                    f"step {_label(s)}",
                    "approval",
                    s.kind,
                    None,
                    f"approval removed with {s.kind} step {_label(s)}",
                )
    for key, p in new_placed.items():
        if key not in old_placed:
            s = p.step
            yield Change(
                "flow",
                "added",
                f"step {_label(s)}",
                None,
                None,
                s.kind,
                f"added {s.kind} step {_label(s)} at {_where(p)}",
            )
            if _asks_approval(s):
                yield Change(
                    "approval",
                    "added",
                    f"step {_label(s)}",
                    "approval",
                    None,
                    s.kind,
                    f"approval added with {s.kind} step {_label(s)}",
                )
    yield from _moves(old_placed, new_placed)
    for key, p in old_placed.items():
        q = new_placed.get(key)
        if q is None:
            continue
        a, b = p.step, q.step
        subject = f"step {_label(a)}"
        if a.kind != b.kind:
            yield Change(
                "flow", "changed", subject, "kind", a.kind, b.kind, f"{subject}: {a.kind} step → {b.kind} step"
            )
            continue
        yield from _approval_presence(subject, a, b)
        skip = _IGNORED_STEP_FIELDS | _child_fields(a, b) | {"approval"}
        yield from _value_changes(subject, _fields(a, skip), _fields(b, skip), _step_field_kind)
        had, has = getattr(a, "approval", None), getattr(b, "approval", None)
        if had is not None and has is not None:
            yield from _value_changes(subject, _fields(had, set()), _fields(has, set()), _step_field_kind, "approval.")
        yield from _branch_conditions(subject, a, b)


def _approval_presence(subject: str, a: Step, b: Step) -> Iterator[Change]:
    had, has = getattr(a, "approval", None), getattr(b, "approval", None)
    if had is not None and has is None:
        yield Change("approval", "removed", subject, "approval", to_data(had), None, f"{subject}: approval removed")
    elif had is None and has is not None:
        yield Change(
            "approval",
            "added",
            subject,
            "approval",
            None,
            to_data(has),
            f"{subject}: approval added (approvers {', '.join(has.approvers)})",
        )


def _branch_conditions(subject: str, a: Step, b: Step) -> Iterator[Change]:
    """The shape of the paths: a switch's cases and their conditions, its else, a parallel's branches (and any
    container's items), compared item by item on everything but their steps."""
    for field_name in sorted(_child_fields(a, b)):
        old, new = getattr(a, field_name, None), getattr(b, field_name, None)
        label = _ITEM_LABELS.get(field_name, field_name)
        if _is_paths(old) or _is_paths(new):
            old_items, new_items = old or (), new or ()
            for i in range(max(len(old_items), len(new_items))):
                x = old_items[i] if i < len(old_items) else None
                y = new_items[i] if i < len(new_items) else None
                where = f"{subject}: {label} {i + 1}"
                if x is None or y is None:
                    what = "added" if x is None else "removed"
                    yield Change("flow", what, subject, f"{label} {i + 1}", to_data(x), to_data(y), f"{where} {what}")
                    continue
                old_fields, new_fields = _fields(x, {"steps"}), _fields(y, {"steps"})
                yield from _value_changes(subject, old_fields, new_fields, lambda _f: "flow", f"{label} {i + 1}.")
        elif (old is None or old == ()) != (new is None or new == ()):
            what = "added" if old is None or old == () else "removed"
            yield Change("flow", what, subject, field_name, None, None, f"{subject}: {label} branch {what}")


def _moved(verb: str, p: _Placed, q: _Placed) -> Change:
    """A step found at another place (``moved``: into another list; ``reordered``: within its list)."""
    where = f"{_where(p)} → {_where(q)}"
    return Change("flow", "moved", f"step {_label(p.step)}", "position", _where(p), _where(q),
                  f"{verb} step {_label(p.step)}: {where}")


def _moves(old: dict[str, _Placed], new: dict[str, _Placed]) -> Iterator[Change]:
    common = [k for k in old if k in new and not k.startswith("at:")]  # the others are matched by position
    for key in common:
        p, q = old[key], new[key]
        if p.container != q.container:
            yield _moved("moved", p, q)
    # within one list: the steps outside the longest common order are the ones that moved
    containers = {old[k].container for k in common if old[k].container == new[k].container}
    for container in sorted(containers):
        keys = [k for k in common if old[k].container == container == new[k].container]
        before = sorted(keys, key=lambda k: old[k].index)
        after = sorted(keys, key=lambda k: new[k].index)
        kept: set[str] = set()
        for block in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_matching_blocks():
            kept.update(before[block.a : block.a + block.size])
        for key in after:
            if key not in kept:
                p, q = old[key], new[key]
                yield _moved("reordered", p, q)


# ------------------------------------------------------------------ the playbook around the steps


def _dict_changes(subject: str, kind: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    for name in dict.fromkeys([*old, *new]):
        a, b = old.get(name), new.get(name)
        if a != b:
            what = "added" if name not in old else "removed" if name not in new else "changed"
            yield Change(
                kind,
                what,
                subject,
                name,
                to_data(a),
                to_data(b),
                f"{subject}: {name} {_short(a) if name in old else '(none)'} → "
                f"{_short(b) if name in new else '(none)'}",
            )


def _exit_changes(old: Playbook, new: Playbook) -> Iterator[Change]:
    before, after = [to_data(r) for r in old.exit_when], [to_data(r) for r in new.exit_when]
    for rule in before:
        if rule not in after:
            what = "goal" if rule.get("goal") else "exit rule"
            yield Change(
                "audience",
                "removed",
                "exit_when",
                None,
                rule,
                None,
                f"exit_when: {what} on {rule['event']} removed" + _match(rule),
            )
    for rule in after:
        if rule not in before:
            what = "goal" if rule.get("goal") else "exit rule"
            yield Change(
                "audience",
                "added",
                "exit_when",
                None,
                None,
                rule,
                f"exit_when: {what} on {rule['event']} added" + _match(rule),
            )


def _match(rule: dict[str, Any]) -> str:
    return f" (match {_short(rule['match'])})" if rule.get("match") is not None else ""


def diff_playbooks(old: Playbook, new: Playbook) -> PlaybookDiff:
    changes: list[Change] = []
    if old.id != new.id:
        changes.append(
            Change(
                "identity",
                "changed",
                "id",
                "id",
                old.id,
                new.id,
                f"id {old.id} → {new.id}: runs and enrollments are keyed by it",
            )
        )
    for name in ("title", "description"):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            changes.append(Change(METADATA, "changed", name, name, a, b, f"{name}: {_short(a)} → {_short(b)}"))
    changes.extend(_object_changes("trigger", old.trigger, new.trigger, lambda _f: "audience"))
    changes.extend(_object_changes("enrollment", old.enrollment, new.enrollment, lambda _f: "audience"))
    changes.extend(_exit_changes(old, new))
    changes.extend(
        _object_changes(
            "settings", old.settings, new.settings, lambda f: "timing" if f in _SETTINGS_TIMING else "settings"
        )
    )
    changes.extend(_dict_changes("vars", "vars", old.vars, new.vars))
    if old.policy != new.policy:  # equal policies read from two files are the same policy (`file` is not compared)
        if old.policy is not None and new.policy is not None:
            before, after = _fields(old.policy, {"file"}), _fields(new.policy, {"file"})
            changes.extend(_value_changes("messaging policy", before, after, lambda _f: "policy"))
        else:
            changes.append(
                Change("policy", "changed", "messaging policy", None, None, None, "messaging policy differs")
            )
    changes.extend(_step_changes(old, new))
    order = {k: i for i, k in enumerate(KINDS)}
    changes.sort(key=lambda c: order.get(c.kind, len(KINDS)))  # stable: within a kind, document order
    return PlaybookDiff(tuple(changes))
