"""Property-based tests of the validator: whatever text it is given, it answers with clean problems.

Inputs are the bundled playbooks broken at random (a key deleted, a value replaced, a step duplicated,
characters inserted, the text cut short, indentation moved), random YAML-ish text, and random nested
data dumped as YAML. For every input ``validate_playbook_text`` must return, never raise; each problem
must be positioned (line and column from 1) and worded for an author (no traceback, no raw jsonschema
phrase, one line); and a model is built exactly when there is no problem. Where the text loads as a
mapping, the fast schema check (fastjsonschema) must agree with jsonschema, since it alone decides
"valid" on the fast path.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import fastjsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.language.library import Library, is_playbook_file
from engine.language.problems import Problem
from engine.language.schema_check import fast_schema_check, playbook_validator
from engine.language.schema_source import STEP_KINDS
from engine.language.step_tree import iter_step_paths
from engine.language.validator import validate_playbook_text
from engine.language.yaml_source import SourceError, load
from tests.paths import PLAYBOOKS, bundled_playbooks

BUNDLED = {path.name: path.read_text(encoding="utf-8") for path in bundled_playbooks() if is_playbook_file(path)}
# The bundled playbooks name the categories of their library's policy.yaml, not only the built-in ones.
BUNDLED_POLICY = Library.load(PLAYBOOKS).policy
assert BUNDLED, "no bundled playbooks to mutate"

RAW_PHRASES = (
    "Traceback",
    "is not valid under any of the given schemas",
    "Additional properties are not allowed",
    "is a required property",
    "is not of type",
    "Failed validating",
    "does not match '^",
)
# The translator's fallback for a JSON Schema keyword it has no wording for: "invalid value for X (if)".
UNTRANSLATED = re.compile(r"^invalid value for .* \([A-Za-z]+\)$")

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ the checks


def check_result(text: str) -> None:
    result = validate_playbook_text(text, "fuzz.yaml", BUNDLED_POLICY)  # must not raise
    assert isinstance(result.problems, list)
    for problem in result.problems:
        assert isinstance(problem, Problem), problem
        assert isinstance(problem.line, int) and problem.line >= 1, problem
        assert isinstance(problem.column, int) and problem.column >= 1, problem
        assert isinstance(problem.message, str) and problem.message.strip(), problem
        for phrase in RAW_PHRASES:
            assert phrase not in problem.message, problem
        assert not UNTRANSLATED.match(problem.message), f"untranslated schema error: {problem}"
        assert "\n" not in problem.message, f"a problem is one line: {problem}"
    assert (result.playbook is None) == bool(result.problems), (result.problems, result.playbook)
    check_fast_path_agrees(text)


def check_fast_path_agrees(text: str) -> None:
    """When the text loads as a mapping: the fast check raises iff jsonschema finds an error."""
    try:
        data = load(text).data
    except SourceError:
        return
    if not isinstance(data, dict):
        return
    slow_errors = [e.message for e in playbook_validator().iter_errors(data)]
    try:
        fast_schema_check("playbook")(data)
        fast_error = None
    except fastjsonschema.JsonSchemaException as err:
        fast_error = str(err)
    assert (fast_error is not None) == bool(slow_errors), (
        f"fast path says {fast_error or 'valid'}, jsonschema says {slow_errors or 'valid'}"
    )


# ------------------------------------------------------------------ values


INTERESTING_TEXT = st.sampled_from(
    [
        "", " ", "owner", "role:lead", "user:csm-de", "boss", "14d", "2bd", "P14D", "3 days", "-2d", "0s",
        "{{ account.id }}", "{{ contact.email }}", "{{", "}}", "{% if %}", "{{ steps.welcome.status }}",
        "{{ vars.nope }}", "{{ ''.__class__ }}", "steps.welcome.status == 'sent'", "account.plan == 'pro'",
        "account.signed_up", "0 9 * * *", "60 9 * * *", "Europe/Berlin", "Mars/Olympus", "never", "always",
        "language", "fail", "continue", "reject", "escalate:owner", "else", "true", "null", "~", "*", "&a", "!!str",
        "é", "\u200b", "a\tb", "x" * 200,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
    INTERESTING_TEXT,
)
PLAYBOOK_KEYS = (
    "id", "title", "description", "trigger", "event", "when", "schedule", "cron", "accounts", "manual",
    "enrollment", "key", "reenroll", "exit_when", "match", "goal", "settings", "timezone", "quiet_hours", "vars",
    "steps", "name", "retry", "max_attempts", "initial_interval", "backoff", "timeout", "on_error", "to",
    "subject", "body", "cc", "from", "template_id", "data", "approval", "approvers", "on_timeout", "message",
    "assignee", "title", "due", "wait", "outcomes", "update", "note", "tag", "lookup", "by", "team", "fallback",
    "until", "offset", "business_days", "items", "as", "concurrency", "else", "input", "outcome", "reason",
) + STEP_KINDS
KEYS = st.one_of(st.sampled_from(PLAYBOOK_KEYS), st.text(max_size=8))
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=10,
)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


# ------------------------------------------------------------------ mutations of data


def paths_of(data: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(paths_of(value, path + (key,)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(paths_of(value, path + (index,)))
    return found


def at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def delete_key(data: Any, draw: st.DrawFn) -> None:
    candidates = [p for p in paths_of(data) if p]
    if candidates:
        path = draw(st.sampled_from(candidates))
        del at(data, path[:-1])[path[-1]]


def replace_value(data: Any, draw: st.DrawFn) -> None:
    candidates = [p for p in paths_of(data) if p]
    if candidates:
        path = draw(st.sampled_from(candidates))
        at(data, path[:-1])[path[-1]] = draw(JSONISH)


def tweak_value(data: Any, draw: st.DrawFn) -> None:
    """Replaces a text value with a near miss of itself: the mistakes authors make with valid values."""
    candidates = [p for p in paths_of(data) if p and isinstance(at(data, p), str)]
    if candidates:
        path = draw(st.sampled_from(candidates))
        value = at(data, path)
        tweak = draw(st.sampled_from(["newline", "space", "indent", "upper", "twice", "empty", "chop", "dash"]))
        at(data, path[:-1])[path[-1]] = {
            "newline": value + "\n",
            "space": value + " ",
            "indent": " " + value,
            "upper": value.upper(),
            "twice": value + value,
            "empty": "",
            "chop": value[:-1],
            "dash": value.replace("_", "-").replace(".", "-"),
        }[tweak]


def duplicate_step(data: Any, draw: st.DrawFn) -> None:
    steps = [p for p, _ in iter_step_paths(data.get("steps"))] if isinstance(data, dict) else []
    if steps:
        path = draw(st.sampled_from(steps))
        parent = at(data, path[:-1])
        parent.insert(path[-1] + 1, copy.deepcopy(parent[path[-1]]))


DATA_MUTATIONS = {
    "delete_key": delete_key,
    "replace_value": replace_value,
    "tweak_value": tweak_value,
    "duplicate_step": duplicate_step,
}


# ------------------------------------------------------------------ mutations of text

YAML_CHARS = st.sampled_from(list(":-?[]{},#&*!|>'\"%@`\t\n\r \x00\x1b\ufeffé"))
SNIPPETS = st.sampled_from(["{{", "}}", "{%", "---", "\n- ", ": ", "&a ", "*a", "!!python/object "])
INSERTED = st.lists(st.one_of(YAML_CHARS, SNIPPETS, st.characters()), min_size=1, max_size=6).map("".join)


def insert_characters(text: str, draw: st.DrawFn) -> str:
    position = draw(st.integers(0, len(text)))
    return text[:position] + draw(INSERTED) + text[position:]


def truncate(text: str, draw: st.DrawFn) -> str:
    return text[: draw(st.integers(0, len(text)))]


def swap_indentation(text: str, draw: st.DrawFn) -> str:
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    i = draw(st.integers(0, len(lines) - 1))
    j = draw(st.integers(0, len(lines) - 1))
    indent = [len(line) - len(line.lstrip(" \t")) for line in lines]
    how = draw(st.sampled_from(["swap", "tab", "shift"]))
    if how == "swap":  # line i gets line j's indentation and the other way round
        a, b = lines[i][indent[i]:], lines[j][indent[j]:]
        lines[i], lines[j] = lines[j][: indent[j]] + a, lines[i][: indent[i]] + b
    elif how == "tab":
        lines[i] = "\t" + lines[i][indent[i]:] if indent[i] else "\t" + lines[i]
    else:
        shift = draw(st.integers(-3, 3))
        lines[i] = " " * max(0, indent[i] + shift) + lines[i][indent[i]:]
    return "\n".join(lines)


TEXT_MUTATIONS = {"insert_characters": insert_characters, "truncate": truncate, "swap_indentation": swap_indentation}


# ------------------------------------------------------------------ the properties


def test_bundled_playbooks_are_valid_before_mutation():
    for name, text in BUNDLED.items():
        result = validate_playbook_text(text, name, BUNDLED_POLICY)
        assert result.problems == [] and result.playbook is not None, name
        check_fast_path_agrees(text)


@PROPERTY_SETTINGS
@given(
    name=st.sampled_from(sorted(BUNDLED)),
    mutations=st.lists(st.sampled_from(sorted(DATA_MUTATIONS)), min_size=1, max_size=3),
    data=st.data(),
)
def test_mutated_playbook_data(name: str, mutations: list[str], data: st.DataObject) -> None:
    doc = load(BUNDLED[name]).data
    for mutation in mutations:
        DATA_MUTATIONS[mutation](doc, data.draw)
    check_result(dump(doc))


@PROPERTY_SETTINGS
@given(
    name=st.sampled_from(sorted(BUNDLED)),
    mutations=st.lists(st.sampled_from(sorted(TEXT_MUTATIONS)), min_size=1, max_size=3),
    data=st.data(),
)
def test_mutated_playbook_text(name: str, mutations: list[str], data: st.DataObject) -> None:
    text = BUNDLED[name]
    for mutation in mutations:
        text = TEXT_MUTATIONS[mutation](text, data.draw)
    check_result(text)


def test_a_lone_surrogate_is_a_problem_at_its_place_not_a_crash() -> None:
    """Found by test_mutated_playbook_text (the API's JSON body refuses such text before; this is the library)."""
    result = validate_playbook_text("id: x\ntitle: \ud800 hi\n", "t.yaml")
    assert [p.header() for p in result.problems] == [
        "t.yaml:2:8: the text is not valid Unicode: lone surrogate U+D800; remove it [syntax]"
    ]
    check_result("id: x\ntitle: \ud800 hi\n")


YAML_TOKENS = st.sampled_from(
    [
        "id:", "steps:", "- ", "email:", "to:", "when:", "wait:", "switch:", "else:", "key:", "value", "'quoted'",
        '"dq', "[", "]", "{", "}", ",", "&a", "*a", "<<:", "!!python/object:os.system", "!!str", "!!binary",
        "? ", "|", ">", "#", "---", "...", "%YAML 1.1", "{{ x }}", "{%", "~", "null", "yes", "0x1F", "1e400",
        "2026-03-02T09:00:00Z", ":", " ", "\t", "é",
    ]
)
YAMLISH_LINE = st.tuples(st.integers(0, 8), st.lists(YAML_TOKENS, max_size=5)).map(
    lambda t: " " * t[0] + " ".join(t[1])
)
YAMLISH_TEXT = st.one_of(
    st.lists(YAMLISH_LINE, max_size=12).map("\n".join),
    st.text(alphabet=st.one_of(YAML_CHARS, st.characters(codec="utf-8")), max_size=60),
)


@PROPERTY_SETTINGS
@given(text=YAMLISH_TEXT)
def test_random_yamlish_text(text: str) -> None:
    check_result(text)


STEPISH = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.sampled_from(["welcome", "call", "wait_a_bit", "Bad-Id"]), SCALARS),
        "when": st.one_of(INTERESTING_TEXT, SCALARS),
        **{kind: JSONISH for kind in STEP_KINDS},
    },
)
PLAYBOOKISH = st.one_of(
    JSONISH,
    st.fixed_dictionaries(
        {"id": st.one_of(st.just("fuzz-play"), SCALARS), "steps": st.one_of(st.lists(STEPISH, max_size=4), JSONISH)},
        optional={key: JSONISH for key in ("trigger", "vars", "settings", "enrollment", "exit_when", "title")},
    ),
)


@PROPERTY_SETTINGS
@given(data=PLAYBOOKISH)
def test_random_nested_data(data: Any) -> None:
    check_result(dump(data))
