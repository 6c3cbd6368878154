"""What SendGrid's Event Webhook tells us, and what each event does (POST /webhooks/sendgrid).

SendGrid signs every batch with ECDSA (P-256, SHA-256 over the timestamp header and the raw body); the
public key is the sendgrid_webhook_public_key setting. It redelivers a batch it is not sure we took, so
every event is remembered by its sg_event_id and a second delivery changes nothing.

- bounce (a hard bounce; a `blocked` one is temporary and changes nothing), dropped, spamreport: the
  address goes on the suppression list (reasons bounced, dropped, spam_report);
- unsubscribe, group_unsubscribe: the recipient unsubscribes from the email's category (custom_args.category;
  for group_unsubscribe, the category whose sendgrid_group is the event's asm_group_id); without one, from
  every category that allows opting out;
- delivered, open, click: the event email.delivered, email.opened or email.clicked is delivered to the run
  that sent the email (custom_args.workflow_id), with the step and message id in its data, so a playbook can
  `wait_for: email.opened`;
- anything else (processed, deferred, group_resubscribe, ...) is taken and ignored.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from engine.interpreter.messages import Event
from engine.language.policy import Policy
from engine.storage import governance as gov
from engine.storage import models as t
from engine.storage.db import session

SIGNATURE_HEADER = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER = EventWebhookHeader.TIMESTAMP
MAX_AGE_SECONDS = 600  # an older signature is a replay (SendGrid posts at once, retries sign afresh)
MAX_AHEAD_SECONDS = 60  # clock skew allowed the other way
SOURCE = "sendgrid"

SUPPRESSING = {"bounce": "bounced", "dropped": "dropped", "spamreport": "spam_report"}
UNSUBSCRIBING = {"unsubscribe", "group_unsubscribe"}
RUN_EVENTS = {"delivered": "email.delivered", "open": "email.opened", "click": "email.clicked"}


class BadBatch(ValueError):
    """The body is not a batch of SendGrid events; the message says why."""


@functools.lru_cache(maxsize=4)
def _verifier(public_key: str) -> EventWebhook:
    """SendGrid's helper with the key read once (ValueError when it is no key)."""
    return EventWebhook(public_key)


def check_signature(public_key: str, signature: str | None, timestamp: str | None, body: bytes,
                    now: float | None = None) -> str | None:
    """None when SendGrid signed exactly this body a moment ago; else why not (one line, for a 401)."""
    if not signature or not timestamp:
        return f"a SendGrid event batch carries {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}"
    try:
        at = int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a number of seconds"
    age = (time.time() if now is None else now) - at
    if age > MAX_AGE_SECONDS or age < -MAX_AHEAD_SECONDS:
        return f"the signature timestamp is more than {MAX_AGE_SECONDS // 60} minutes away from now (a replay?)"
    try:
        text = body.decode()  # the helper signs text; a body that is no UTF-8 was not signed by SendGrid
        base64.b64decode(signature, validate=True)
        good = _verifier(public_key).verify_signature(text, signature, timestamp)
    except (UnicodeDecodeError, binascii.Error, ValueError, InvalidSignature):
        good = False
    return None if good else "the signature does not match the body"


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    try:
        events = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadBatch("the body is not JSON") from None
    if not isinstance(events, list):
        raise BadBatch("the body must be a JSON array of events")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise BadBatch(f"[{index}]: an event is a JSON object")
        if not isinstance(event.get("event"), str) or not event["event"]:
            raise BadBatch(f"[{index}].event: missing (the event type)")
        for name in ("email", "sg_event_id", "sg_message_id", "url"):
            if name in event and not isinstance(event[name], str):
                raise BadBatch(f"[{index}].{name}: must be a string")
        if "timestamp" in event and (isinstance(event["timestamp"], bool) or
                                     not isinstance(event["timestamp"], (int, float))):
            raise BadBatch(f"[{index}].timestamp: must be a number (unix seconds)")
        if "asm_group_id" in event and (isinstance(event["asm_group_id"], bool) or
                                        not isinstance(event["asm_group_id"], int)):
            raise BadBatch(f"[{index}].asm_group_id: must be an integer")
        if "custom_args" in event and not isinstance(event["custom_args"], dict):
            raise BadBatch(f"[{index}].custom_args: must be an object")
    return events


@dataclass
class RunDelivery:
    """An event for a run, and the webhook event to remember once the run has it."""

    workflow_id: str
    event: Event
    webhook_event_id: str | None


