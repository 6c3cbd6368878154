"""POST /webhooks/hubspot: HubSpot's webhooks (v3 signatures) as engine events (docs/hubspot-webhooks.md).

What each event becomes is in api/hubspot_events.py; here: the signature, the body, the CRM, and the answer.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from engine.interpreter.messages import Event
from engine.runtime.intake import CrmUnavailable, EventAnswer, take_event
from engine.runtime.settings import reveal

from .. import hubspot_events as hs
from ..deps import StateDep
from ..problems import RETRY_AFTER_SECONDS, UPSTREAM, Problem, documented

router = APIRouter(tags=["webhooks"])
log = structlog.get_logger("api.hubspot")


class HubSpotWebhookOut(BaseModel):
    """What a request of HubSpot events did."""

    events: int = Field(description="Events in the request")
    taken: int = Field(description="Events that became engine events for the first time")
    runs_started: int = Field(description="Runs the taken events started (their trigger)")
    delivered_to_runs: int = Field(description="Live runs the taken events reached (wait_for, exit_when)")
    duplicates: int = Field(description="Events taken before (HubSpot redelivers): nothing changed")
    skipped: int = Field(description="Company events whose company has no account id in the engine's CRM")
    ignored: int = Field(description="Events of subscription types the engine does not take (contacts, deals, ...)")


BATCH_SCHEMA = {
    "type": "array",
    "description": "HubSpot webhook events, as HubSpot posts them (up to 100 per request).",
    "items": {
        "type": "object",
        "required": ["eventId", "subscriptionType"],
        "properties": {
            "eventId": {"type": "integer"},
            "subscriptionId": {"type": "integer"},
            "portalId": {"type": "integer"},
            "appId": {"type": "integer"},
            "occurredAt": {"type": "integer", "description": "milliseconds since 1970"},
            "subscriptionType": {"type": "string",
                                 "examples": ["company.creation", "company.propertyChange", "object.propertyChange"]},
            "objectTypeId": {"type": "string", "examples": ["0-2"]},
            "attemptNumber": {"type": "integer"},
            "objectId": {"type": "integer", "description": "required for the company events the engine takes"},
            "propertyName": {"type": "string"},
            "propertyValue": {"type": "string"},
            "changeSource": {"type": "string"},
        },
    },
}


@router.post(
    "/webhooks/hubspot",
    response_model=HubSpotWebhookOut,
    summary="HubSpot webhooks",
    description=(
        "Signed by HubSpot (v3: X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp, HMAC-SHA256 with the app's "
        "client secret PLAYBOOK_HUBSPOT_WEBHOOK_SECRET over method, URI, body and timestamp; behind a proxy the URI "
        "is PLAYBOOK_PUBLIC_URL + path). company.creation becomes the event crm.company_created, "
        "company.propertyChange crm.company_changed (data: hubspot_id, property, value, source, occurred_at), for "
        "the company's account; they start playbooks and reach runs as POST /events does. A redelivered event "
        "changes nothing."
    ),
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": BATCH_SCHEMA}}, "required": True}},
    responses=documented({
        400: "Not a JSON array of HubSpot events",
        401: "Not signed by HubSpot, or signed more than five minutes ago",
        404: "The webhook is not configured here (no client secret)",
        **UPSTREAM,
        503: "Temporal, the engine's database or the CRM does not answer: HubSpot sends the request again",
    }),
)
async def hubspot_webhook(
    request: Request,
    state: StateDep,
    signature: Annotated[str | None, Header(alias=hs.SIGNATURE_HEADER)] = None,
    timestamp: Annotated[str | None, Header(alias=hs.TIMESTAMP_HEADER)] = None,
) -> HubSpotWebhookOut:
    secret = reveal(state.settings.hubspot_webhook_secret)
    if not secret:
        raise Problem(404, "Not Found", "HubSpot webhooks are not configured here: set "
                      "PLAYBOOK_HUBSPOT_WEBHOOK_SECRET to the HubSpot app's client secret")
    body = await request.body()
    uri = hs.signed_uri(state.settings.public_url, request.url.path, request.url.query, str(request.url))
    reason = hs.check_signature(secret, request.method, uri, body, signature, timestamp)
    if reason:
        raise Problem(401, "Unauthorized", reason)
    try:
        events = hs.parse_batch(body)
    except hs.BadBatch as err:
        raise Problem(400, "Bad Request", str(err), errors=err.errors) from None

    async def take(event: Event) -> EventAnswer:
        return await take_event(
            state.client, state.settings.task_queue, state.settings.db_url, state.library, event, crm=state.crm
        )

    try:
        mapping = await asyncio.to_thread(hs.account_ids, state.crm, hs.company_ids(events))
        summary = await hs.take_batch(events, mapping, take)
    except CrmUnavailable as err:  # reading the account ids, or the intake reading an account
        # HubSpot's rate-limit wait when it said one, else the usual few seconds
        wait = RETRY_AFTER_SECONDS if err.retry_after is None else max(1, math.ceil(err.retry_after))
        raise Problem(503, "Service Unavailable", f"{err}. HubSpot sends the request again.",
                      headers={"Retry-After": str(wait)}) from None
    log.info("hubspot events", **summary.as_json())  # counts only: property values may be personal data
    return HubSpotWebhookOut(**summary.as_json())
