"""schemas/*.json are generated from engine/language/schema_source.py and fit editors."""

from __future__ import annotations

import json

import jsonschema
import pytest

from engine.language import schema_source, scorecard_schema

FILES = {
    "playbook.schema.json": schema_source.playbook_schema,
    "scenario.schema.json": schema_source.scenario_schema,
    "policy.schema.json": schema_source.policy_schema,
    "scorecard.schema.json": scorecard_schema.scorecard_schema,
}


@pytest.mark.parametrize("name", FILES)
def test_committed_schema_matches_its_source(root, name):
    committed = (root / "schemas" / name).read_text(encoding="utf-8")
    assert committed == schema_source.render(FILES[name]()), (
        "schemas/ is stale: run `.venv/bin/python -m engine.language.schema_source`"
    )


@pytest.mark.parametrize("name", FILES)
def test_schema_is_valid_draft_07(name):
    schema = FILES[name]()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def _walk(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, path + (i,))


@pytest.mark.parametrize("name", FILES)
def test_every_property_is_described(name):
    schema = FILES[name]()
    missing = []
    for path, node in _walk(schema):
        for key, prop in (node.get("properties") or {}).items() if path[-1:] != ("properties",) else ():
            if prop is True:  # `then` branches re-list keys as `true` only to close additionalProperties
                continue
            if not (isinstance(prop, dict) and (prop.get("description") or "$ref" in prop)):
                missing.append("/".join(map(str, path + ("properties", key))))
    assert missing == []


@pytest.mark.parametrize("name", FILES)
def test_every_object_with_properties_is_closed(name):
    """Unknown keys are errors everywhere, except where an if/then branch closes the object instead."""
    open_objects = []
    for path, node in _walk(FILES[name]()):
        if path[-1:] == ("properties",) or not isinstance(node.get("properties"), dict):
            continue
        closed = node.get("additionalProperties") is False
        closed_by_branches = "allOf" in node and all(
            (b.get("then") or {}).get("additionalProperties") is False or "required" in (b.get("then") or {})
            for b in node["allOf"]
        )
        closed_by_if = all(
            isinstance(node.get(b), dict) and node[b].get("additionalProperties") is False for b in ("then", "else")
        )
        if not (closed or closed_by_branches or closed_by_if or path[-1:] == ("account",)):
            open_objects.append("/".join(map(str, path)))
    assert open_objects == []


def test_step_kinds_are_chosen_by_their_key_not_by_oneof():
    step = schema_source.playbook_schema()["definitions"]["step"]
    assert "oneOf" not in json.dumps(step)
    kinds = [b["if"]["required"][0] for b in step["allOf"] if "required" in b["if"]]
    assert kinds == list(schema_source.STEP_KINDS)
