"""GET /accounts/{id}/health: an account's health scores (docs/health.md, docs/api.md).

An ops token reads any account's, a CSM token only the accounts the CRM says they own; the account must be one the
CRM of record knows (404 otherwise). The scores come from the engine's tables through engine.runtime.health.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

from fastapi import APIRouter, Path

from engine.language import health as hl
from engine.runtime.health import AccountHealth, health_of
from engine.storage.db import session, utc

from .. import actions
from ..deps import PeopleDep, StateDep
from ..problems import RETRY_AFTER_SECONDS, UPSTREAM, Problem, documented
from ..schemas import HealthMeasureOut, HealthOut, HealthPointOut, HealthReasonOut, HealthTrendOut

router = APIRouter(tags=["health"])
ERRORS = documented({
    401: "No or unknown token",
    403: "Not an ops token, nor the token of the CSM who owns the account",
    404: "The CRM has no such account",
    422: "Not an account id",
    **UPSTREAM,
})
AccountPath = Annotated[
    str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$", description="The account's id")
]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def health_out(h: AccountHealth) -> HealthOut:
    return HealthOut(
        scorecard=h.scorecard_id, score=h.score, band=h.band, computed_at=utc(h.computed_at),
        scorecard_version=h.scorecard_version,
        trend=HealthTrendOut(
            previous=h.previous, previous_band=h.previous_band, change=_minus(h.score, h.previous),
            thirty_days=h.thirty_days, thirty_days_band=h.thirty_days_band,
            change_thirty_days=_minus(h.score, h.thirty_days),
        ),
        reasons=[HealthReasonOut(**r) for r in hl.holding_down(h.scorecard_id, h.components)],
        last_change=[HealthReasonOut(**r) for r in h.reasons],
        measures=[
            HealthMeasureOut(
                measure=c["measure_id"], title=c.get("title") or c["measure_id"], value=c.get("value"),
                score=c.get("score"), weight=c["weight"], effective_weight=c["effective_weight"],
                contribution=c["contribution"], skipped=bool(c.get("skipped")), missing=bool(c.get("missing")),
            )
            for c in h.components
        ],
        history=[HealthPointOut(**x) for x in h.history],
    )


def scores(db_url: str, account_id: str) -> list[AccountHealth]:
    """The account's scores, in scorecard id order."""
    with session(db_url) as s:
        return sorted(health_of(s, account_id), key=lambda h: h.scorecard_id)


def _provider_failure(err: Exception) -> bool:
    """Whether err is one of the CRM's ProviderErrors (activities/errors.py, which the api does not import), known by
    the fields every one of them has; NotFoundError by its class."""
    return hasattr(err, "retryable") and hasattr(err, "provider")


def _not_found(err: Exception) -> bool:
    return _provider_failure(err) and any(k.__name__ == "NotFoundError" for k in type(err).__mro__)


@router.get(
    "/accounts/{account_id}/health", response_model=list[HealthOut], responses=ERRORS,
    summary="An account's health scores: score, band, trend and each measure's part, per scorecard",
)
async def account_health(account_id: AccountPath, state: StateDep, caller: PeopleDep) -> list[HealthOut]:
    try:
        snapshot = await asyncio.to_thread(state.crm.get_account, account_id)
    except Exception as err:
        if _not_found(err):
            raise Problem(404, "Not Found", f"the CRM ({state.crm.name}) has no account {account_id}") from None
        if not _provider_failure(err):
            raise
        retry_after = getattr(err, "retry_after", None)
        wait = RETRY_AFTER_SECONDS if retry_after is None else max(1, math.ceil(retry_after))
        raise Problem(
            503, "Service Unavailable", f"the CRM ({state.crm.name}) failed reading the account: "
            f"{getattr(err, 'message', err)}. Send the request again in a moment.", headers={"Retry-After": str(wait)},
        ) from None
    if not caller.is_ops:
        owner = snapshot.account.get("owner") or {}
        owner_id = owner.get("id") if isinstance(owner, dict) else owner
        # a CSM reads what their inbox cards show: their accounts, and those of the approvals and tasks given them
        if owner_id != caller.csm_id and not await asyncio.to_thread(
            actions.works_on, state.settings.db_url, caller, account_id
        ):
            raise Problem(403, "Forbidden", f"account {account_id} is not one you own or have an open call task or "
                                            "approval on (a CSM token reads the health of those; an ops token reads "
                                            "every account's)")
    found = await asyncio.to_thread(scores, state.settings.db_url, account_id)
    return [health_out(h) for h in found]
