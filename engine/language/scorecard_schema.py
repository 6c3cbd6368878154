"""The JSON Schema of a health scorecard (scorecards/*.yaml), written once as Python data.

schemas/scorecard.schema.json is generated from here by ``python -m engine.language.schema_source``
(draft-07, as the playbook schema, for yaml-language-server). What a schema cannot say (one kind per
measure, weights summing to 100, bands in ascending order, `otherwise` last, expressions that compile)
is checked by engine/language/scorecard.py, which reports both with FILE:LINE:COL.
"""

from __future__ import annotations

from typing import Any

from .schema_source import DRAFT, EVENT_TYPE_MESSAGE, EVENT_TYPE_PATTERN, PLAYBOOK_ID_PATTERN, _obj, _s

MEASURE_KINDS: tuple[str, ...] = ("field", "events", "last", "days_until", "days_since")
SCORECARD_ID_MESSAGE = "a scorecard id is kebab-case: lowercase letters and digits joined by single dashes"
SNAKE_PATTERN = r"^[a-z][a-z0-9_]*$"
MEASURE_ID_MESSAGE = "a measure id is snake_case: lowercase letters, digits and _, starting with a letter"
BAND_NAME_MESSAGE = "a band name is snake_case: lowercase letters, digits and _, starting with a letter"
FIELD_PATTERN = r"^account(\.[A-Za-z_][A-Za-z0-9_]*)+$"
FIELD_MESSAGE = "a field is a dotted path below account, like account.mrr or account.crm.open_bugs"
WINDOW_PATTERN = (
    r"^([0-9]+(s|m|h|d|w)"
    r"|P(?=[0-9T])([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?(T(?=[0-9])([0-9]+H)?([0-9]+M)?([0-9]+S)?)?)$"
)
WINDOW_MESSAGE = "a window is a fixed duration like 12h, 30d, 2w or P30D (not business days)"


def _number(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "number", "description": description, **extra}


def _window(description: str) -> dict[str, Any]:
    return _s(description, pattern=WINDOW_PATTERN, errorMessage=WINDOW_MESSAGE)


def _event_type(description: str) -> dict[str, Any]:
    return _s(description, pattern=EVENT_TYPE_PATTERN, errorMessage=EVENT_TYPE_MESSAGE)


def _field(description: str) -> dict[str, Any]:
    return _s(description, pattern=FIELD_PATTERN, errorMessage=FIELD_MESSAGE)


def _expression(description: str) -> dict[str, Any]:
    return _s(description)


def _points(description: str) -> dict[str, Any]:
    return _number(description, minimum=0, maximum=100)


def _rule() -> dict[str, Any]:
    return _obj(
        "One rule: {below: X, score: S} matches a value < X, {at_least: X, score: S} a value >= X, "
        "{otherwise: S} any value (last rule only). The first rule that matches gives the score.",
        {
            "below": _number("Matches a value strictly below this number."),
            "at_least": _number("Matches a value at or above this number."),
            "score": _points("The score (0 to 100) a matching value gets."),
            "otherwise": _points("The score (0 to 100) of any value no rule before matched; only as the last rule."),
        },
    )


def _measure() -> dict[str, Any]:
    return _obj(
        "One measure: exactly one of field, events, last, days_until or days_since; its weight; rules that map "
        "its value to a score from 0 to 100.",
        {
            "id": _s("The measure's id, snake_case, unique in the scorecard.", pattern=SNAKE_PATTERN,
                     errorMessage=MEASURE_ID_MESSAGE),
            "title": _s("What the measure is, as people read it (default: its id)."),
            "weight": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "description": "Its weight: a whole number; the weights of a scorecard sum to exactly 100.",
            },
            "field": _field("An account or CRM field holding a number, e.g. account.mrr."),
            "events": _obj(
                "A count (default) or sum of the account's events of a type over a rolling window.",
                {
                    "type": _event_type("The event type, e.g. support.ticket_opened."),
                    "window": _window("The rolling window, e.g. 30d: events older than this no longer count."),
                    "where": _expression(
                        "Only the events for which this expression over `event` is true, e.g. "
                        "event.data.priority == \"urgent\"."
                    ),
                    "aggregate": {
                        "enum": ["count", "sum"],
                        "description": "count (default): how many events; sum: the sum of `value` over them.",
                    },
                    "value": _expression("With aggregate: sum, the number each event adds, e.g. event.data.amount."),
                },
                ["type", "window"],
            ),
            "last": _obj(
                "The value of the account's latest event of a type, e.g. the last NPS answer.",
                {
                    "type": _event_type("The event type, e.g. survey.answered."),
                    "value": _expression("The number the event gives, an expression over `event`: event.data.score."),
                    "where": _expression("Only the events for which this expression over `event` is true."),
                    "window": _window("Optional: only an event this recent counts (else the value is missing)."),
                },
                ["type", "value"],
            ),
            "days_until": _field("Whole days from now until a date or datetime field, e.g. account.renews_on."),
            "days_since": _field("Whole days since a date or datetime field, e.g. account.last_login_at."),
            "score": {
                "type": "array",
                "minItems": 1,
                "description": "Rules from the value to a score, first match wins; a value no rule matches is "
                "missing.",
                "items": _rule(),
            },
            "missing": {
                "description": "When the value is missing: skip (default: the measure is left out and the others "
                "re-weighted) or {score: N} (a fixed score).",
                "anyOf": [
                    {"type": "string", "enum": ["skip"]},
                    _obj("A fixed score for a missing value.", {"score": _points("The score (0 to 100).")}, ["score"]),
                ],
            },
        },
        ["id", "weight", "score"],
    )


def scorecard_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": "https://playbooks.example/schemas/scorecard.schema.json",
        "title": "Health scorecard",
        "description": "A health scorecard (scorecards/<id>.yaml): weighted measures of an account's events and "
        "fields, each mapped to 0-100, summed into a score with named bands. See docs/health.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "bands", "measures"],
        "properties": {
            "id": _s("The scorecard's id, kebab-case; the file is named <id>.yaml.", pattern=PLAYBOOK_ID_PATTERN,
                     errorMessage=SCORECARD_ID_MESSAGE),
            "title": _s("The scorecard's name as people read it (default: its id)."),
            "segment": {
                "type": ["string", "boolean"],
                "description": "Which accounts it scores: an expression over `account` without {{ }}, e.g. "
                "account.plan != \"trial\" (default: every account).",
            },
            "bands": {
                "type": "array",
                "minItems": 1,
                "description": "Named bands in ascending order: every band but the last has `below`; a score "
                "falls in the first band whose `below` is above it, else in the last.",
                "items": _obj(
                    "A band, e.g. {name: red, below: 50}.",
                    {
                        "name": _s("The band's name, snake_case, unique.", pattern=SNAKE_PATTERN,
                                   errorMessage=BAND_NAME_MESSAGE),
                        "below": _number("Scores strictly below this (and not in an earlier band) are in this band.",
                                         exclusiveMinimum=0, maximum=100),
                    },
                    ["name"],
                ),
            },
            "changes": _obj(
                "Which new scores emit health.score_changed (so playbooks can start on them).",
                {
                    "band": {"type": "boolean", "description": "On a change of band (default: true)."},
                    "drop": _number("On a drop of at least this many points since the last score.",
                                    exclusiveMinimum=0, maximum=100),
                },
            ),
            "measures": {
                "type": "array",
                "minItems": 1,
                "description": "The measures; their weights are whole numbers summing to exactly 100.",
                "items": _measure(),
            },
        },
    }
