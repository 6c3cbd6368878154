"""The JSON Schemas of playbooks and scenarios, written once as Python data.

The files in ``schemas/`` are generated from here (``python -m engine.language.schema_source``)
and a test keeps them in sync. They are draft-07 because that is what yaml-language-server
(the YAML support in VS Code, Neovim, JetBrains...) understands; each step kind's sub-schema is
chosen with ``if: {required: [kind]}`` / ``then:`` so an editor reports "unknown key" on the step
itself instead of an opaque "does not match any of the given schemas".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DRAFT = "http://json-schema.org/draft-07/schema#"

STEP_KINDS: tuple[str, ...] = (
    "email",
    "call_task",
    "crm",
    "assign",
    "wait",
    "wait_for",
    "approval",
    "switch",
    "parallel",
    "split",
    "for_each",
    "set",
    "run_playbook",
    "stop",
)
COMMON_STEP_KEYS: tuple[str, ...] = ("id", "name", "when", "retry", "timeout", "on_error")

DURATION_PATTERN = (
    r"^(.*\{\{.*\}\}.*|[0-9]+(s|m|h|d|w|bd)"
    r"|P(?=[0-9T])([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?(T(?=[0-9])([0-9]+H)?([0-9]+M)?([0-9]+S)?)?)$"
)
APPROVER_PATTERN = r"^(owner|role:[a-z0-9_-]+|user:[A-Za-z0-9_.@-]+)$"
STEP_ID_PATTERN = r"^[a-z][a-z0-9_]*$"
PLAYBOOK_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
CATEGORY_PATTERN = r"^[a-z][a-z0-9_-]*$"
WINDOW_PATTERN = r"^[0-9]+(m|h|d|w)$"
CATEGORY_MESSAGE = "a category is a lowercase name: letters, digits, _ or -, starting with a letter"
WINDOW_MESSAGE = "a window is a fixed duration in minutes, hours, days or weeks, like 30m, 12h, 1d or 2w"
STEP_ID_MESSAGE = "a step id is snake_case: lowercase letters, digits and _, starting with a letter"
PLAYBOOK_ID_MESSAGE = "a playbook id is kebab-case: lowercase letters and digits joined by single dashes"
EVENT_TYPE_MESSAGE = "an event type is a dotted lowercase name like account.signed_up"
NAME_MESSAGE = "a name is a letter or _ followed by letters, digits or _"
CONTROL_PATTERN = r"^\s*(50(\.0+)?|[1-4]?[0-9](\.[0-9]+)?)\s*%$"
CONTROL_MESSAGE = "control is a percentage from 0% to 50%, like 10%"


def _s(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _ref(name: str, description: str) -> dict[str, Any]:
    # Validators ignore a $ref's siblings in draft-07, but yaml-language-server shows this description on
    # hover (an allOf wrapper would make it show the definition's generic text instead).
    return {"description": description, "$ref": f"#/definitions/{name}"}


def _duration(description: str) -> dict[str, Any]:
    return _ref("duration", description)


def _expression(description: str) -> dict[str, Any]:
    return _ref("expression", description)


def _obj(
    description: str, properties: dict[str, Any], required: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    schema.update(extra)
    return schema


def _steps(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description, "minItems": 1, "items": {"$ref": "#/definitions/step"}}


def _approvers(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "anyOf": [
            {"$ref": "#/definitions/approver"},
            {"type": "array", "minItems": 1, "items": {"$ref": "#/definitions/approver"}},
        ],
    }


def _kind_specs() -> dict[str, dict[str, Any]]:
    """The schema of the value under each kind key."""
    approval_settings = {
        "approvers": _approvers(
            "Who may decide: owner (the account's CSM), role:<name> or user:<id>; a list means any of them."
        ),
        "message": _s("What the approver is asked; a template."),
        "timeout": _duration("How long to wait for the decision."),
        "on_timeout": _ref("on_timeout", "What a timeout means: reject (default), approve, or escalate:<approver>."),
    }
    email_address = {
        "description": "One address or a list of addresses; templates.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    }
    wait_description = "Pauses the run: a duration (14d), {until: <datetime>, offset: -2d}, or {business_days: 3}."
    return {
        "email": _obj(
            "Sends one email. Result: message_id, status (sent, suppressed, rejected, capped), left_out.",
            {
                "to": {**email_address, "description": "Recipient address(es); templates, e.g. {{ contact.email }}."},
                "subject": _s("Subject line; a template."),
                "body": _s("Plain-text body; a template."),
                "cc": {**email_address, "description": "Copy recipients; templates."},
                "bcc": {**email_address, "description": "Blind-copy recipients; templates."},
                "from": _s("Sender address; default: the account owner's address, else the configured sender."),
                "reply_to": _s("Reply-to address; a template."),
                "template_id": _s("A template stored at the email provider, used instead of subject and body."),
                "data": {"type": "object", "description": "Values passed to the provider template; templates."},
                "category": _s(
                    "The message category, declared in the library's policy.yaml (default: its default_category): "
                    "decides consent, the unsubscribe link and the frequency caps.",
                    pattern=CATEGORY_PATTERN,
                    errorMessage=CATEGORY_MESSAGE,
                ),
                "approval": _obj(
                    "Save the email as a draft that an approver may edit (subject, body) and must approve before it "
                    "goes out.",
                    approval_settings,
                    ["approvers"],
                ),
            },
            ["to"],
            **{
                "if": {"required": ["template_id"]},
                "else": {"required": ["subject", "body"]},
            },
        ),
        "call_task": _obj(
            "Creates a task for a person (a call, a meeting). Result: task_id, outcome.",
            {
                "assignee": _s(
                    "owner, role:<name> (its least-loaded member), user:<id>, or a template giving a CSM id. "
                    "Default: owner."
                ),
                "title": _s("What to do; a template."),
                "notes": _s("Details for the assignee; a template."),
                "due": _duration("When the task is due, from its creation, e.g. 2bd (two business days)."),
                "outcomes": {
                    "type": "array",
                    "description": "The outcomes the assignee picks from, e.g. [done, no_answer, declined].",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {
                        "type": "string",
                        "pattern": STEP_ID_PATTERN,
                        "errorMessage": "an outcome is snake_case, like no_answer",
                    },
                },
                "wait": {
                    "type": "boolean", "default": False, "description": "Wait for the assignee to record an outcome."
                },
                "timeout": _duration("With wait: how long to wait for the outcome; then the outcome is timed_out."),
            },
            ["title"],
        ),
        "crm": {
            "type": "object",
            "description": (
                "Changes or reads the account in the CRM: exactly one of update, note, tag, lookup. Result: account."
            ),
            "properties": {
                "update": {
                    "type": "object",
                    "minProperties": 1,
                    "description": "Fields to set on the account; values may be templates.",
                },
                "note": _s("A note to add to the account's timeline; a template."),
                "tag": _s("A tag to add to the account; a template."),
                "lookup": _obj("Refresh `account` from the CRM.", {}),
            },
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
        "assign": _obj(
            "Sets account.owner to a CSM. Result: owner (the CSM's id).",
            {
                "by": {
                    "type": "string",
                    "enum": ["language", "round_robin", "least_loaded", "owner"],
                    "description": "language: a CSM who speaks the account's language (least loaded first); "
                    "round_robin; least_loaded; owner: keep the current owner, assign only when there is none.",
                },
                "team": _s("Only CSMs of this team (role)."),
                "fallback": _s("The CSM id to use when nobody matches."),
            },
            ["by"],
        ),
        "wait": {
            "description": wait_description,
            "type": ["string", "object"],
            "if": {"type": "object"},
            "then": _obj(
                "Wait until a moment, or for business days.",
                {
                    "until": _s("A datetime template, e.g. {{ account.renewal_date }}."),
                    "offset": {
                        "type": "string",
                        "description": "Shift from `until`, e.g. -2d or -90d.",
                        "pattern": r"^-?[0-9]+(s|m|h|d|w|bd)$",
                        "errorMessage": "an offset is a signed duration like -2d or 1h",
                    },
                    "business_days": {
                        "description": "Monday to Friday days in the account timezone; a number or a template.",
                        "type": ["integer", "string"],
                        "minimum": 0,
                    },
                },
            ),
            # the description again: an editor shows the matching branch's text on hover
            "else": {"$ref": "#/definitions/duration", "description": wait_description},
        },
        "wait_for": _obj(
            "Waits for an event for this account. Result: event (or null), timed_out.",
            {
                "event": _s(
                    "The event type, e.g. survey.answered.", pattern=EVENT_TYPE_PATTERN, errorMessage=EVENT_TYPE_MESSAGE
                ),
                "match": _expression("An expression over `event`; only matching events count."),
                "timeout": _duration("How long to wait; then timed_out is true."),
            },
            ["event"],
        ),
        "approval": _obj(
            "Asks a person to approve. Result: decision (approved, rejected, timed_out), by, comment.",
            approval_settings,
            ["approvers"],
        ),
        "switch": {
            "type": "array",
            "description": (
                "Cases tried in order; the first whose `when` is true runs. An `else` item may end it. Result: case."
            ),
            "minItems": 1,
            "items": {
                "type": "object",
                "description": "A case: {when, steps} or {else: [steps]}.",
                "properties": {
                    "when": _expression("The condition of this case."),
                    "steps": _steps("The steps run when this case is chosen."),
                    "else": _steps("The steps run when no case is true."),
                },
                "if": {"required": ["else"]},
                "then": {"properties": {"else": True}, "additionalProperties": False},
                "else": {
                    "required": ["when", "steps"],
                    "properties": {"when": True, "steps": True},
                    "additionalProperties": False,
                },
            },
        },
        "parallel": {
            "type": "array",
            "description": "Branches run side by side; the step ends when all do.",
            "minItems": 1,
            "items": _obj(
                "A branch.",
                {"name": _s("A label for the branch."), "steps": _steps("The steps of this branch.")},
                ["steps"],
            ),
        },
        "split": _obj(
            "Sends each account down one of weighted paths, chosen by a stable hash of the key: the same key always "
            "takes the same path. Result: path (the name of the path taken).",
            {
                "key": _s(
                    "What decides the path; a template (default: the run's enrollment key, `enrollment.key`)."
                ),
                "paths": {
                    "type": "array",
                    "description": "The paths, at least two; each account takes one.",
                    "minItems": 2,
                    "items": _obj(
                        "A path: its name, its weight and its steps.",
                        {
                            "name": _s(
                                "The path's name, unique in the split; the step's result says it.",
                                pattern=STEP_ID_PATTERN,
                                errorMessage="a path name is snake_case: lowercase letters, digits and _, "
                                "starting with a letter",
                            ),
                            "weight": {
                                "type": "integer",
                                "minimum": 1,
                                "description": "A positive whole number: the path's share is its weight over the "
                                "sum of the weights (50 and 50: half each).",
                            },
                            "steps": _steps("The steps run on this path."),
                        },
                        ["name", "weight", "steps"],
                    ),
                },
            },
            ["paths"],
        ),
        "for_each": _obj(
            "Runs steps once per item. Result: count, failed.",
            {
                "items": _expression("An expression giving a list, e.g. contacts."),
                "as": _s(
                    "The name of the item inside the steps (default: item).",
                    pattern=NAME_PATTERN,
                    errorMessage=NAME_MESSAGE,
                    default="item",
                ),
                "concurrency": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "default": 10,
                    "description": "How many items may be doing an effect (an email, a task, a CRM change) at once; "
                    "items that wait take no slot.",
                },
                "steps": _steps("The steps run for each item."),
            },
            ["items", "steps"],
        ),
        "set": {
            "type": "object",
            "description": "Sets variables in `vars`; values may be templates.",
            "minProperties": 1,
            "propertyNames": {"pattern": NAME_PATTERN, "errorMessage": NAME_MESSAGE},
        },
        "run_playbook": _obj(
            "Starts another playbook for the same account. Result: run_id, outcome.",
            {
                "id": _s(
                    "The id of the playbook to start.", pattern=PLAYBOOK_ID_PATTERN, errorMessage=PLAYBOOK_ID_MESSAGE
                ),
                "input": {"type": "object", "description": "Values given to the child run as its vars; templates."},
                "wait": {"type": "boolean", "default": False, "description": "Wait for the child run to end."},
            },
            ["id"],
        ),
        "stop": _obj(
            "Ends the run.",
            {
                "outcome": {
                    "type": "string",
                    "enum": ["completed", "exited"],
                    "default": "completed",
                    "description": "How the run ends.",
                },
                "reason": _s("Why; shown in the timeline. A template."),
            },
        ),
    }


def _common_step_properties() -> dict[str, Any]:
    return {
        "id": _s(
            "snake_case, unique in the playbook; refer to the result as steps.<id>.",
            pattern=STEP_ID_PATTERN,
            errorMessage=STEP_ID_MESSAGE,
        ),
        "name": _s("A human label for timelines and the UI."),
        "when": _expression("The step runs only when this is true; otherwise its status is skipped."),
        "retry": _obj(
            "Retry policy of the step's activity.",
            {
                "max_attempts": {
                    "type": "integer", "minimum": 1, "default": 5, "description": "Attempts in all, the first included."
                },
                "initial_interval": _duration("Wait before the first retry."),
                "backoff": {
                    "type": "number",
                    "minimum": 1,
                    "default": 2.0,
                    "description": "Multiplier of the interval after each retry.",
                },
                "maximum_interval": _duration("The longest wait between retries."),
            },
        ),
        "timeout": _duration("The longest the step may take (for waiting steps: how long to wait)."),
        "on_error": {
            "type": "string",
            "enum": ["fail", "continue"],
            "default": "fail",
            "description": "On failure: fail the run, or continue with the next step.",
        },
    }


def _step_schema(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    common = _common_step_properties()
    all_of = []
    for kind in STEP_KINDS:
        properties = {**common, kind: kinds[kind]}
        all_of.append({"if": {"required": [kind]}, "then": {"properties": properties, "additionalProperties": False}})
    # A step with no kind key at all: editors show this required "key" as the hint.
    all_of.append(
        {
            "if": {"not": {"anyOf": [{"required": [k]} for k in STEP_KINDS]}},
            "then": {"required": [" | ".join(STEP_KINDS)]},
        }
    )
    return {
        "type": "object",
        "description": "A step: exactly one kind key (" + ", ".join(STEP_KINDS) + ") and any of the common keys.",
        # Listed here too so editors offer every key when completing an empty step.
        "properties": {**common, **kinds},
        "allOf": all_of,
    }


def _definitions() -> dict[str, Any]:
    kinds = _kind_specs()
    return {
        "duration": {
            "type": "string",
            "description": "30s, 15m, 2h, 14d, 2w, 3bd (business days), ISO 8601 (P14D), or a template giving one.",
            "pattern": DURATION_PATTERN,
            "errorMessage": "a duration is like 30s, 15m, 2h, 14d, 2w, 3bd or P14D",
        },
        "expression": {
            "description": "A Jinja expression without {{ }}, e.g. account.plan == \"pro\".",
            "type": ["string", "boolean"],
        },
        "approver": {
            "type": "string",
            "description": "owner, role:<name> or user:<id>.",
            "pattern": APPROVER_PATTERN,
            "errorMessage": "an approver is owner, role:<name> or user:<id>",
        },
        "on_timeout": {
            "type": "string",
            "description": "reject (default), approve, or escalate:<approver>.",
            "pattern": r"^(reject|approve|escalate:(owner|role:[a-z0-9_-]+|user:[A-Za-z0-9_.@-]+))$",
            "errorMessage": "on_timeout is reject, approve or escalate:<approver>",
            "default": "reject",
        },
        "step": _step_schema(kinds),
    }


def playbook_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": "https://playbooks.example/schemas/playbook.schema.json",
        "title": "Customer-success playbook",
        "description": "A customer-success play, run as a durable workflow. See docs/playbook-language.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "steps"],
        "properties": {
            "id": _s(
                "kebab-case, unique in the library; runs are keyed by it.",
                pattern=PLAYBOOK_ID_PATTERN,
                errorMessage=PLAYBOOK_ID_MESSAGE,
            ),
            "title": _s("A human title for lists and the UI."),
            "description": _s("What the play is for."),
            "trigger": _obj(
                "What starts a run: exactly one of event, schedule or manual. "
                "Every playbook can also be started by hand.",
                {
                    "event": _s(
                        "An event type, e.g. account.signed_up.",
                        pattern=EVENT_TYPE_PATTERN,
                        errorMessage=EVENT_TYPE_MESSAGE,
                    ),
                    "when": _expression(
                        "With event: an expression over `event` and `account`; no run starts when false."
                    ),
                    "schedule": _obj(
                        "Start one run per matching account at each tick.",
                        {
                            "cron": _s("A five-field cron expression, e.g. \"0 9 1 1,4,7,10 *\"."),
                            "accounts": _expression(
                                "An expression over `account` choosing the segment; default: every account."
                            ),
                            "timezone": _s("The timezone of the cron expression; default UTC."),
                        },
                        ["cron"],
                    ),
                    "manual": {"type": "boolean", "const": True, "description": "Started from the CLI or API only."},
                },
                minProperties=1,
            ),
            "enrollment": _obj(
                "Who may have a run at once.",
                {
                    "key": _s("At most one live run per key; a template (default: {{ account.id }})."),
                    "reenroll": {
                        "type": "string",
                        "enum": ["never", "after_exit", "always"],
                        "default": "never",
                        "description": "never: one run per key ever; after_exit: again once the previous run ended; "
                        "always: every trigger.",
                    },
                },
            ),
            "exit_when": {
                "type": "array",
                "description": "Any of these events ends a live run early.",
                "items": _obj(
                    "An event that ends the run.",
                    {
                        "event": _s("The event type.", pattern=EVENT_TYPE_PATTERN, errorMessage=EVENT_TYPE_MESSAGE),
                        "match": _expression("Only events for which this expression is true."),
                        "goal": {
                            "type": "boolean",
                            "default": False,
                            "description": "The run counts as converted (outcome goal).",
                        },
                    },
                    ["event"],
                ),
            },
            "settings": _obj(
                "Run settings.",
                {
                    "timezone": _s(
                        "IANA timezone used by waits, business days and quiet hours; a template. Default UTC."
                    ),
                    "quiet_hours": _s(
                        "HH:MM-HH:MM; emails due in this window go out when it ends.",
                        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$",
                        errorMessage="quiet_hours is HH:MM-HH:MM, e.g. 20:00-08:00",
                    ),
                    "control": {
                        "type": ["string", "number"],
                        "description": "A control group: this share of enrolled accounts (0% to 50%, e.g. 10%) is "
                        "held out, chosen by a stable hash of the enrollment key. Their runs go through the steps "
                        "with every email, call_task, crm, assign, approval and run_playbook skipped (reason "
                        "control), so their goals can be compared with the treated accounts'.",
                        "pattern": CONTROL_PATTERN,
                        "errorMessage": CONTROL_MESSAGE,
                        "minimum": 0,
                        "maximum": 50,
                    },
                },
            ),
            "vars": {
                "type": "object",
                "description": "Variables of the run, available as vars.<name>; strings may be templates.",
                "propertyNames": {"pattern": NAME_PATTERN, "errorMessage": NAME_MESSAGE},
            },
            "steps": _steps("The steps, run in order."),
        },
        "definitions": _definitions(),
    }


def _policy_properties() -> dict[str, Any]:
    window = {"type": "string", "pattern": WINDOW_PATTERN, "errorMessage": WINDOW_MESSAGE}
    category_name = {"type": "string", "pattern": CATEGORY_PATTERN, "errorMessage": CATEGORY_MESSAGE}
    return {
        "default_category": _s(
            "The category of email steps that name none; one of `categories`.",
            pattern=CATEGORY_PATTERN,
            errorMessage=CATEGORY_MESSAGE,
        ),
        "categories": {
            "type": "object",
            "description": "The message categories, by name, e.g. transactional, onboarding, marketing.",
            "minProperties": 1,
            "propertyNames": {"pattern": CATEGORY_PATTERN, "errorMessage": CATEGORY_MESSAGE},
            "additionalProperties": _obj(
                "A category; {} takes the defaults (recipients may opt out, caps apply).",
                {
                    "unsubscribe": {
                        "type": "boolean",
                        "default": True,
                        "description": "Recipients may opt out: consent is checked, and every email carries an "
                        "unsubscribe link and one-click List-Unsubscribe headers. false: receipts, password resets.",
                    },
                    "capped": {
                        "type": "boolean",
                        "default": True,
                        "description": "The frequency caps count and limit this category. false: never capped.",
                    },
                    "sendgrid_group": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The SendGrid suppression group (ASM group id) of this category.",
                    },
                },
            ),
        },
        "caps": {
            "type": "array",
            "description": "Frequency caps: at most `max` emails to one recipient in any rolling window of `per`, "
            "across every playbook; only emails that went out count.",
            "items": _obj(
                "A cap.",
                {
                    "channel": {
                        "type": "string", "enum": ["email"], "default": "email", "description": "What it counts."
                    },
                    "categories": {
                        "type": "array",
                        "description": "The categories it counts and limits (default: every capped category).",
                        "minItems": 1,
                        "uniqueItems": True,
                        "items": category_name,
                    },
                    "max": {"type": "integer", "minimum": 1, "description": "How many emails per window."},
                    "per": {**window, "description": "The rolling window, e.g. 1d or 7d."},
                },
                ["max", "per"],
            ),
        },
        "when_capped": {
            "type": "string",
            "enum": ["skip", "defer"],
            "default": "skip",
            "description": "A capped email: skip it (status capped), or defer it until the caps allow "
            "(at most max_delay; then skip).",
        },
        "max_delay": {**window, "description": "With defer: the longest an email waits for the caps (default 3d)."},
    }


def policy_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": "https://playbooks.example/schemas/policy.schema.json",
        "title": "Messaging policy",
        "description": "A library's email categories and frequency caps (policy.yaml at the library's root). "
        "See docs/playbook-language.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["default_category", "categories"],
        "properties": _policy_properties(),
    }


STEP_STATUSES = ("done", "skipped", "not_run", "failed")
EMAIL_STATUSES = ("sent", "capped", "suppressed", "rejected")
SCRIPT_FORMS = ("event", "call_task", "approval", "unsubscribe", "bounce")


def _script_item() -> dict[str, Any]:
    after = _ref("duration", "How long after the step asks (default: at once).")
    return {
        "type": "object",
        "description": "How people and the product react: {at, event}, {call_task, outcome, after}, "
        "{approval, decide, edit, by, after}, {at, unsubscribe, category} or {at, bounce}.",
        "properties": {
            "at": _ref("duration", "Offset from the start, e.g. 20d."),
            "event": {"$ref": "#/definitions/event"},
            "call_task": _s("The call_task step to answer.", pattern=STEP_ID_PATTERN, errorMessage=STEP_ID_MESSAGE),
            "outcome": _s("The outcome recorded."),
            "approval": _s(
                "The approval (or email with approval) step to decide.",
                pattern=STEP_ID_PATTERN,
                errorMessage=STEP_ID_MESSAGE,
            ),
            "decide": {"type": "string", "enum": ["approve", "reject"], "description": "The decision."},
            "edit": _obj("Edits of the draft email.", {"subject": _s("New subject."), "body": _s("New body.")}),
            "by": _s("Who decides (a team member id); default the first allowed approver."),
            "comment": _s("The approver's comment."),
            "after": after,
            "unsubscribe": _s(
                "An address that unsubscribes at `at`, as the one-click link would (from `category`, or from every "
                "category that allows opting out)."
            ),
            "category": _s(
                "With unsubscribe: the category to opt out of.", pattern=CATEGORY_PATTERN, errorMessage=CATEGORY_MESSAGE
            ),
            "bounce": _s("An address the provider reports as bounced at `at`: it is suppressed from then on."),
        },
        "allOf": [
            {
                "if": {"required": ["event"]},
                "then": {"required": ["at"], "properties": {"at": True, "event": True}, "additionalProperties": False},
            },
            {
                "if": {"required": ["call_task"]},
                "then": {
                    "required": ["outcome"],
                    "properties": {"call_task": True, "outcome": True, "after": True},
                    "additionalProperties": False,
                },
            },
            {
                "if": {"required": ["approval"]},
                "then": {
                    "required": ["decide"],
                    "properties": {k: True for k in ("approval", "decide", "edit", "by", "comment", "after")},
                    "additionalProperties": False,
                },
            },
            {
                "if": {"required": ["unsubscribe"]},
                "then": {
                    "required": ["at"],
                    "properties": {"at": True, "unsubscribe": True, "category": True},
                    "additionalProperties": False,
                },
            },
            {
                "if": {"required": ["bounce"]},
                "then": {"required": ["at"], "properties": {"at": True, "bounce": True}, "additionalProperties": False},
            },
            {
                "if": {"not": {"anyOf": [{"required": [k]} for k in SCRIPT_FORMS]}},
                "then": {"required": [" | ".join(SCRIPT_FORMS)]},
            },
        ],
    }


def _expect_item() -> dict[str, Any]:
    def offset(description: str) -> dict[str, Any]:
        return _ref("duration", description)

    forms: dict[str, dict[str, Any]] = {
        "step": {
            "step": _s("A step id.", pattern=STEP_ID_PATTERN, errorMessage=STEP_ID_MESSAGE),
            "status": {"type": "string", "enum": list(STEP_STATUSES), "description": "The step's status."},
            "result": {"type": "object", "description": "Fields the step's result must have (a subset)."},
        },
        "email": {
            "email": _s(
                "An email step id: it sent exactly one email; with status, its email (to `to`, if given) ended so.",
                pattern=STEP_ID_PATTERN,
                errorMessage=STEP_ID_MESSAGE,
            ),
            "status": {
                "type": "string",
                "enum": list(EMAIL_STATUSES),
                "description": "How the email ended: sent, capped (a frequency cap held it back), suppressed "
                "(unsubscribed or on the suppression list) or rejected.",
            },
            "to": _s("The recipient."),
            "subject_contains": _s("Text the subject contains."),
            "body_contains": _s("Text the body contains (the body as sent, after any edits)."),
            "after": offset("Sent at or after this offset from the start."),
            "within": offset("Sent at or before this offset from the start."),
        },
        "call_task": {
            "call_task": _s(
                "A call_task step id: it created a task.", pattern=STEP_ID_PATTERN, errorMessage=STEP_ID_MESSAGE
            ),
            "assignee": _s("The CSM id the task went to."),
            "after": offset("Created at or after this offset from the start."),
            "within": offset("Created at or before this offset from the start."),
        },
        "no_email": {
            "no_email": _s("An email step id that sent nothing.", pattern=STEP_ID_PATTERN, errorMessage=STEP_ID_MESSAGE)
        },
        "account": {"account": {"type": "object", "description": "Fields the account has in the CRM at the end."}},
        "health": {
            "health": _obj(
                "The account's health score by the library's scorecards (scorecards/ beside the playbooks): without "
                "`at`, as stored at the end; with `at`, computed at that moment from what happened until then.",
                {
                    "score": {
                        "type": ["number", "null"],
                        "minimum": 0,
                        "maximum": 100,
                        "description": "The score, 0 to 100 (one decimal); null: no score (every measure skipped).",
                    },
                    "band": {"type": ["string", "null"], "description": "The band's name, e.g. red; null: no score."},
                    "scorecard": _s(
                        "The scorecard's id; needed when more than one scorecard applies to the account.",
                        pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
                        errorMessage="a scorecard id is kebab-case: lowercase letters and digits joined by dashes",
                    ),
                },
            ),
            "at": offset("The moment, an offset from the start (default: the end of the scenario)."),
        },
        "outcome": {
            "outcome": {
                "type": "string",
                "enum": ["completed", "exited", "goal", "failed", "not_started"],
                "description": "How the run ended.",
            }
        },        "control": {
            "control": {
                "type": "boolean",
                "description": "Whether the run was in the playbook's control group (settings.control): true, every "
                "effect was skipped; false, it was treated.",
            }
        },
    }
    # `status` means a step's status or an email's: each form checks its own, the merged one lists both for editors
    shared = {"status"}
    all_of = []
    for key, props in forms.items():
        then = {"properties": {k: props[k] if k in shared else True for k in props}, "additionalProperties": False}
        all_of.append({"if": {"required": [key]}, "then": then})
    none_of_them = {"not": {"anyOf": [{"required": [k]} for k in forms]}}
    all_of.append({"if": none_of_them, "then": {"required": [" | ".join(forms)]}})
    merged: dict[str, Any] = {}
    for props in forms.values():
        merged.update(props)
    merged["status"] = {
        "type": "string",
        "enum": [*STEP_STATUSES, *EMAIL_STATUSES],
        "description": "With step: the step's status (done, skipped, not_run, failed); with email: how its email "
        "ended (sent, capped, suppressed, rejected).",
    }
    return {
        "type": "object",
        "description": "An expectation: {step, status, result}, {email, ...}, {call_task, ...}, {no_email}, {account}, "
        "{health, at}, {outcome} or {control}.",
        "properties": merged,
        "allOf": all_of,
    }


def scenario_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": "https://playbooks.example/schemas/scenario.schema.json",
        "title": "Playbook scenario",
        "description": (
            "Plays the world around one run of a playbook on a simulated clock. See docs/playbook-language.md."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["playbook", "account"],
        "properties": {
            "name": _s("What this scenario shows."),
            "playbook": _s("A playbook id in the library, or a path to a playbook file relative to this file."),
            "start": _obj(
                "How the run begins.",
                {
                    "at": _s("Simulated start, an ISO 8601 datetime (default: a Monday 09:00 UTC)."),
                    "event": {"$ref": "#/definitions/event"},
                    "manual": {"type": "boolean", "description": "Start by hand."},
                    "events": {
                        "type": "array",
                        "minItems": 1,
                        "description": "Events the product posts before the run exists, each through the intake (and "
                        "the library's scorecards): the run starts on the first event its trigger accepts, posted "
                        "here or emitted by a score change (health.score_changed); none: not_started.",
                        "items": _obj(
                            "An event posted at an offset from start.at.",
                            {
                                "at": _ref("duration", "Offset from the start, e.g. 2h."),
                                "event": {"$ref": "#/definitions/event"},
                            },
                            ["at", "event"],
                        ),
                    },
                },
            ),
            "account": {
                "type": "object",
                "description": "The account in the built-in CRM; owner names a team member by id.",
                "required": ["id"],
                "properties": {"id": _s("The account id."), "owner": _s("A team member id.")},
            },
            "contacts": {
                "type": "array",
                "description": "The account's contacts; the first is the primary one.",
                "items": {"type": "object", "description": "A contact: email, first_name, and any fields."},
            },
            "team": {
                "type": "array",
                "description": "The CSMs the engine may assign.",
                "items": _obj(
                    "A CSM.",
                    {
                        "id": _s("The CSM id."),
                        "name": _s("The CSM's name."),
                        "email": _s("The CSM's email address."),
                        "languages": {
                            "type": "array", "items": {"type": "string"}, "description": "Languages spoken (ISO 639-1)."
                        },
                        "role": _s("A role, e.g. lead."),
                        "capacity": {
                            "type": "integer", "minimum": 0, "description": "How many accounts the CSM can own."
                        },
                    },
                    ["id"],
                ),
            },
            "policy": _obj(
                "A messaging policy for this scenario only (the policy.yaml format): it replaces the library's, "
                "e.g. to test caps.",
                _policy_properties(),
                ["default_category", "categories"],
            ),
            "script": {"type": "array", "description": "How people and the product react.", "items": _script_item()},
            "expect": {"type": "array", "description": "What must have happened.", "items": _expect_item()},
        },
        "definitions": {
            "duration": _definitions()["duration"],
            "event": _obj(
                "An event.",
                {
                    "type": _s("The event type.", pattern=EVENT_TYPE_PATTERN, errorMessage=EVENT_TYPE_MESSAGE),
                    "data": {"type": "object", "description": "The event's data."},
                    "id": _s("The event id (default: generated)."),
                    "occurred_at": _s("When it happened (default: now on the simulated clock)."),
                },
                ["type"],
            ),
        },
    }


SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    from .scorecard_schema import scorecard_schema  # it builds on this module's patterns: imported when used

    written = []
    for name, schema in (
        ("playbook.schema.json", playbook_schema()),
        ("scenario.schema.json", scenario_schema()),
        ("policy.schema.json", policy_schema()),
        ("scorecard.schema.json", scorecard_schema()),
    ):
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_files():
        print(p)
