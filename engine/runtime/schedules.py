"""A scheduled playbook is a Temporal Schedule: created, updated or removed to match the library.

The nightly health recompute (docs/health.md) is one more: ``playbook-health/nightly``, on PLAYBOOK_HEALTH_NIGHTLY's
cron when there are scorecards, removed when the cron is "" or there are none.

`playbook dev` syncs them when it starts; `playbook deploy` does it in production. Each tick pages through
the playbook's segment (activities/segments.py) and starts its runs here, with the enrollment rules of
events (engine/runtime/intake.py): starting runs is the runtime's job, so activities never import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from activities.crm import CrmProvider
from activities.types import StartRunsRequest, StartRunsResult
from engine.interpreter.health_nightly import HEALTH_NIGHTLY_WORKFLOW, NightlyInput
from engine.interpreter.messages import Event
from engine.interpreter.schedule_tick import TICK_WORKFLOW_NAME, TickInput
from engine.language import expressions as ex
from engine.language.library import Library
from engine.language.model import Playbook

from .health import scorecards_in
from .intake import enrollment_key, start_enrolled
from .settings import Settings

PREFIX = "playbook-schedule/"
HEALTH_SCHEDULE_ID = "playbook-health/nightly"
HEALTH_WORKFLOW_ID = "health-nightly"


@dataclass
class SyncReport:
    created: list[str]
    updated: list[str]
    removed: list[str]
    health: str = "untouched"  # the nightly health recompute's schedule: created | updated | removed | off | untouched


def schedule_for(playbook: Playbook, task_queue: str) -> Schedule:
    trigger = playbook.trigger
    return Schedule(
        action=ScheduleActionStartWorkflow(
            TICK_WORKFLOW_NAME,
            TickInput(playbook_id=playbook.id, accounts=trigger.accounts,
                      task_queue=task_queue),
            id=f"tick/{playbook.id}",
            task_queue=task_queue,
            memo={"playbook_id": playbook.id, "version": playbook.version},
        ),
        spec=ScheduleSpec(cron_expressions=[trigger.cron or ""], time_zone_name=trigger.timezone or "UTC"),
        # a tick still paging through a huge segment when the next one is due: skip the next
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def health_cron(settings: Settings) -> str:
    """The nightly recompute's cron: PLAYBOOK_HEALTH_NIGHTLY when the scorecards folder holds scorecards, else ""."""
    if not settings.health_nightly or not scorecards_in(settings.scorecards_folder):
        return ""
    return settings.health_nightly


