"""Schedule ticks: which accounts a segment selects.

A tick pages through the segment here; it starts the runs of each page with
engine.runtime.schedules.ScheduleActivities (starting runs is the runtime's job: activities never import it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
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
        """The ids of a page's accounts in the segment, in id order. Ids only: the start activity reads the chosen
        accounts again in one go (a page of snapshots with their contacts would grow the tick's history by hundreds
        of kilobytes, and the runs should start from the accounts as they are then)."""
        # The accounts are paged by the built-in CRM's account ids; read, as templates see them, through the CRM
        # provider in one go (a few queries, or a few HubSpot batch reads, per page).
        with session(self.db_url) as s:
            ids = list(s.scalars(_PAGE, {"after": req.after, "limit": req.limit}))
        if req.accounts is None:
            chosen = ids
        else:
            snapshots = self.crm.get_accounts(ids)  # an account the CRM does not have is in no segment
            chosen = [i for i in ids if i in snapshots and segment_refusal(req.accounts, snapshots[i].account) is None]
        return SegmentResult(chosen, ids[-1] if len(ids) == req.limit else None, len(ids))


_PAGE = (
    select(t.Account.id).where(t.Account.id > bindparam("after")).order_by(t.Account.id).limit(bindparam("limit"))
)


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
