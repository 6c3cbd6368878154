"""POST /webhooks/sendgrid: SendGrid's Event Webhook (bounces, spam reports, unsubscribes, opens, clicks).

What each event does is in api/sendgrid_events.py; here: the signature, the body, and the answer.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Request

from engine.runtime.intake import listeners, signal_runs

from .. import sendgrid_events as sg
from ..deps import StateDep, library_policy
from ..problems import UPSTREAM, Problem, documented
from ..schemas import WebhookOut

router = APIRouter(tags=["webhooks"])
log = structlog.get_logger("api.webhooks")

BATCH_SCHEMA = {
    "type": "array",
    "description": "SendGrid events, as SendGrid posts them (custom_args as the engine set them on the email).",
    "items": {
        "type": "object",
        "required": ["event"],
        "properties": {
            "event": {"type": "string", "examples": ["bounce", "open", "click", "unsubscribe"]},
            "email": {"type": "string"},
            "timestamp": {"type": "integer"},
            "sg_event_id": {"type": "string"},
            "sg_message_id": {"type": "string"},
            "asm_group_id": {"type": "integer"},
            "url": {"type": "string"},
            "custom_args": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}


@router.post(
    "/webhooks/sendgrid",
    response_model=WebhookOut,
    summary="SendGrid Event Webhook",
    description=(
        "Signed by SendGrid (ECDSA; headers X-Twilio-Email-Event-Webhook-Signature and -Timestamp, verified with "
        "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY). bounce, dropped and spamreport suppress the address; unsubscribe "
        "and group_unsubscribe unsubscribe it from the email's category; delivered, open and click are delivered "
        "to the run that sent the email as email.delivered, email.opened and email.clicked, when its playbook waits "
        "for or exits on that type. A redelivered event changes nothing."
    ),
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": BATCH_SCHEMA}}, "required": True}},
    responses=documented({
        400: "Not a batch of SendGrid events",
        401: "Not signed by SendGrid, or signed too long ago",
        404: "The webhook is not configured here (no public key)",
        **UPSTREAM,
    }),
)
async def sendgrid_webhook(
    request: Request,
    state: StateDep,
    signature: Annotated[str | None, Header(alias=sg.SIGNATURE_HEADER)] = None,
    timestamp: Annotated[str | None, Header(alias=sg.TIMESTAMP_HEADER)] = None,
) -> WebhookOut:
    public_key = state.settings.sendgrid_webhook_public_key
    if not public_key:
        raise Problem(404, "Not Found", "the SendGrid Event Webhook is not configured here: set "
                      "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY to the webhook's verification key")
    body = await request.body()
    reason = sg.check_signature(public_key, signature, timestamp, body)
    if reason:
        raise Problem(401, "Unauthorized", reason)
    try:
        events = sg.parse_batch(body)
    except sg.BadBatch as err:
        raise Problem(400, "Bad Request", str(err)) from None
    db_url = state.settings.db_url
    taken = await asyncio.to_thread(sg.take_batch, db_url, events, library_policy(state))
    delivered: list[str] = []
    by_type = listeners(state.library)
    for delivery in taken.deliveries:
        # As POST /events: only runs whose playbook waits for (wait_for) or exits on (exit_when) the type get it;
        # every open of every email would otherwise grow the history of runs that never look at it. A run's
        # id (and its for_each slices') starts with its playbook's id.
        if delivery.workflow_id.split("/", 1)[0] not in by_type.get(delivery.event.type, frozenset()):
            taken.ignored += 1
            continue
        # one at a time: a batch's open and click of one email reach the run in the order SendGrid sent them
        reached, _ended = await signal_runs(state.client, [delivery.workflow_id], delivery.event)
        delivered += reached
    await asyncio.to_thread(sg.remember, db_url, taken.deliveries)
    counts = taken.counts(len(delivered))
    log.info("sendgrid events", events=len(events), **counts)
    return WebhookOut(events=len(events), **counts)
