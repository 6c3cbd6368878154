"""A scheduled playbook is a Temporal Schedule: created, updated or removed to match the library.

`playbook dev` syncs them when it starts; `playbook deploy` does it in production. Each tick pages through
the playbook's segment (activities/segments.py) and starts its runs here, with the enrollment rules of
events (engine/runtime/intake.py): starting runs is the runtime's job, so activities never import it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from engine.interpreter.messages import Event
from engine.interpreter.schedule_tick import TICK_WORKFLOW_NAME, TickInput
from engine.language import expressions as ex
from engine.language.library import Library
from engine.language.model import Playbook

from .intake import enrollment_key, start_enrolled

PREFIX = "playbook-schedule/"


@dataclass
class SyncReport:
    created: list[str]
    updated: list[str]
    removed: list[str]


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


async def sync_schedules(client: Client, library: dict[str, Playbook], task_queue: str) -> SyncReport:
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
    return report


class ScheduleActivities:
    """The activity a tick (engine/interpreter/schedule_tick.py) starts its runs with, a page of accounts at a time.

    Starting runs is an activity (it calls Temporal's client), so a tick of 10,000 accounts is a few dozen
    activities in the tick's history, not 10,000 child workflows. Starts are keyed by playbook and enrollment
    key, so a retried page starts nothing twice.
    """

    def __init__(self, crm: CrmProvider, client: Client | None, library_root: str) -> None:
        self.crm = crm
        self.client = client
        self.library_root = library_root

    @activity.defn(name="start_scheduled_runs")
    async def start_scheduled_runs(self, req: StartRunsRequest) -> StartRunsResult:
        if self.client is None:
            raise RuntimeError("start_scheduled_runs needs a Temporal client")
        playbook = Library.load(self.library_root).playbooks.get(req.playbook_id)
        if playbook is None:
            return StartRunsResult(0, len(req.account_ids))
        started = skipped = 0
        tick_id = f"tick:{req.playbook_id}:{req.tick}"
        for account_id in req.account_ids:
            snapshot = self.crm.get_account(account_id)
            event = Event("schedule.tick", {"scheduled_at": req.tick}, tick_id, req.tick, account_id)
            try:
                key = enrollment_key(playbook, event, snapshot.account, snapshot.contacts)
            except ex.ExpressionError:
                skipped += 1
                continue
            result = await start_enrolled(self.client, req.task_queue, playbook, account_id, key, event)
            started += result.status == "started"
            skipped += result.status != "started"
        return StartRunsResult(started, skipped)
