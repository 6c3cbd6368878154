"""Consent and the suppression list: see and change who may get which emails.

Addresses are normalised as the email activities normalise them ("Anna <ANNA@X.example>" is anna@x.example);
one that is not a valid address is a 422 saying so. Reading a contact's consent is for ops and CSMs, changing
anything for ops.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BeforeValidator

from engine.storage import governance as gov
from engine.storage.db import session

from ..deps import OpsDep, PeopleDep, StateDep, library_policy
from ..problems import Problem, documented
from ..schemas import (
    EMAIL,
    EMAIL_FORMAT,
    EMAIL_OR_NOTHING,
    ConsentIn,
    ConsentOut,
    ContactConsentOut,
    SuppressionIn,
    SuppressionOut,
    SuppressionsOut,
)

router = APIRouter(tags=["consent and suppressions"])

ERRORS = documented({
    401: "No or unknown token",
    403: "This needs an ops token",
    422: "Not a valid address, category or body",
    503: "The engine's database does not answer: send the request again after Retry-After seconds",
})
WITH_BODY = {**ERRORS, **documented({400: "The body is not JSON"})}
EmailPath = Annotated[
    str,
    Path(min_length=6, max_length=254, description="An email address", json_schema_extra=EMAIL_FORMAT),
]
CategoryPath = Annotated[str, Path(min_length=1, max_length=100, description="A category of the library's policy")]


def _address(text: str, location: str) -> str:
    address = gov.normalize_address(text) if EMAIL.fullmatch(text) else None
    if address is None:
        message = "not a valid email address"
        errors = [{"location": location, "message": message}]
        raise Problem(422, "Invalid request", f"{location}: {message}", errors=errors)
    return address


def _suppression_out(v: gov.SuppressionView) -> SuppressionOut:
    return SuppressionOut(email=v.email, reason=v.reason, source=v.source, detail=v.detail, created_at=v.created_at)


def _consent_of(db_url: str, address: str) -> ContactConsentOut:
    with session(db_url) as s:
        views = gov.consents(s, address)
    return ContactConsentOut(
        email=address,
        consents=[ConsentOut(category=v.category, status=v.status, source=v.source, at=v.at) for v in views],  # type: ignore[arg-type]
    )


@router.get(
    "/contacts/{email}/consent", response_model=ContactConsentOut, summary="A contact's consent by category",
    responses=ERRORS,
)
def get_consent(email: EmailPath, state: StateDep, _caller: PeopleDep) -> ContactConsentOut:
    return _consent_of(state.settings.db_url, _address(email, "path.email"))


@router.put(
    "/contacts/{email}/consent/{category}", response_model=ContactConsentOut,
    summary="Subscribe or unsubscribe a contact from a category",
    responses={**WITH_BODY, **documented({404: "No such category in the library's policy"})},
    description="Recorded with source `api` and the time; the same choice again changes nothing.",
)
def put_consent(
    email: EmailPath, category: CategoryPath, body: ConsentIn, state: StateDep, _caller: OpsDep
) -> ContactConsentOut:
    address = _address(email, "path.email")
    policy = library_policy(state)
    known = policy.category(category)
    if known is None:  # no such resource: the contact's consent exists per category of the policy
        names = ", ".join(c.name for c in policy.categories) or "none"
        raise Problem(404, "Not Found", f"no category {category!r} in the library's policy (it has {names})")
    if not known.unsubscribe and not body.subscribed:
        raise Problem(422, "Invalid request", f"path.category: {category} emails cannot be opted out of (the policy "
                      "says unsubscribe: false); suppress the address to stop every email")
    with session(state.settings.db_url) as s:
        gov.set_consent(s, address, category, body.subscribed, "api", datetime.now(UTC))
    return _consent_of(state.settings.db_url, address)


def _whole_number(value: object) -> object:
    """A query's number as written: digits only (pydantic would take " 1", "1\\f" or "1_0" for a number)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written with digits only")
    return value


Digits = BeforeValidator(_whole_number)


@router.get("/suppressions", response_model=SuppressionsOut, summary="The suppression list, a page at a time",
            responses=ERRORS)
def get_suppressions(
    state: StateDep,
    _caller: OpsDep,
    email: Annotated[
        str, Query(max_length=254, description="Only this address", json_schema_extra=EMAIL_OR_NOTHING)
    ] = "",
    limit: Annotated[int, Query(ge=1, le=1000), Digits] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000), Digits] = 0,
) -> SuppressionsOut:
    if email:
        _address(email, "query.email")
    with session(state.settings.db_url) as s:
        # one more than the page: whether there is a next one, without counting the whole list
        views = gov.list_suppressions(s, email=email or None, limit=limit + 1, offset=offset)
    return SuppressionsOut(
        items=[_suppression_out(v) for v in views[:limit]], limit=limit, offset=offset,
        next_offset=offset + limit if len(views) > limit else None,
    )


@router.post(
    "/suppressions", response_model=SuppressionOut, status_code=201, summary="Suppress an address",
    description="No email reaches it any more, in any category. An address already on the list keeps its "
    "first reason and time (200).",
    responses={200: {"description": "Already on the list", "model": SuppressionOut}, **WITH_BODY},
)
def post_suppression(body: SuppressionIn, response: Response, state: StateDep, _caller: OpsDep) -> SuppressionOut:
    address = _address(body.email, "body.email")
    with session(state.settings.db_url) as s:
        added = gov.suppress(s, address, body.reason, "api", datetime.now(UTC), body.detail)
    with session(state.settings.db_url) as s:
        [view] = gov.list_suppressions(s, email=address, limit=1)
    if not added:
        response.status_code = 200
    return _suppression_out(view)


@router.delete(
    "/suppressions/{email}", status_code=204, summary="Take an address off the suppression list",
    responses={**ERRORS, **documented({404: "The address is not on the list"})},
)
def delete_suppression(email: EmailPath, state: StateDep, _caller: OpsDep) -> Response:
    address = _address(email, "path.email")
    with session(state.settings.db_url) as s:
        removed = gov.unsuppress(s, address)
    if not removed:
        raise Problem(404, "Not Found", "this address is not on the suppression list")
    return Response(status_code=204)
