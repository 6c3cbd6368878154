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

from .crm import BuiltinCrm, CrmProvider
from .types import SegmentPage, SegmentResult


class SegmentActivities:
    def __init__(self, db_url: str, crm: CrmProvider) -> None:
        self.db_url = db_url
        self.crm = crm

    @activity.defn(name="segment_page")
    def segment_page(self, req: SegmentPage) -> SegmentResult:
        """The ids of a page's accounts in the segment, in the CRM's page order. Ids only: the start activity reads
        the chosen accounts again in one go (a page of snapshots with their contacts would grow the tick's history by
        hundreds of kilobytes, and the runs should start from the accounts as they are then).

        The page comes from the CRM of record (``account_page``: the built-in tables keyset by id, HubSpot's search
        API), and the segment is judged on the accounts as it returns them, so a tick selects what runs will read.
        The cursor is the CRM's own (an account id, or HubSpot's ``after``): a short string in the tick's history.
        """
        if req.accounts is None and isinstance(self.crm, BuiltinCrm):
            # every account of the built-in CRM: its ids only, one query (the accounts are read when runs start)
            with session(self.db_url) as s:
                ids = list(s.scalars(_IDS, {"after": req.after, "limit": req.limit}))
            return SegmentResult(ids, ids[-1] if ids and len(ids) == req.limit else None, len(ids))
        page = self.crm.account_page(req.after or None, req.limit)
        if req.accounts is None:
            chosen = [str(a["id"]) for a in page.accounts]
        else:
            chosen = [str(a["id"]) for a in page.accounts if segment_refusal(req.accounts, a) is None]
        # a provider's cursor that does not move would page forever: a page without accounts ends the tick
        next_after = page.after if page.accounts and page.after not in (None, "", req.after) else None
        return SegmentResult(chosen, next_after, len(page.accounts))


_IDS = select(t.Account.id).where(t.Account.id > bindparam("after")).order_by(t.Account.id).limit(bindparam("limit"))


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
