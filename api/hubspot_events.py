"""What HubSpot's webhooks tell us, and the engine events they become (POST /webhooks/hubspot).

HubSpot signs every request with its v3 signature: base64 of HMAC-SHA256, keyed with the app's client secret
(the hubspot_webhook_secret setting), over method + URI + body + timestamp (X-HubSpot-Request-Timestamp,
milliseconds). The URI is the one HubSpot called, with the percent-encodings HubSpot's docs list decoded.
Requests older than five minutes are replays.

HubSpot posts a JSON array of up to 100 events. Those the engine understands become events of the same intake as
POST /events (engine/runtime/intake.py), so `trigger`, `wait_for` and `exit_when` use them:

- company.creation → crm.company_created, data {hubspot_id, source, occurred_at};
- company.propertyChange → crm.company_changed, data {hubspot_id, property, value, source, occurred_at}, one event
  per changed property (HubSpot sends one per property and subscription);
- the developer platform's object.creation / object.propertyChange with objectTypeId 0-2 (companies) the same.

The event's account is the company's account id: with the HubSpot CRM, the company's external-id property
(HubSpotCrm.account_ids_for, one batch read for the whole request); with the built-in CRM, HubSpot's objectId
itself. A company without an account id is skipped. Contact and other objects' events are taken and ignored:
a contact names no account until its company association is read, which this endpoint does not do.

HubSpot redelivers a request it is not sure we took (up to 10 times over 24 hours): each event's engine id is
derived from HubSpot's identity of it, so a redelivered event changes nothing and is counted as a duplicate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from engine.interpreter.messages import Event
from engine.runtime.intake import CrmUnavailable, EventAnswer

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
MAX_AGE_MS = 5 * 60 * 1000  # HubSpot's docs: reject a timestamp older than five minutes (each retry signs afresh)
MAX_AHEAD_MS = 60 * 1000  # clock skew allowed the other way
MAX_EVENT_ID = 200  # the length of an event id the intake keeps (received_events.id)

# HubSpot's docs: in the URI, these percent-encodings are decoded before signing (and no others)
_DECODED = {"3A": ":", "2F": "/", "3F": "?", "40": "@", "21": "!", "24": "$", "27": "'", "28": "(", "29": ")",
            "2A": "*", "2C": ",", "3B": ";"}
_ENCODED = re.compile("%(" + "|".join(_DECODED) + ")", re.IGNORECASE)

# HubSpot's object type ids, as the developer platform's generic object.* subscriptions name them
OBJECT_TYPES = {"0-1": "contact", "0-2": "company"}
EVENT_TYPES = {
    ("company", "creation"): "crm.company_created",
    ("company", "propertyChange"): "crm.company_changed",
}


class BadBatch(ValueError):
    """The body is not a batch of HubSpot events; the message says why."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


# --------------------------------------------------------------------------------------------- the signature


def signed_uri(public_url: str | None, path: str, query: str, own_url: str) -> str:
    """The URI HubSpot signed: behind a proxy, public_url (where the world reaches the API) + path + query; without
    public_url, the request's own URL. The percent-encodings HubSpot's docs list are decoded, as HubSpot does."""
    uri = (public_url.rstrip("/") + path + (f"?{query}" if query else "")) if public_url else own_url
    return _ENCODED.sub(lambda m: _DECODED[m[1].upper()], uri)


def signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """HubSpot's v3 signature of a request."""
    source = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), source, hashlib.sha256).digest()).decode()


def check_signature(secret: str, method: str, uri: str, body: bytes, given: str | None, timestamp: str | None,
                    now_ms: int | None = None) -> str | None:
    """None when HubSpot signed exactly this request a moment ago; else why not (one line, for a 401)."""
    if not given or not timestamp:
        return f"a HubSpot webhook request carries {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}"
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 16):  # int() of 5,000 digits raises
        return f"{TIMESTAMP_HEADER} is not a number of milliseconds"
    age = (int(time.time() * 1000) if now_ms is None else now_ms) - int(timestamp)
    if age > MAX_AGE_MS:
        return f"the request was signed more than {MAX_AGE_MS // 60_000} minutes ago (a replay?)"
    if age < -MAX_AHEAD_MS:
        return f"the request's timestamp is more than {MAX_AHEAD_MS // 1000} seconds in the future"
    expected = signature(secret, method, uri, body, timestamp)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return (f"the signature does not match this request (signed: {SIGNATURE_HEADER} over method, URI, body and "
                "timestamp with the app's client secret; behind a proxy, PLAYBOOK_PUBLIC_URL must be the address "
                "HubSpot calls)")
    return None