@dataclass
class Taken:
    """What a batch did: counts by effect, and the events still to deliver to runs."""

    suppressed: int = 0
    unsubscribed: int = 0
    duplicates: int = 0
    ignored: int = 0
    deliveries: list[RunDelivery] = field(default_factory=list)

    def counts(self, delivered: int) -> dict[str, int]:
        return {"suppressed": self.suppressed, "unsubscribed": self.unsubscribed, "delivered_to_runs": delivered,
                "duplicates": self.duplicates, "ignored": self.ignored}


CUSTOM_KEYS = ("workflow_id", "account_id", "step_id", "message_id", "category")


def _custom(event: dict[str, Any]) -> dict[str, str]:
    """The custom args the engine set on the email. SendGrid copies them into the event as top-level fields; a
    `custom_args` object, when there is one, is read first. A top-level `category` may be SendGrid's own list of
    categories instead: one name is taken, a longer list is not ours."""
    found = event.get("custom_args") or {}
    args: dict[str, str] = {}
    for key in CUSTOM_KEYS:
        value = found.get(key, event.get(key))
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            args[key] = str(value)
    return args


def _occurred(event: dict[str, Any]) -> datetime | None:
    stamp = event.get("timestamp")
    try:
        return datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, (int, float)) else None
    except (OverflowError, OSError, ValueError):
        return None


def _categories(event: dict[str, Any], custom: dict[str, str], policy: Policy) -> list[str]:
    if event["event"] == "group_unsubscribe" and "asm_group_id" in event:
        by_group = [c.name for c in policy.categories if c.sendgrid_group == event["asm_group_id"]]
        if by_group:
            return by_group
    if custom.get("category"):
        return [custom["category"]]
    return list(policy.opt_out_categories())


def take_batch(db_url: str, events: list[dict[str, Any]], policy: Policy, now: datetime | None = None) -> Taken:
    """The database side of a batch, in one transaction: suppressions and consent written, the events for runs
    collected (remembered only once delivered, by `remember`: a run that could not be reached gets them again
    when SendGrid redelivers)."""
    now = now or datetime.now(UTC)
    taken = Taken()
    with session(db_url) as s:
        for event in events:
            kind = event["event"]
            event_id = event.get("sg_event_id") or None
            address = gov.normalize_address(event.get("email", ""))
            custom = _custom(event)
            if kind in RUN_EVENTS:
                workflow_id = custom.get("workflow_id")
                if not workflow_id:
                    taken.ignored += 1  # not sent by a run (or sent before runs tagged their emails)
                elif event_id and s.get(t.WebhookEvent, event_id) is not None:
                    taken.duplicates += 1
                else:
                    taken.deliveries.append(RunDelivery(workflow_id, _run_event(event, custom), event_id))
                continue
            if kind not in SUPPRESSING and kind not in UNSUBSCRIBING:
                taken.ignored += 1
                continue
            if kind == "bounce" and event.get("type") == "blocked":
                taken.ignored += 1  # a soft bounce: the receiver refused for now, the address is fine
                continue
            if address is None:
                taken.ignored += 1
                continue
            if event_id and not gov.remember_webhook_event(s, event_id, now):
                taken.duplicates += 1
                continue
            if kind in SUPPRESSING:
                detail = str(event.get("reason") or event.get("type") or "")[:500]
                gov.suppress(s, address, SUPPRESSING[kind], SOURCE, _occurred(event) or now, detail)
                taken.suppressed += 1
            else:
                for category in _categories(event, custom, policy):
                    gov.set_consent(s, address, category, False, SOURCE, _occurred(event) or now)
                taken.unsubscribed += 1
    return taken


def _run_event(event: dict[str, Any], custom: dict[str, str]) -> Event:
    data: dict[str, Any] = {
        "message_id": custom.get("message_id") or event.get("sg_message_id", ""),
        "step": custom.get("step_id", ""),
    }
    if event["event"] == "click":
        data["url"] = event.get("url", "")
    occurred = _occurred(event)
    return Event(
        type=RUN_EVENTS[event["event"]],
        data=data,
        id=f"sendgrid:{event['sg_event_id']}" if event.get("sg_event_id") else None,
        occurred_at=occurred.isoformat() if occurred else None,
        account_id=custom.get("account_id"),
    )


def remember(db_url: str, deliveries: list[RunDelivery], now: datetime | None = None) -> None:
    """Remembers the webhook events of run events that were delivered (or whose run has ended)."""
    ids = [d.webhook_event_id for d in deliveries if d.webhook_event_id]
    if not ids:
        return
    with session(db_url) as s:
        for event_id in ids:
            gov.remember_webhook_event(s, event_id, now or datetime.now(UTC))
