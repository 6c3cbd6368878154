"""Schedule ticks: which accounts a segment selects, and starting their runs.

Starting runs is an activity (it calls Temporal's client), so a tick of 10,000 accounts is a few
dozen activities in the tick's history, not 10,000 child workflows. Starts are keyed by playbook and
enrollment key, so a retried page starts nothing twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client

from engine.interpreter.messages import Event
from engine.language import expressions as ex
from engine.language.library import Library
from engine.storage import models as t
from engine.storage.db import session

from .crm import CrmProvider
from .types import SegmentPage, SegmentResult, StartRunsRequest, StartRunsResult


class SegmentActivities:
    def __init__(self, db_url: str, crm: CrmProvider, client: Client | None, library_root: str) -> None:
        self.db_url = db_url
        self.crm = crm
        self.client = client
        self.library_root = library_root

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

    @activity.defn(name="start_scheduled_runs")
    async def start_scheduled_runs(self, req: StartRunsRequest) -> StartRunsResult:
        from engine.runtime.intake import enrollment_key, start_enrolled

        if self.client is None:
            raise RuntimeError("start_scheduled_runs needs a Temporal client")
        playbook = Library.load(self.library_root).playbooks.get(req.playbook_id)
        if playbook is None:
            return StartRunsResult(0, len(req.account_ids))
        started = skipped = 0
        tick = Event(type="schedule.tick", data={"scheduled_at": req.tick}, id=f"tick:{req.playbook_id}:{req.tick}")
        for account_id in req.account_ids:
            snapshot = self.crm.get_account(account_id)
            event = Event(tick.type, tick.data, tick.id, req.tick, account_id)
            try:
                key = enrollment_key(playbook, event, snapshot.account, snapshot.contacts)
            except ex.ExpressionError:
                skipped += 1
                continue
            result = await start_enrolled(self.client, req.task_queue, playbook, account_id, key, event)
            started += result.status == "started"
            skipped += result.status != "started"
        return StartRunsResult(started, skipped)


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