# ---------------------------------------------------------------------------------------------- the body


def _as_text(value: Any) -> Any:
    """HubSpot sends property values as text, and a cleared one as empty text: that is None here (one way to say
    "no value" for playbooks to test). A number or boolean is taken as the text HubSpot would send."""
    if value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


class HubSpotEvent(BaseModel):
    """One event as HubSpot posts it (camelCase on the wire). Fields HubSpot adds later are ignored, and so is the
    shape of events the engine does not take (an associationChange has fromObjectId and toObjectId, no objectId):
    one subscription the engine ignores must not make HubSpot's whole request a 400 it retries for a day."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    event_id: int = Field(description="HubSpot's id of the event")
    subscription_type: str = Field(min_length=1, description="company.creation, company.propertyChange, ...")
    object_id: int | None = Field(default=None, description="The HubSpot id of the record (company.*: the company)")
    portal_id: int | None = Field(default=None, description="The HubSpot account the event is from")
    subscription_id: int | None = None
    app_id: int | None = None
    occurred_at: int | None = Field(default=None, description="When it happened, milliseconds since 1970")
    attempt_number: int | None = None
    object_type_id: str | None = Field(default=None, description="object.* subscriptions: 0-2 companies, 0-1 contacts")
    property_name: str | None = None
    property_value: Annotated[str | None, BeforeValidator(_as_text)] = None
    change_source: str | None = None


_BATCH = TypeAdapter(list[HubSpotEvent])


def parse_batch(body: bytes) -> list[HubSpotEvent]:
    try:
        events = _BATCH.validate_json(body)
    except ValidationError as err:
        errors = []
        for e in err.errors(include_input=False, include_url=False):  # no values: they may be personal data
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
            errors.append({"location": loc or "body", "message": e["msg"]})
        if any(e["type"] == "json_invalid" for e in err.errors(include_input=False, include_url=False)):
            raise BadBatch("the body is not JSON", errors) from None
        if any(e["type"] == "list_type" and not e["loc"] for e in err.errors(include_input=False, include_url=False)):
            raise BadBatch("the body must be a JSON array of HubSpot events", errors) from None
        raise BadBatch("; ".join(f"{e['location']}: {e['message']}" for e in errors), errors) from None
    missing = [{"location": f"[{i}].objectId", "message": f"Field required for {e.subscription_type}"}
               for i, e in enumerate(events) if e.object_id is None and engine_type(e) is not None]
    if missing:
        raise BadBatch("; ".join(f"{e['location']}: {e['message']}" for e in missing), missing)
    return events


def kind_of(event: HubSpotEvent) -> tuple[str, str]:
    """(object, change): ("company", "propertyChange") for company.propertyChange and for an object.propertyChange
    of objectTypeId 0-2."""
    object_type, _, change = event.subscription_type.partition(".")
    if object_type == "object":
        object_type = OBJECT_TYPES.get(event.object_type_id or "", event.object_type_id or "object")
    return object_type, change


def engine_type(event: HubSpotEvent) -> str | None:
    """The engine event type it becomes; None for events the engine does not take."""
    return EVENT_TYPES.get(kind_of(event))


def engine_event_id(event: HubSpotEvent) -> str:
    """The engine's id of the event: the same for every delivery of it. HubSpot does not promise that eventId alone
    is unique, so the portal, subscription, record and property are part of it."""
    parts = [event.portal_id, event.subscription_id, event.event_id, event.object_id, event.property_name]
    text = "hubspot:" + ":".join("" if p is None else str(p) for p in parts)
    if len(text) > MAX_EVENT_ID:
        text = "hubspot:sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def _iso(ms: int | None) -> str | None:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms is not None else None
    except (OverflowError, OSError, ValueError):
        return None


def to_event(event: HubSpotEvent, account_id: str) -> Event:
    """The engine event of a HubSpot event the engine takes (engine_type is not None)."""
    kind = engine_type(event)
    assert kind is not None, event.subscription_type
    occurred = _iso(event.occurred_at)
    data: dict[str, Any] = {"hubspot_id": str(event.object_id), "source": event.change_source,
                            "occurred_at": occurred}
    if kind == "crm.company_changed":
        data["property"] = event.property_name
        data["value"] = event.property_value  # HubSpot's text; the typed value is account.<property>
    return Event(type=kind, data=data, id=engine_event_id(event), occurred_at=occurred, account_id=account_id)


# ------------------------------------------------------------------------------------------- the accounts


@runtime_checkable
class MapsCompanies(Protocol):
    """A CRM whose company ids are not the engine's account ids (HubSpot): it reads the account ids of many
    companies at once, leaving out those that have none."""

    def account_ids_for(self, company_ids: Sequence[str]) -> dict[str, str]: ...


def account_ids(crm: object, company_ids: Sequence[str]) -> dict[str, str]:
    """HubSpot company id → the engine's account id. With a CRM that maps them (HubSpot), one batch read; with the
    built-in CRM, HubSpot's objectId is the account id. Raises CrmUnavailable when the CRM fails (as the intake
    does), so the request is a 503 HubSpot sends again."""
    wanted = list(dict.fromkeys(company_ids))
    if not wanted:
        return {}
    if not isinstance(crm, MapsCompanies):
        return {i: i for i in wanted}
    try:
        return dict(crm.account_ids_for(wanted))
    except Exception as err:
        if not _provider_failure(err):
            raise
        message = getattr(err, "message", str(err))
        raise CrmUnavailable(f"the CRM ({getattr(crm, 'name', 'crm')}) failed reading the companies' account ids: "
                             f"{message}", getattr(err, "retry_after", None)) from err


def _provider_failure(err: Exception) -> bool:
    """Whether err is the CRM's ProviderError (activities/errors.py, which the api does not import: the layering of
    tests/test_architecture.py), known by the fields every one of them has."""
    return hasattr(err, "retryable") and hasattr(err, "provider")


# ------------------------------------------------------------------------------------------- the batch


@dataclass
class Summary:
    """What a request did, by event."""

    events: int = 0
    taken: int = 0  # handed to the intake for the first time
    runs_started: int = 0
    delivered_to_runs: int = 0
    duplicates: int = 0  # taken before (HubSpot redelivers): nothing changed
    skipped: int = 0  # a company the engine has no account id for
    ignored: int = 0  # a subscription type the engine does not take (contacts, deals, deletions, ...)

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


Take = Callable[[Event], Awaitable[EventAnswer]]


async def take_batch(events: list[HubSpotEvent], mapping: dict[str, str], take: Take) -> Summary:
    """Hands the events the engine takes to the intake (``take``, POST /events' take_event): one account's events one
    after another, in the order HubSpot sent them (a run waiting for one change sees them in order), different
    accounts at once. Every account's events are tried before an error is raised (the first one): what was taken is
    remembered by id, so HubSpot's retry of the request changes only what is left."""
    summary = Summary(events=len(events))
    by_account: dict[str, list[Event]] = {}
    for event in events:
        if engine_type(event) is None:
            summary.ignored += 1
            continue
        account_id = mapping.get(str(event.object_id))
        if not account_id:
            summary.skipped += 1
            continue
        by_account.setdefault(account_id, []).append(to_event(event, account_id))

    async def one_account(queue: list[Event]) -> None:
        for item in queue:
            answer = await take(item)
            if answer.duplicate:
                summary.duplicates += 1
                continue
            summary.taken += 1
            summary.runs_started += sum(1 for r in answer.runs if r.status == "started")
            summary.delivered_to_runs += len(answer.delivered_to)

    outcomes = await asyncio.gather(*(one_account(q) for q in by_account.values()), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return summary


def company_ids(events: list[HubSpotEvent]) -> list[str]:
    """The HubSpot ids of the companies the events the engine takes name."""
    return [str(e.object_id) for e in events if engine_type(e) is not None and e.object_id is not None]
