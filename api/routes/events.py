"""POST /events: the product's backend reports what happened to an account."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ValidationError

from engine.interpreter.messages import Event
from engine.runtime.intake import UnknownOwner, take_event
from engine.runtime.settings import reveal

from ..deps import StateDep
from ..problems import UPSTREAM, Problem, documented
from ..schemas import EventIn, EventOut
from ..security import SIGNATURE_HEADER, bearer_token, caller_for, check_signature

router = APIRouter(tags=["events"])


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
    responses=documented({401: "Unsigned, badly signed, or replayed", 422: "Not a valid event", **UPSTREAM}),
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
            state.client, state.settings.task_queue, state.settings.db_url, state.library, event, account, contacts
        )
    except UnknownOwner as err:
        errors = [{"location": "account.owner", "message": str(err)}]
        raise Problem(422, "Invalid event", f"account.owner: {err}", errors=errors) from None
    return EventOut.model_validate(answer.as_json())