def health_schedule(cron: str, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            HEALTH_NIGHTLY_WORKFLOW, NightlyInput(task_queue=task_queue), id=HEALTH_WORKFLOW_ID, task_queue=task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[cron], time_zone_name="UTC"),
        # a night still paging when the next is due (a huge CRM, an outage): skip the next
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def sync_health_schedule(client: Client, cron: str, task_queue: str) -> str:
    """Creates or updates the nightly recompute's schedule on ``cron``, or removes it when ``cron`` is ""."""
    handle = client.get_schedule_handle(HEALTH_SCHEDULE_ID)
    exists = False
    async for entry in await client.list_schedules():
        if entry.id == HEALTH_SCHEDULE_ID:
            exists = True
    if not cron:
        if exists:
            await handle.delete()
            return "removed"
        return "off"
    schedule = health_schedule(cron, task_queue)
    if exists:
        async def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await handle.update(replace)
        return "updated"
    try:
        await client.create_schedule(HEALTH_SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:
        return "updated"
    return "created"


async def sync_schedules(
    client: Client, library: dict[str, Playbook], task_queue: str, *, health_nightly: str | None = None
) -> SyncReport:
    """The scheduled playbooks' schedules made to match the library; with ``health_nightly`` (health_cron(settings):
    "" removes it) the nightly health recompute's too."""
    wanted = {f"{PREFIX}{p.id}": p for p in library.values() if p.trigger.type == "schedule"}
    existing = set()
    async for entry in await client.list_schedules():
        if entry.id.startswith(PREFIX):
            existing.add(entry.id)
    report = SyncReport([], [], [])
    for schedule_id, playbook in wanted.items():
        schedule = schedule_for(playbook, task_queue)
        if schedule_id in existing:
            async def replace(_: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=new)

            await client.get_schedule_handle(schedule_id).update(replace)
            report.updated.append(playbook.id)
        else:
            try:
                await client.create_schedule(schedule_id, schedule)
                report.created.append(playbook.id)
            except ScheduleAlreadyRunningError:
                report.updated.append(playbook.id)
    for schedule_id in existing - set(wanted):
        await client.get_schedule_handle(schedule_id).delete()
        report.removed.append(schedule_id[len(PREFIX):])
    if health_nightly is not None:
        report.health = await sync_health_schedule(client, health_nightly, task_queue)
    return report


# Starts in flight at once per page. A start is one RPC that waits on the server's write of the new workflow; one
# at a time, a page waits on each in turn (~100 starts/s on the dev server). A few dozen keep the frontend and the
# history shards busy without queueing at them: more adds latency, not throughput, and takes connections and
# persistence capacity from the workers' own polls and the runs just started (see the bench in the commit message).
START_CONCURRENCY = 32
LIBRARY_CACHE = 8  # ticks whose library is kept: a few playbooks' ticks may run at once


class ScheduleActivities:
    """The activity a tick (engine/interpreter/schedule_tick.py) starts its runs with, a page of accounts at a time.

    Starting runs is an activity (it calls Temporal's client), so a tick of 10,000 accounts is a few dozen
    activities in the tick's history, not 10,000 child workflows. Starts are keyed by playbook and enrollment
    key (a run's workflow id), so a retried page starts nothing twice; it also resumes after the last account
    its heartbeats say was done. The library is read once per tick (per worker), not once per page: every
    page of a tick starts runs of the same playbook version.
    """

    def __init__(
        self, crm: CrmProvider, client: Client | None, library_root: str, concurrency: int = START_CONCURRENCY
    ) -> None:
        self.crm = crm
        self.client = client
        self.library_root = library_root
        self.concurrency = max(1, concurrency)
        self._libraries: dict[str, asyncio.Future[dict[str, Playbook]]] = {}

    async def _playbooks(self, tick: str) -> dict[str, Playbook]:
        """The library as the tick's first page on this worker read it."""
        future = self._libraries.get(tick)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            future = asyncio.ensure_future(asyncio.to_thread(lambda: Library.load(self.library_root).playbooks))
            self._libraries[tick] = future
            while len(self._libraries) > LIBRARY_CACHE:
                del self._libraries[next(iter(self._libraries))]
        return await asyncio.shield(future)

    @activity.defn(name="start_scheduled_runs")
    async def start_scheduled_runs(self, req: StartRunsRequest) -> StartRunsResult:
        client = self.client
        if client is None:
            raise RuntimeError("start_scheduled_runs needs a Temporal client")
        playbook = (await self._playbooks(req.tick)).get(req.playbook_id)
        if playbook is None:
            return StartRunsResult(0, len(req.account_ids))
        progress = PageProgress.resume(activity.info().heartbeat_details, len(req.account_ids))
        todo = progress.todo()
        if not todo:
            return progress.result()
        activity.heartbeat(progress.details())  # alive while the accounts are read
        snapshots = await asyncio.to_thread(self.crm.get_accounts, [req.account_ids[i] for i in todo])
        tick_id = f"tick:{req.playbook_id}:{req.tick}"

        async def start(account_id: str) -> bool:
            snapshot = snapshots.get(account_id)
            if snapshot is None:  # gone from the CRM since the segment was read
                return False
            event = Event("schedule.tick", {"scheduled_at": req.tick}, tick_id, req.tick, account_id)
            try:
                key = enrollment_key(playbook, event, snapshot.account, snapshot.contacts)
            except ex.ExpressionError:
                return False
            result = await start_enrolled(client, req.task_queue, playbook, account_id, key, event)
            return result.status == "started"

        queue = iter(todo)  # taken in order by every starter: the done ones form a prefix but for those in flight

        async def starter() -> None:
            for i in queue:
                progress.done(i, await start(req.account_ids[i]))
                activity.heartbeat(progress.details())

        try:
            async with asyncio.TaskGroup() as group:  # a start that fails cancels the others: the page is retried
                for _ in range(min(self.concurrency, len(todo))):
                    group.create_task(starter())
        except ExceptionGroup as failed:  # the first error as it is: Temporal retries it (or not) by its type
            raise failed.exceptions[0] from None
        return progress.result()


@dataclass
class PageProgress:
    """How far a page's starts are, as heartbeats carry it: every account before ``next`` is done (in the order of the
    page), and of those after it the ones in ``beyond`` (at most the starts that were in flight); with the counts of
    what is done. A retried attempt starts with the last heartbeat's progress and leaves the done accounts alone."""

    size: int
    next: int = 0
    started: int = 0
    skipped: int = 0
    beyond: dict[int, bool] = field(default_factory=dict)  # index -> started

    @classmethod
    def resume(cls, details: Sequence[Any], size: int) -> PageProgress:
        progress = cls(size)
        try:
            last = details[-1] if details else None
            if isinstance(last, dict) and last.get("size") == size:
                progress.next = int(last["next"])
                progress.started, progress.skipped = int(last["started"]), int(last["skipped"])
                progress.beyond = {int(i): bool(s) for i, s in (last.get("beyond") or {}).items()}
        except (KeyError, TypeError, ValueError):  # not this activity's details: start the page over
            progress = cls(size)
        return progress

    def todo(self) -> list[int]:
        return [i for i in range(self.next, self.size) if i not in self.beyond]

    def done(self, index: int, started: bool) -> None:
        self.beyond[index] = started
        while self.next in self.beyond:
            ok = self.beyond.pop(self.next)
            self.started += ok
            self.skipped += not ok
            self.next += 1

    def details(self) -> dict[str, Any]:
        return {"size": self.size, "next": self.next, "started": self.started, "skipped": self.skipped,
                "beyond": {str(i): s for i, s in self.beyond.items()}}

    def result(self) -> StartRunsResult:
        started = self.started + sum(self.beyond.values())
        return StartRunsResult(started, self.size - started)
