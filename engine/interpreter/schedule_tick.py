"""One tick of a scheduled playbook: pages through the segment and starts a run per account.

Started by a Temporal Schedule (one per scheduled playbook, see engine/runtime/schedules.py).
Continues as new every few pages, so a segment of any size keeps the history small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.types import SegmentPage, SegmentResult, StartRunsRequest, StartRunsResult
    from engine.interpreter.core import HEARTBEAT_TIMEOUT

TICK_WORKFLOW_NAME = "PlaybookScheduleTick"
PAGES_PER_RUN = 20


@dataclass
class TickInput:
    playbook_id: str
    accounts: str | bool | None  # the segment expression (a literal true/false too); None: every account
    task_queue: str
    tick: str = ""  # set on the first run from the schedule's time
    after: str = ""
    started: int = 0
    skipped: int = 0


@dataclass
class TickResult:
    started: int
    skipped: int


@workflow.defn(name=TICK_WORKFLOW_NAME)
class PlaybookScheduleTick:
    @workflow.run
    async def run(self, tick: TickInput) -> TickResult:
        if not tick.tick:
            tick.tick = workflow.now().isoformat()
        retry = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))
        for _ in range(PAGES_PER_RUN):
            page: SegmentResult = await workflow.execute_activity(
                "segment_page",
                SegmentPage(tick.accounts, tick.after),
                result_type=SegmentResult,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,  # the worker beats it while it reads (engine.runtime.workers)
                retry_policy=retry,
            )
            if page.account_ids:
                done: StartRunsResult = await workflow.execute_activity(
                    "start_scheduled_runs",
                    StartRunsRequest(tick.playbook_id, page.account_ids, tick.tick, tick.task_queue),
                    result_type=StartRunsResult,
                    start_to_close_timeout=timedelta(minutes=5),
                    # a page heartbeats its progress as its starts complete, and the worker beats it in between
                    # (engine.runtime.workers.KeepAlive): a worker lost midway is noticed within the heartbeat
                    # timeout, and the retry resumes after the last account done (timeouts are not compared on
                    # replay: tests/test_replay.py)
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=retry,
                )
                tick.started += done.started
                tick.skipped += done.skipped
            if page.next_after is None:
                return TickResult(tick.started, tick.skipped)
            tick.after = page.next_after
        workflow.continue_as_new(tick)
