"""Schedule ticks: which accounts a segment selects.

A tick pages through the segment here; it starts the runs of each page with
engine.runtime.schedules.ScheduleActivities (starting runs is the runtime's job: activities never import it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from temporalio import activity

from engine.language import expressions as ex
from engine.storage import models as t
from engine.storage.db import session

from .crm import CrmProvider
from .types import SegmentPage, SegmentResult


class SegmentActivities:
    def __init__(self, db_url: str, crm: CrmProvider) -> None:
        self.db_url = db_url
        self.crm = crm

    @activity.defn(name="segment_page")
    def segment_page(self, req: SegmentPage) -> SegmentResult:
        # The segment is read from the built-in CRM's account ids; each account as templates see it.
        with session(self.db_url) as s:
            ids = list(
                s.scalars(select(t.Account.id).where(t.Account.id > req.after).order_by(t.Account.id).limit(req.limit))
            )
        chosen = []
        for account_id in ids:
            account = self.crm.get_account(account_id).account
            if req.accounts is None or segment_refusal(req.accounts, account) is None:
                chosen.append(account_id)
        return SegmentResult(chosen, ids[-1] if len(ids) == req.limit else None, len(ids))


def segment_refusal(expression: str | bool, account: dict[str, Any]) -> str | None:
    """Why the account is not in the segment; None when it is.

    An account the expression cannot judge (a missing field) is not in the segment.
    """
    try:
        if not ex.evaluate(expression, {"account": account}):
            return f"the account is not in the segment: {expression}"
    except ex.ExpressionError as err:
        return f"segment expression failed: {err}"
    return None
