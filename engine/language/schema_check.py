"""Runs the JSON Schema and turns each error into one precise, positioned Problem.

Raw jsonschema messages ("is not valid under any of the given schemas", "Additional properties are
not allowed") never reach the user: each error kind is translated here into what an author needs,
pointing at the key or value concerned, with a did-you-mean where there is a close name.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema.validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from .problems import Problem
from .schema_source import STEP_KINDS, playbook_schema, policy_schema, scenario_schema
from .step_tree import iter_step_paths, kind_of
from .yaml_source import Document, Path

_TYPE_WORDS = {
    "object": "a mapping (key: value)",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


def _strict_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterable[ValidationError]:
    """`pattern` as editors (JavaScript) read it: `$` is the end of the text, not also before a final line break.

    Python's `$` also matches before a trailing newline, so `id: >` folding to "welcome\\n" would pass.
    """
    if not validator.is_type(instance, "string"):
        return
    regex = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    if re.search(regex, instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# types-jsonschema leaves validators.extend unannotated
_Validator: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft7Validator, {"pattern": _strict_pattern}
)


@functools.cache
def playbook_validator() -> Validator:
    schema = playbook_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return _Validator(schema)


@functools.cache
def scenario_validator() -> Validator:
    schema = scenario_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return _Validator(schema)


@functools.cache
def policy_validator() -> Validator:
    schema = policy_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return _Validator(schema)


_VALIDATORS = {"playbook": playbook_validator, "scenario": scenario_validator, "policy": policy_validator}


@functools.cache
def fast_schema_check(document: str) -> Callable[[Any], None]:
    """A compiled check that raises fastjsonschema.JsonSchemaException on any schema error.

    fastjsonschema compiles schemas to Python, many times faster than jsonschema on valid documents,
    but it stops at the first error and says little: it is only the fast path for "all good", and
    jsonschema runs when it fails. Compiled whole, the recursive step schema becomes megabytes of
    code, so playbooks are checked in pieces: the playbook with each step only required to be a
    mapping, then every step (nested ones included) against its own kind's schema.
    """
    if document == "policy":
        return fastjsonschema.compile(policy_schema())
    if document != "playbook":
        return fastjsonschema.compile(scenario_schema())
    schema = playbook_schema()
    definitions = copy.deepcopy(schema["definitions"])
    step = definitions["step"]
    definitions["step"] = {"type": "object"}
    top = fastjsonschema.compile({**schema, "definitions": definitions})
    per_kind = {}
    for branch in step["allOf"]:
        kinds = branch["if"].get("required")
        if kinds:
            kind_schema = {"definitions": definitions, "type": "object", **branch["then"]}
            per_kind[kinds[0]] = fastjsonschema.compile(kind_schema)

    def check(data: Any) -> None:
        top(data)
        for path, node in iter_step_paths(data.get("steps")):
            kind = kind_of(node)
            if kind is None:
                raise fastjsonschema.JsonSchemaException(f"step at {path} has no single kind")
            per_kind[kind](node)

    return check


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def describe_value(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{text[:60]}{'…' if len(text) > 60 else ''}'"


def get_at(data: Any, path: Path) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def where(data: Any, path: Path, document: str) -> str:
    """Names the place a path points at, the way an author thinks of it."""
    if not path:
        return f"the {document}"
    node = get_at(data, path)
    if isinstance(path[-1], int) and len(path) >= 2 and path[-2] in ("steps", "else"):
        kind = kind_of(node)
        return f"{kind} step" if kind else "step"
    if len(path) >= 2 and isinstance(path[-2], int) and path[-1] in STEP_KINDS:
        parent = get_at(data, path[:-1])
        if isinstance(parent, dict) and kind_of(parent) == path[-1]:
            return f"{path[-1]} step"
    if isinstance(path[-1], int):
        parent_key = next((p for p in reversed(path) if isinstance(p, str)), document)
        return f"an item of '{parent_key}'"
    return f"'{path[-1]}'"


def _schema(error: ValidationError) -> Mapping[str, Any]:
    """The schema holding the keyword that failed (jsonschema sets it on every error; a true/false one has no keys)."""
    return error.schema if isinstance(error.schema, Mapping) else {}


def _listed(error: ValidationError) -> list[Any]:
    """The failing keyword's value as a list: `required`, `enum`, `anyOf` are lists, `type` one name or a list."""
    value = error.validator_value
    return value if isinstance(value, list) else [value]


def subject(path: Path) -> str:
    """How to name the value at path in a message: its key, or 'item N of key'."""
    if not path:
        return "the document"
    if isinstance(path[-1], int):
        parent = next((p for p in reversed(path) if isinstance(p, str)), "list")
        return f"item {path[-1] + 1} of '{parent}'"
    return f"'{path[-1]}'"


