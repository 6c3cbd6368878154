"""The nightly health recompute: pages through the CRM's accounts and recomputes their scores (docs/health.md).

Started by the Temporal Schedule ``playbook-health/nightly`` (engine/runtime/schedules.py, PLAYBOOK_HEALTH_NIGHTLY).
What time alone changes (event windows sliding, dates coming closer) is found here: each page is one activity that
reads the page from the CRM of record, recomputes its accounts at the night's time, writes what changed and takes
health.score_changed for the changes the scorecards' ``changes`` rules ask for (the built-in CRM's fields are written
in its transaction); with another CRM a second activity writes the page's new scores to it while the next page is
recomputed. The cursor lives in the workflow (continue-as-new every
few pages keeps the history small), so a worker lost midway resumes at its page; a page retried recomputes at the
same time and finds what its first attempt wrote (health_history rows by cause): nothing is counted, sent or written
twice.

Deterministic: no I/O, clock or randomness but workflow.now().
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.types import Done, HealthPageRequest, HealthPageResult, HealthWriteRequest
    from engine.interpreter.core import HEARTBEAT_TIMEOUT

HEALTH_NIGHTLY_WORKFLOW = "PlaybookHealthNightly"
# accounts per page (HubSpot's pages are 100 at most: the cursor, not the count, says what is left). 2,000 rather than
# 500: a page's fixed cost (two activities, their workflow tasks, a few transactions) was a quarter of a night.
PAGE_SIZE = 2000
PAGES_PER_RUN = 20


@dataclass
class NightlyInput:
    task_queue: str
    at: str = ""  # the night's time (ISO): set on the first run from the workflow's clock, kept through continue-as-new
    after: str | None = None  # the CRM's cursor: the next page starts after it
    page_size: int = PAGE_SIZE
    pages_per_run: int = PAGES_PER_RUN
    pages: int = 0
    accounts: int = 0
    changed: int = 0
    emitted: int = 0


@dataclass
class NightlyResult:
    pages: int
    accounts: int
    changed: int
    emitted: int


@workflow.defn(name=HEALTH_NIGHTLY_WORKFLOW)
class PlaybookHealthNightly:
    @workflow.run
    async def run(self, night: NightlyInput) -> NightlyResult:
        if not night.at:
            night.at = workflow.now().isoformat()
        retry = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5))
        # a page's CRM write runs while the next page is recomputed (other accounts: the order does not matter); it
        # is awaited before the night ends or continues as new, so a night never ends with a write in flight
        writing: workflow.ActivityHandle[Done] | None = None
        for _ in range(max(1, night.pages_per_run)):
            page: HealthPageResult = await workflow.execute_activity(
                "recompute_health_page",
                HealthPageRequest(night.at, night.after, night.page_size, night.task_queue),
                result_type=HealthPageResult,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,  # the worker beats it (engine.runtime.workers.KeepAlive)
                retry_policy=retry,
            )
            if writing is not None:
                await writing
                writing = None
            if page.writes:
                writing = workflow.start_activity(
                    "write_health_scores",
                    HealthWriteRequest(page.writes, night.at),
                    result_type=Done,
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=retry,
                )
            night.pages += 1
            night.accounts += page.accounts
            night.changed += page.changed
            night.emitted += page.emitted
            if page.after is None:
                if writing is not None:
                    await writing
                return NightlyResult(night.pages, night.accounts, night.changed, night.emitted)
            night.after = page.after
        if writing is not None:
            await writing
        workflow.continue_as_new(night)
