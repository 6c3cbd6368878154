"""POST /events: the product's backend reports what happened to an account."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ValidationError

from engine.interpreter.messages import Event
from engine.runtime.intake import CrmRefused, CrmUnavailable, UnknownOwner, take_event
from engine.runtime.settings import reveal

from ..deps import StateDep
from ..problems import RETRY_AFTER_SECONDS, UPSTREAM, Problem, documented
from ..schemas import EventIn, EventOut
from ..security import SIGNATURE_HEADER, bearer_token, caller_for, check_signature

router = APIRouter(tags=["events"])

# What POST /events may answer besides 2xx: the CRM of record (PLAYBOOK_CRM_PROVIDER) takes the event's account first.
EVENT_ERRORS = {
    401: "Unsigned, badly signed, or replayed",
    422: "Not a valid event, or the CRM of record refused the account it describes (the reason is in the detail)",
    **UPSTREAM,
    503: (
        "Temporal, the engine's database or the CRM of record (HubSpot) does not answer or failed: nothing was "
        "started and the event id is not remembered; send the same event again after Retry-After seconds"
    ),
}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place: a `#/$defs/...` reference in the
    OpenAPI document would point at the document's root, where there are no $defs."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


@router.post(
    "/events",
    response_model=EventOut,
    summary="Report an event for an account",
    description=(
        "Authenticated by an HMAC-SHA256 signature of the body (header X-Playbook-Signature: t=<unix>,v1=<hex>, "
        "signing '<t>.<body>' with the shared secret) or by a system or ops token. Starts every playbook whose "
        "trigger matches (once per event id and enrollment key) and delivers the event to the account's live runs. "
        "Posting the same event id again starts nothing and answers the same."
    ),
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": inline_schema(EventIn)}}, "required": True}
    },
    responses=documented(EVENT_ERRORS),
)
async def post_event(
    request: Request,
    state: StateDep,
    x_playbook_signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> EventOut:
    body = await request.body()
    if x_playbook_signature:
        secret = reveal(state.settings.event_signing_secret)
        if not secret:
            raise Problem(401, "Unauthorized", "signed events are not configured here (PLAYBOOK_EVENT_SIGNING_SECRET)")
        reason = check_signature(secret, x_playbook_signature, body)
        if reason:
            raise Problem(401, "Unauthorized", reason)
    else:
        token = bearer_token(authorization)
        caller = caller_for(state.settings.db_url, token) if token else None
        if caller is None or caller.role not in ("system", "ops"):
            raise Problem(401, "Unauthorized", f"sign the body ({SIGNATURE_HEADER}) or send a system token")
    try:
        payload = EventIn.model_validate_json(body)
    except ValidationError as err:
        errors = [{"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in err.errors()]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors) or "not a valid event"
        raise Problem(422, "Invalid event", detail, errors=errors) from None
    account = payload.account.model_dump(exclude_unset=True) if payload.account else None
    if account is not None and account.get("name") is None:
        account.pop("name", None)  # null: the name stays as it is
    contacts = [c.model_dump(exclude_unset=True) for c in payload.contacts] if payload.contacts is not None else None
    event = Event(
        type=payload.type,
        data=payload.data,
        id=payload.id,
        occurred_at=payload.occurred_at.isoformat() if payload.occurred_at else None,
        account_id=payload.account_id,
    )
    try:
        answer = await take_event(
            state.client, state.settings.task_queue, state.settings.db_url, state.library, event, account, contacts,
            crm=state.crm, scorecards=state.scorecards,
        )
    except UnknownOwner as err:
        errors = [{"location": "account.owner", "message": str(err)}]
        raise Problem(422, "Invalid event", f"account.owner: {err}", errors=errors) from None
    except CrmRefused as err:
        raise Problem(422, "Invalid event", str(err), errors=[{"location": "account", "message": str(err)}]) from None
    except CrmUnavailable as err:
        # HubSpot's rate-limit wait when it said one (a DAILY limit: until its midnight), else the usual few seconds
        wait = RETRY_AFTER_SECONDS if err.retry_after is None else max(1, math.ceil(err.retry_after))
        raise Problem(
            503, "Service Unavailable", f"{err}. Nothing was started: send the same event again in a moment.",
            headers={"Retry-After": str(wait)},
        ) from None
    return EventOut.model_validate(answer.as_json())