class Translator:
    def __init__(self, doc: Document, file: str, document: str) -> None:
        self.doc = doc
        self.file = file
        self.document = document

    def _at_key(self, path: Path, message: str) -> Problem:
        pos = self.doc.pos(path)
        return Problem(self.file, pos.key_line, pos.key_col, message, "schema", pos.key_len)

    def _at_value(self, path: Path, message: str) -> Problem:
        pos = self.doc.pos(path)
        return Problem(self.file, pos.value_line, pos.value_col, message, "schema", pos.value_len)

    def translate(self, error: ValidationError) -> list[Problem]:
        handler: Callable[[ValidationError], list[Problem]] | None = getattr(self, f"_{error.validator}", None)
        if handler is None:
            path = tuple(error.absolute_path)
            return [self._at_value(path, f"invalid value for {subject(path)} ({error.validator})")]
        return handler(error)

    # one method per JSON Schema keyword -------------------------------------------------------

    def _additionalProperties(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        allowed = list((_schema(error).get("properties") or {}).keys())
        extras = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        place = where(self.doc.data, path, self.document)
        kind = place[: -len(" step")] if place.endswith(" step") else None
        kind_keys = self._kind_keys(kind) if kind and path and path[-1] != kind else set()
        problems = []
        for key in extras:
            close = suggest(str(key), allowed)
            if key in kind_keys:
                message = f"'{key}' belongs to '{kind}': indent it under '{kind}:'"
            elif not allowed:
                owner = path[-1] if path else "it"
                message = f"unknown key '{key}' in {place}; {owner} takes no keys: write {path[-1]}: {{}}"
            elif close:
                message = f"unknown key '{key}' in {place}; did you mean '{close}'?"
            else:
                message = f"unknown key '{key}' in {place}; expected one of: {', '.join(allowed)}"
            problems.append(self._at_key(path + (key,), message))
        return problems

    @staticmethod
    def _kind_keys(kind: str) -> set[str]:
        spec = playbook_schema()["definitions"]["step"]["properties"].get(kind) or {}
        then = spec.get("then") if isinstance(spec.get("then"), dict) else {}
        return set(spec.get("properties") or {}) | set((then or {}).get("properties") or {})

    def _required(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        present = error.instance if isinstance(error.instance, dict) else {}
        markers = [k for k in _listed(error) if " | " in k]
        if markers:
            # The "no kind" marker: for steps the step-shape check reports it; here it is a scenario item.
            options = markers[0].split(" | ")
            place = where(self.doc.data, path, self.document)
            return [self._at_value(path, f"{place} needs one of: {', '.join(options)}")]
        missing = [k for k in _listed(error) if k not in present]
        place = where(self.doc.data, path, self.document)
        hint = ""
        if place == "email step" and ("subject" in missing or "body" in missing):
            hint = " (or give a provider template_id)"
        names = " and ".join(f"'{m}'" for m in missing)
        plural = "keys" if len(missing) > 1 else "key"
        return [self._at_key(path, f"missing required {plural} {names} in {place}{hint}")]

    def _type(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        expected = _listed(error)
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        got = describe_value(error.instance)
        if isinstance(path[-1:][0] if path else None, int) and len(path) >= 2 and path[-2] in ("steps", "else"):
            kinds = ", ".join(STEP_KINDS)
            return [self._at_value(path, f"a step must be a mapping with one kind key ({kinds}); got {got}")]
        if not path and self.document == "playbook":
            return [self._at_value(path, f"a playbook must be a mapping (id, title, trigger, steps...); got {got}")]
        if not path and self.document == "policy":
            return [self._at_value(path, f"a policy must be a mapping (default_category, categories, caps); got {got}")]
        if not path:
            return [
                self._at_value(path, f"a scenario must be a mapping (playbook, account, script, expect...); got {got}")
            ]
        if _schema(error).get("pattern") and _schema(error).get("errorMessage", "").startswith("a duration"):
            durations = "a duration like 30s, 15m, 2h, 14d, 2w, 3bd or P14D"
            return [self._at_value(path, f"{subject(path)} must be {durations}; got {got}")]
        if _schema(error).get("errorMessage", "").startswith("a window"):
            return [self._at_value(path, f"{subject(path)} must be a fixed duration like 12h, 1d or 2w; got {got}")]
        return [self._at_value(path, f"{subject(path)} must be {words}; got {got}")]

    def _enum(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        options = [str(o) for o in _listed(error)]
        close = suggest(str(error.instance), options)
        hint = f"; did you mean '{close}'?" if close else ""
        return [
            self._at_value(
                path, f"{subject(path)} must be one of {', '.join(options)}; got {describe_value(error.instance)}{hint}"
            )
        ]

    def _const(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        return [self._at_value(path, f"{subject(path)} must be {str(error.validator_value).lower()}")]

    def _pattern(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        if "propertyNames" in error.schema_path:
            # jsonschema yields the inner error of propertyNames: its instance is the offending name
            explanation = _schema(error).get("errorMessage") or "invalid name"
            name = str(error.instance)
            return [self._at_key(path + (name,), f"invalid name '{name}' in {subject(path)}: {explanation}")]
        explanation = _schema(error).get("errorMessage") or f"expected text matching {error.validator_value}"
        return [self._at_value(path, f"invalid {subject(path)} {describe_value(error.instance)}: {explanation}")]

    def _propertyNames(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        # jsonschema reports the offending name as the instance of the inner error
        problems = []
        for inner in error.context or []:
            name = str(inner.instance)
            explanation = _schema(inner).get("errorMessage") or "invalid name"
            problems.append(self._at_key(path + (name,), f"invalid name '{name}' in {subject(path)}: {explanation}"))
        if not problems and isinstance(error.instance, str):
            explanation = _schema(error).get("errorMessage", "")
            problems.append(self._at_key(path, f"invalid name '{error.instance}': {explanation}"))
        return problems

    def _minItems(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        n = error.validator_value
        need = "must not be empty" if n == 1 else f"needs at least {n} items"
        return [self._at_value(path, f"{subject(path)} {need}")]

    def _minProperties(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        if path and path[-1] == "crm":
            return [self._at_key(path, "crm step needs one of: update, note, tag, lookup")]
        if path and path[-1] == "trigger":
            return [self._at_key(path, "trigger needs one of: event, schedule, manual")]
        return [self._at_key(path, f"{subject(path)} must not be empty")]

    def _maxProperties(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        if path and path[-1] == "crm" and isinstance(error.instance, dict):
            given = " and ".join(f"'{k}'" for k in error.instance)
            return [self._at_key(path, f"crm step takes exactly one of update, note, tag, lookup; got {given}")]
        return [self._at_key(path, f"{subject(path)} has too many keys")]

    def _minimum(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        return [self._at_value(path, f"{subject(path)} must be at least {error.validator_value}; got {error.instance}")]

    def _maximum(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        return [self._at_value(path, f"{subject(path)} must be at most {error.validator_value}; got {error.instance}")]

    def _uniqueItems(self, error: ValidationError) -> list[Problem]:
        path = tuple(error.absolute_path)
        return [self._at_value(path, f"{subject(path)} lists the same value twice")]

    def _anyOf(self, error: ValidationError) -> list[Problem]:
        """Pick the branch whose type fits the value and report its errors; else say which types fit."""
        path = tuple(error.absolute_path)
        by_branch: dict[str | int, list[ValidationError]] = {}
        for inner in error.context or []:
            by_branch.setdefault(inner.schema_path[0], []).append(inner)
        fitting = [
            errs
            for errs in by_branch.values()
            if not any(e.validator == "type" and tuple(e.absolute_path) == path for e in errs)
        ]
        if fitting:
            best = min(fitting, key=len)
            return [p for e in best for p in self.translate(e)]
        types: list[str] = []
        for branch in _listed(error):
            t = branch.get("type") or ("string" if "$ref" in branch else None)
            if t and _TYPE_WORDS.get(t, t) not in types:
                types.append(_TYPE_WORDS.get(t, t))
        expected = " or ".join(types)
        return [self._at_value(path, f"{subject(path)} must be {expected}; got {describe_value(error.instance)}")]

    _oneOf = _anyOf


def schema_problems(doc: Document, file: str, document: str, skip: Iterable[Path] = ()) -> list[Problem]:
    """All schema problems of a document, translated, deduplicated, in order of position.

    ``skip``: paths whose errors are already reported better elsewhere (steps with no or two kinds).
    """
    try:
        fast_schema_check(document)(doc.data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    validator = _VALIDATORS[document]()
    skipped = [tuple(s) for s in skip]
    translator = Translator(doc, file, document)
    problems: list[Problem] = []
    suggested: set[tuple[Path, str]] = set()  # (mapping path, key an unknown key was taken for)
    errors = []
    for error in validator.iter_errors(doc.data):
        path = tuple(error.absolute_path)
        if any(path[: len(s)] == s for s in skipped):
            continue
        errors.append(error)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list((_schema(error).get("properties") or {}).keys())
            for key in error.instance:
                close = suggest(str(key), allowed) if key not in allowed else None
                if close:
                    suggested.add((path, close))
    for error in errors:
        if error.validator == "required":
            path = tuple(error.absolute_path)
            present = error.instance if isinstance(error.instance, dict) else {}
            missing = [k for k in _listed(error) if k not in present]
            if missing and all((path, k) in suggested for k in missing):
                continue  # the typo is reported as an unknown key with this very suggestion
        problems.extend(translator.translate(error))
    return problems
